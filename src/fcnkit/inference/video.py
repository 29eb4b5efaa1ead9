"""Segmenting videos: ``clip.mp4`` in, ``clip_overlay.mp4`` out (same frame count, size and rate), with PyAV.

PyAV (``pip install 'fcnkit[video]'``) carries FFmpeg in its wheels, so any container and codec FFmpeg reads
works: files, and where FFmpeg has the device, a webcam (``/dev/video0`` through ``v4l2``) or a network stream
(``rtsp://``, ``http://``). Frames are decoded in FFmpeg's threads, batched ``predictor.batch_size`` at a time
through the predictor's fast path, blended with the class colours and encoded as H.264 (``libx264``, yuv420p,
or MPEG-4 part 2 where FFmpeg has no x264) at the input's frame rate. ``labels=True`` also writes each frame's
label map as ``clip_labels/NNNNNN.png`` (palette PNGs, values = class indices), which a lossy codec could not
keep exact.
"""

from __future__ import annotations

import os
import queue
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import voc_palette
from ..errors import DataError, MissingFileError, OutputError
from ..progress import Progress, ensure_handler, get_logger
from ..utils import require
from ..visualize import LABEL_PNG_COMPRESSION, Blender, YuvBlender, label_to_palette_png
from .files import MARK, output_names, png_mark, written_by_fcnkit
from .predictor import InOrder, Predictor

__all__ = [
    "VIDEO_SUFFIXES",
    "FrameReader",
    "FrameWriter",
    "VideoReport",
    "frame_arrays",
    "is_live",
    "is_video",
    "open_encoder",
    "overlay_blender",
    "overlay_picture",
    "predict_video",
    "video_name",
    "video_names",
]

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".gif")
STREAM_PREFIXES = ("rtsp://", "rtmp://", "http://", "https://", "/dev/video")


def is_video(path: str | os.PathLike[str]) -> bool:
    """A video file by its suffix, a capture device or a stream URL."""
    text = os.fspath(path)
    return text.startswith(STREAM_PREFIXES) or Path(text).suffix.lower() in VIDEO_SUFFIXES


@dataclass
class VideoReport:
    source: str
    overlay: Path
    frames: int
    size: tuple[int, int]
    rate: Fraction
    seconds: float
    labels: Path | None = None
    #: frames of a live source dropped because the model could not keep up (0 for files)
    dropped: int = 0
    #: for a live source whose connection ended in an error after its first frame (a camera or stream that
    #: stopped): FFmpeg's message; the frames up to there are segmented and written as usual
    ended: str | None = None

    @property
    def frames_per_second(self) -> float:
        return self.frames / max(self.seconds, 1e-9)


def video_name(source: str) -> str:
    """The output name of a video source: a file's stem; for a device or stream the address itself in safe
    characters (``rtsp://cam1:554/live`` -> ``rtsp_cam1_554_live``, ``/dev/video0`` -> ``video0``), so that two
    cameras never write the same file."""
    if source.startswith("/dev/"):
        return Path(source).name
    if source.startswith(STREAM_PREFIXES):
        address = re.sub(r"[^A-Za-z0-9.-]+", "_", source.replace("://", "_")).strip("_.")
        return address[:120] or "stream"
    return Path(source).stem


def video_names(sources: list[str]) -> list[str]:
    """The output name of each source, never two alike: :func:`video_name`, and for files whose stems collide
    their paths relative to their common folder (as :func:`~fcnkit.inference.files.output_names` does)."""
    files = [s for s in sources if not s.startswith(STREAM_PREFIXES)]
    relative = dict(zip(files, (os.fspath(n) for n in output_names([Path(f) for f in files])), strict=True))
    return [relative.get(s) or video_name(s) for s in sources]


def _check_output(av: Any, source: str, overlay_path: Path, label_dir: Path | None) -> None:
    """Refuse to replace the source, or a file no earlier ``fcnkit predict`` wrote."""
    if not source.startswith(STREAM_PREFIXES) and Path(os.path.realpath(source)) == Path(
        os.path.realpath(overlay_path)
    ):
        raise OutputError(f"the output {overlay_path} would replace the input video: choose another --out folder")
    if label_dir is not None and label_dir.is_dir():
        foreign = [f for f in sorted(label_dir.iterdir()) if not (f.is_file() and written_by_fcnkit(f))]
        if foreign:
            raise OutputError(
                f"{label_dir} holds {len(foreign)} file(s) fcnkit predict did not write (first: {foreign[0].name}): "
                "choose another --out folder, or move them"
            )
    if not overlay_path.exists():
        return
    try:
        with av.open(os.fspath(overlay_path)) as old:
            ours = old.metadata.get("comment") == MARK
    except (av.FFmpegError, OSError):
        ours = False
    if not ours:
        raise OutputError(
            f"{overlay_path} exists and fcnkit predict did not write it: choose another --out folder, or move it"
        )


