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
import re
import time
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
from ..visualize import label_to_palette_png, overlay
from .files import MARK, output_names, png_mark, written_by_fcnkit
from .predictor import Predictor

__all__ = ["VIDEO_SUFFIXES", "VideoReport", "is_video", "predict_video", "video_name", "video_names"]

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


def predict_video(
    predictor: Predictor,
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    alpha: float = 0.5,
    labels: bool = False,
    show_progress: bool = True,
    max_frames: int | None = None,
    name: str | os.PathLike[str] | None = None,
) -> VideoReport:
    """Segment every frame of ``source`` into ``out/<stem>_overlay.mp4`` (and with ``labels`` the label PNGs).

    ``name`` replaces ``<stem>`` (:func:`video_names` gives each of several sources its own). ``max_frames`` stops
    early (a webcam or stream otherwise runs until it ends). A file FFmpeg cannot read, or a
    frame it cannot decode, is a :class:`DataError` naming the file.
    """
    av = require("av", "video", "video input and output")
    source = os.fspath(source)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = os.fspath(name) if name is not None else video_name(source)
    overlay_path = out / f"{stem}_overlay.mp4"
    label_dir = out / f"{stem}_labels" if labels else None
    _check_output(av, source, overlay_path, label_dir)
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
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    encoder = writer.add_stream(codec, rate=rate)
    # 4:2:0 needs even sizes; an odd-sized video keeps its size in 4:4:4
    encoder.width, encoder.height = width, height
    encoder.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
    if codec == "libx264":
        encoder.options = {"crf": "18", "preset": "veryfast"}
    if show_progress:
        ensure_handler()
    progress = Progress(
        total, "video", unit="frame", logger=get_logger("predict"), log_every=max(1, (total or 300) // 10),
        min_interval=10.0, enabled=show_progress,
    )  # fmt: skip
    count, start, pending = 0, time.perf_counter(), []

    def flush() -> None:
        nonlocal count
        preds = predictor.predict_tensor(torch.stack(pending))
        for rgb, pred in zip(pending, preds, strict=True):
            label = pred.label.numpy()
            blended = np.asarray(overlay(rgb, label, palette, alpha=alpha))
            for packet in encoder.encode(av.VideoFrame.from_ndarray(blended, format="rgb24")):
                writer.mux(packet)
            if label_dir is not None:
                label_to_palette_png(label, palette).save(label_dir / f"{count:06d}.png", pnginfo=png_mark())
            count += 1
            elapsed = time.perf_counter() - start
            progress.update(values={"frames/s": count / max(elapsed, 1e-9)})
        pending.clear()

    try:
        with progress:
            for frame in container.decode(stream):
                if max_frames is not None and count + len(pending) >= max_frames:
                    break
                pending.append(torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1).contiguous())
                if len(pending) == predictor.batch_size:
                    flush()
            if pending:
                flush()
            for packet in encoder.encode():  # the encoder's delayed frames
                writer.mux(packet)
    except av.FFmpegError as e:
        raise DataError(f"{source}: FFmpeg could not decode frame {count + len(pending)} ({e})") from e
    finally:
        writer.close()
        container.close()
    if count == 0:
        raise DataError(f"{source}: no frame could be decoded")
    seconds = time.perf_counter() - start
    return VideoReport(source, overlay_path, count, (height, width), Fraction(rate), seconds, label_dir)