def _open(av: Any, source: str) -> Any:
    options: dict[str, Any] = {}
    if source.startswith("/dev/video"):
        options["format"] = "v4l2"
    elif not source.startswith(STREAM_PREFIXES) and not Path(source).is_file():
        raise MissingFileError(f"{source}: no such video file")
    try:
        container = av.open(source, **options)
    except av.FFmpegError as e:
        raise DataError(f"{source}: not a video FFmpeg can read ({e})") from e
    if not container.streams.video:
        container.close()
        raise DataError(f"{source}: has no video stream")
    return container


#: frames a pipeline keeps in each of its two queues (decoded frames waiting for the model, segmented frames
#: waiting for the encoder), per frame of a batch: a slow disk or encoder stalls the model, it never grows memory
QUEUE_BATCHES = 2


def is_live(source: str) -> bool:
    """A capture device or a network stream: frames arrive in real time whether or not they are taken."""
    return source.startswith(STREAM_PREFIXES)


def frame_arrays(frame: Any, yuv: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """A decoded frame as ``uint8`` ``(H, W, 3)`` RGB for the model and, with ``yuv``, in ``yuv420p`` as the codec
    has it, for the overlay (else ``None``)."""
    return frame.to_ndarray(format="rgb24"), frame.to_ndarray(format="yuv420p") if yuv else None


def overlay_blender(encoder: Any, palette: list, alpha: float) -> Blender | YuvBlender:
    """The overlay's blender: in the encoder's yuv420p planes (no RGB -> YUV conversion per frame) when the frame
    size allows it, else in RGB."""
    if encoder.pix_fmt == "yuv420p" and YuvBlender.fits(encoder.height, encoder.width):
        return YuvBlender(palette, alpha)
    return Blender(palette, alpha)


def overlay_picture(av: Any, blender: Blender | YuvBlender, frame: tuple[np.ndarray, np.ndarray | None], label: Any):
    """The blended ``av.VideoFrame`` of a ``(rgb, yuv)`` frame (:func:`frame_arrays`) and its labels."""
    rgb, yuv = frame
    if isinstance(blender, YuvBlender):
        return av.VideoFrame.from_ndarray(blender(yuv, label), format="yuv420p")
    return av.VideoFrame.from_ndarray(blender(rgb, label), format="rgb24")


class _Done:
    """Ends a queue: the reader is finished (``error`` set when it failed)."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class FrameReader:
    """Decodes a video in a thread of its own into a bounded queue of ``(rgb, yuv)`` frames: ``uint8``
    ``(H, W, 3)`` RGB for the model, and with ``yuv`` the frame in ``yuv420p`` for the overlay (else ``None``).

    FFmpeg decodes with its own threads (``thread_type = "AUTO"``) and converts to RGB in the same call, outside
    Python's lock. From a file, the reader waits when the queue is full, so nothing is lost and memory stays
    bounded. From a live source (``live=True``) it never waits: when the queue is full it drops the oldest
    waiting frame and counts it in ``dropped``, so what is segmented stays close to now instead of falling behind.
    """

    def __init__(
        self, container: Any, stream: Any, capacity: int, live: bool, max_frames: int | None, yuv: bool = False
    ) -> None:
        self.container, self.stream, self.live, self.max_frames = container, stream, live, max_frames
        self.yuv = yuv
        self.frames: queue.Queue = queue.Queue(maxsize=max(1, capacity))
        self.dropped = 0
        self.decoded = 0
        #: FFmpeg's message when a live source's connection ended in an error after its first frame
        self.ended: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fcnkit-decode", daemon=True)

    def start(self) -> FrameReader:
        self._thread.start()
        return self

    def _put(self, item: Any) -> bool:
        """Queue ``item``; False when the reader was stopped meanwhile."""
        while not self._stop.is_set():
            try:
                self.frames.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _take(self, frame: Any) -> bool:
        """Queue one decoded frame (from a live source, dropping the oldest waiting one when full); False when the
        reader should stop."""
        if self._stop.is_set() or (self.max_frames is not None and self.decoded >= self.max_frames):
            return False
        item = frame_arrays(frame, self.yuv)
        self.decoded += 1
        if not self.live:
            return self._put(item)
        while True:
            try:
                self.frames.put_nowait(item)
                return True
            except queue.Full:
                try:
                    self.frames.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def _run(self) -> None:
        try:
            for frame in self.container.decode(self.stream):
                if not self._take(frame):
                    break
            self._put(_Done())
        except OSError as e:
            if not (self.live and self.decoded > 0):
                self._put(_Done(e))
                return
            # a network stream or camera that stops reaches FFmpeg as an I/O error (an HTTP stream's end does too):
            # the end of what it sent, not a reason to fail the frames already segmented. The frames still inside
            # the decoder (its threads hold a few) come out first.
            self.ended = str(e)
            try:
                for frame in self.stream.codec_context.decode(None):
                    if not self._take(frame):
                        break
            except Exception:  # what the decoder still held is lost with the stream
                pass
            self._put(_Done())
        except BaseException as e:  # handed to the consumer, which raises it
            self._put(_Done(e))

    def batches(self, size: int) -> Iterator[list[tuple[np.ndarray, np.ndarray | None]]]:
        """Frames in order, ``size`` at a time (fewer at the end; from a live source, what has arrived)."""
        done = False
        while not done:
            item = self.frames.get()
            if isinstance(item, _Done):
                if item.error is not None:
                    raise item.error
                return
            batch = [item]
            while len(batch) < size:
                try:  # a file's batch waits to fill up; a live source's takes what has arrived
                    nxt = self.frames.get_nowait() if self.live else self.frames.get()
                except queue.Empty:
                    break
                if isinstance(nxt, _Done):
                    if nxt.error is not None:
                        raise nxt.error
                    done = True
                    break
                batch.append(nxt)
            yield batch

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class FrameWriter:
    """Blends the class colours over segmented frames and encodes them (and writes label PNGs) in a thread of its
    own, from a bounded queue: when encoding or the disk is slower than the model, the model waits."""

    def __init__(
        self,
        av: Any,
        writer: Any,
        encoder: Any,
        blender: Blender | YuvBlender,
        palette: list,
        label_dir: Path | None,
        capacity: int,
    ) -> None:
        self.av, self.writer, self.encoder, self.blender = av, writer, encoder, blender
        self.palette, self.label_dir = palette, label_dir
        self.jobs: queue.Queue = queue.Queue(maxsize=max(1, capacity))
        self.written = 0
        self.error: BaseException | None = None
        self._abort = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fcnkit-encode", daemon=True)
        self._thread.start()

    def put(self, frame: tuple[np.ndarray, np.ndarray | None], label: np.ndarray) -> None:
        """Queue a ``(rgb, yuv)`` frame (see :class:`FrameReader`) and its labels."""
        if self.error is not None:
            raise self.error
        while True:
            try:
                self.jobs.put((frame, label), timeout=0.1)
                return
            except queue.Full:
                if self.error is not None:
                    raise self.error from None

    def write(self, frame: tuple[np.ndarray, np.ndarray | None], label: np.ndarray) -> None:
        """One frame: blend (in yuv420p when the frame came so), encode, mux; its label PNG."""
        for packet in self.encoder.encode(overlay_picture(self.av, self.blender, frame, label)):
            self.writer.mux(packet)
        if self.label_dir is not None:
            label_to_palette_png(label, self.palette).save(
                self.label_dir / f"{self.written:06d}.png", pnginfo=png_mark(), compress_level=LABEL_PNG_COMPRESSION
            )
        self.written += 1

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            if self.error is None and not self._abort.is_set():
                try:
                    self.write(*job)
                except BaseException as e:  # raised in the caller's thread at its next put or at finish
                    self.error = e

    def finish(self) -> None:
        """Wait for the queued frames, then flush the encoder's delayed ones."""
        self.jobs.put(None)
        self._thread.join()
        if self.error is not None:
            raise self.error
        for packet in self.encoder.encode():
            self.writer.mux(packet)

    def close(self) -> None:
        """Stop without writing what is still queued (after an error elsewhere); nothing once finished."""
        self._abort.set()
        while self._thread.is_alive():
            try:
                self.jobs.put(None, timeout=0.1)
            except queue.Full:
                continue
            self._thread.join(timeout=1)


def open_encoder(av: Any, writer: Any, rate: Fraction, width: int, height: int, preset: str = "ultrafast") -> Any:
    """The overlay video's stream: H.264 (libx264 at ``preset``, crf 18) where FFmpeg has x264, else MPEG-4 part 2;
    4:2:0 for even sizes, 4:4:4 for odd ones (4:2:0 needs even sizes)."""
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    encoder = writer.add_stream(codec, rate=rate)
    encoder.width, encoder.height = width, height
    encoder.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
    encoder.thread_type = "AUTO"
    if codec == "libx264":
        encoder.options = {"crf": "18", "preset": preset}
    else:
        encoder.options = {"qscale": "3"}
    return encoder


def predict_video(
    predictor: Predictor,
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    alpha: float = 0.5,
    labels: bool = False,
    show_progress: bool = True,
    max_frames: int | None = None,
    name: str | os.PathLike[str] | None = None,
    live: bool | None = None,
    preset: str = "ultrafast",
) -> VideoReport:
    """Segment every frame of ``source`` into ``out/<stem>_overlay.mp4`` (and with ``labels`` the label PNGs).

    Three stages overlap: decoding (a thread, FFmpeg's own threads inside), the model (batches of
    ``predictor.batch_size``, several at once where :meth:`~fcnkit.inference.Predictor.concurrent` says so), and
    blending plus encoding (a thread); bounded queues between them keep memory flat. ``live`` (default: a device
    or stream URL) drops the frames the model cannot keep up with instead of falling behind, and the report says
    how many. ``name`` replaces ``<stem>`` (:func:`video_names` gives each of several sources its own).
    ``max_frames`` stops early (a webcam or stream otherwise runs until it ends).
    ``preset`` is x264's speed preset. A file FFmpeg cannot read, or a frame it cannot decode, is a
    :class:`DataError` naming the file. A live source whose connection ends in an I/O error after its first frame
    (a stream or camera that stops) ends the run normally, with FFmpeg's message in the report's ``ended``.
    """
    av = require("av", "video", "video input and output")
    source = os.fspath(source)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = os.fspath(name) if name is not None else video_name(source)
    overlay_path = out / f"{stem}_overlay.mp4"
    label_dir = out / f"{stem}_labels" if labels else None
    _check_output(av, source, overlay_path, label_dir)
    live = is_live(source) if live is None else live
    container = _open(av, source)
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    rate = stream.average_rate or stream.guessed_rate or Fraction(25, 1)
    width, height = stream.codec_context.width, stream.codec_context.height
    total = stream.frames or None
    if max_frames is not None:
        total = min(total, max_frames) if total else max_frames
    palette = list(predictor.model.palette or voc_palette(predictor.num_classes))
    overlay_path.parent.mkdir(parents=True, exist_ok=True)
    if label_dir is not None:
        label_dir.mkdir(exist_ok=True)
    writer = av.open(os.fspath(overlay_path), "w")
    writer.metadata["comment"] = MARK  # a later run may replace this file, and only files with this mark
    encoder = open_encoder(av, writer, rate, width, height, preset)
    blender = overlay_blender(encoder, palette, alpha)
    if show_progress:
        ensure_handler()
    progress = Progress(
        total, "video", unit="frame", logger=get_logger("predict"), log_every=max(1, (total or 300) // 10),
        min_interval=10.0, enabled=show_progress,
    )  # fmt: skip
    capacity = QUEUE_BATCHES * predictor.batch_size
    reader = FrameReader(container, stream, capacity, live, max_frames, yuv=isinstance(blender, YuvBlender)).start()
    frames = FrameWriter(av, writer, encoder, blender, palette, label_dir, capacity)
    runner, runs = predictor.concurrent()
    count, start = 0, time.perf_counter()

    def segment(batch: list) -> np.ndarray:
        # planar (B, 3, H, W): the float passes of preprocessing run several times faster on it
        rgb = torch.from_numpy(np.stack([f[0] for f in batch])).permute(0, 3, 1, 2).contiguous()
        return runner.predict_labels(rgb).cpu().numpy()

    def write(done: list[tuple[list, np.ndarray]]) -> None:
        nonlocal count
        for batch, labels_out in done:
            for frame, label in zip(batch, labels_out, strict=True):
                frames.put(frame, label)
            count += len(batch)
            values = {"frames/s": count / max(time.perf_counter() - start, 1e-9)}
            if reader.dropped:
                values["dropped"] = reader.dropped
            progress.update(len(batch), values=values)

    try:
        with progress, InOrder(runs) as model:  # `runs` batches in the model at once (Predictor.concurrent)
            for batch in reader.batches(predictor.batch_size):
                write(model.submit(batch, lambda batch=batch: segment(batch)))
            write(list(model.drain()))
            frames.finish()
    except av.FFmpegError as e:
        raise DataError(f"{source}: FFmpeg could not decode frame {count} ({e})") from e
    finally:
        reader.close()
        frames.close()
        writer.close()
        container.close()
    if count == 0:
        raise DataError(f"{source}: no frame could be decoded")
    seconds = time.perf_counter() - start
    return VideoReport(
        source, overlay_path, count, (height, width), Fraction(rate), seconds, label_dir, reader.dropped, reader.ended
    )
