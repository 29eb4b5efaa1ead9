"""Segmenting image files: expanding folders and globs, writing label PNGs, overlays and probabilities."""

from __future__ import annotations

import glob
import itertools
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from torch import Tensor

from ..data import voc_palette
from ..data.io import read_image
from ..errors import MissingFileError, OutputError
from ..progress import Progress, ensure_handler, get_logger
from ..visualize import LABEL_PNG_COMPRESSION, Blender, label_to_palette_png
from .predictor import InOrder, Predictor

__all__ = ["IMAGE_SUFFIXES", "PredictionReport", "check_outputs", "expand_inputs", "output_names", "predict_files"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
#: what fcnkit writes into its PNG label maps (text chunk "Software") and JPEG overlays (comment), so that a later
#: run knows which existing files it may replace
MARK = "fcnkit"


def expand_inputs(inputs: Iterable[str]) -> list[Path]:
    """Files, folders (their images, sorted) and glob patterns -> a list of paths, in order, without repeats."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.exists():
            found.append(path)
        else:
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True))
            if not matches:
                raise MissingFileError(f"{item}: no such file, folder or matching files")
            found += [p for p in matches if p.is_file()]
    seen: set[Path] = set()
    return [p for p in found if not (p in seen or seen.add(p))]


def output_names(paths: Sequence[Path]) -> list[Path]:
    """The output name of each input, without suffix, relative to the output folder; one per input, never two
    alike. The file stem when the stems differ (``photos/a.jpg`` -> ``a``); when two stems collide, every input's
    path relative to the inputs' common folder (``a/img.jpg``, ``b/img.jpg`` -> ``a/img``, ``b/img``), and where
    even those collide (``img.jpg`` beside ``img.png``) the suffix is kept in the name (``img_jpg``, ``img_png``)."""
    paths = [Path(p) for p in paths]
    if len({p.stem for p in paths}) == len(paths):
        return [Path(p.stem) for p in paths]
    absolute = [Path(os.path.abspath(p)) for p in paths]
    common = Path(os.path.commonpath([p.parent for p in absolute]))
    names = [p.relative_to(common).with_suffix("") for p in absolute]
    clash = {n for n in names if names.count(n) > 1}
    return [
        n.with_name(f"{n.name}_{p.suffix.lstrip('.').lower()}") if n in clash else n
        for n, p in zip(names, paths, strict=True)
    ]


def _outputs(name: Path, out: Path, overlays: bool, probs: bool) -> list[Path]:
    files = [out / f"{name}.png"]
    if overlays:
        files.append(out / f"{name}_overlay.jpg")
    if probs:
        files.append(out / f"{name}_probs.npy")
    return files


def png_mark() -> PngInfo:
    """The text chunk fcnkit writes into its label PNGs (see :func:`written_by_fcnkit`)."""
    info = PngInfo()
    info.add_text("Software", MARK)
    return info


def written_by_fcnkit(path: Path) -> bool:
    """``path`` is an output of an earlier ``fcnkit predict``: a label PNG or overlay JPEG carrying fcnkit's mark,
    or a probabilities file beside such a label PNG."""
    if path.suffix == ".npy":
        label = path.with_name(path.name.removesuffix("_probs.npy") + ".png")
        return label.is_file() and written_by_fcnkit(label)
    try:
        with Image.open(path) as img:
            mark = img.info.get("Software") if img.format == "PNG" else img.info.get("comment")
    except (OSError, ValueError):
        return False
    if isinstance(mark, bytes):
        mark = mark.decode("latin-1")
    return mark == MARK


def check_outputs(paths: Sequence[Path], names: Sequence[Path], out: Path, overlays: bool, probs: bool) -> None:
    """Refuse (:class:`OutputError`) before anything is written when an output would replace an input, or an
    existing file that no earlier ``fcnkit predict`` wrote. Outputs of an earlier run may be replaced."""
    inputs = {Path(os.path.realpath(p)) for p in paths}
    replaced, foreign = [], []
    for name in names:
        for target in _outputs(name, out, overlays, probs):
            if Path(os.path.realpath(target)) in inputs:
                replaced.append(target)
            elif target.exists() and not (target.is_file() and written_by_fcnkit(target)):
                foreign.append(target)
    if replaced:
        listed = ", ".join(str(p) for p in replaced[:5]) + (
            f" and {len(replaced) - 5} more" if len(replaced) > 5 else ""
        )
        raise OutputError(
            f"the outputs would replace {len(replaced)} input file(s) ({listed}): choose an --out folder that does "
            "not hold the images"
        )
    if foreign:
        listed = ", ".join(str(p) for p in foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutputError(
            f"{out} holds {len(foreign)} file(s) that fcnkit predict did not write and would replace ({listed}): "
            "choose another --out folder, or move them"
        )


@dataclass
class PredictionReport:
    """What :func:`predict_files` did: the label PNGs written, and the inputs skipped with the reason."""

    written: list[Path]
    skipped: list[tuple[Path, str]]


def predict_files(
    predictor: Predictor,
    paths: Iterable[Path],
    out: str | os.PathLike[str],
    probs: bool = False,
    alpha: float = 0.5,
    log: Callable[[str], None] | None = None,
    show_progress: bool = True,
    overlays: bool = True,
) -> PredictionReport:
    """Segment image files into ``out``: for each input, ``NAME.png`` (a palette PNG whose pixel values are class
    indices), unless ``overlays`` is False ``NAME_overlay.jpg`` (the colours over the image), and with ``probs``
    ``NAME_probs.npy`` (``(C, H, W)`` float16 softmax). ``NAME`` is the file's stem, or its path relative to the
    inputs' common folder when two inputs share a stem (see :func:`output_names`), so every input gets its own files.

    Nothing is written when an output would replace an input or a file that no earlier ``fcnkit predict`` wrote
    (:class:`~fcnkit.errors.OutputError`; see :func:`check_outputs`). A file that cannot be read is skipped and
    reported (on stderr, and in the returned report); the others are still written. The next files are decoded and
    the finished ones written in two threads while the model runs; consecutive images of the same size are batched
    up to ``predictor.batch_size``.

    Args:
        log: called with one line per file written (``"<input> -> <label png>"``), e.g. ``print``.
        show_progress: a bar on a terminal, else a log line (``"fcnkit.predict"``) at the first file and every
            tenth of the files.
    """
    out = Path(out)
    paths = list(dict.fromkeys(Path(p) for p in paths))
    names = dict(zip(paths, output_names(paths), strict=True))
    check_outputs(paths, list(names.values()), out, overlays, probs)
    out.mkdir(parents=True, exist_ok=True)
    palette = list(predictor.model.palette or voc_palette(predictor.num_classes))
    blender = Blender(palette, alpha) if overlays else None
    report = PredictionReport([], [])
    total = len(paths)
    if show_progress:
        ensure_handler()
    progress = Progress(
        total,
        "predict",
        unit="image",
        logger=get_logger("predict"),
        log_every=max(1, (total or 500) // 10),
        min_interval=10.0,
        enabled=show_progress,
    )
    runner, runs = predictor.concurrent(len(paths))  # several batches at once where there are several
    in_flight = (runs + 1) * predictor.batch_size + 2  # images decoded ahead, and written behind, at most
    with (
        progress,
        ThreadPoolExecutor(max_workers=2, thread_name_prefix="fcnkit-io") as io,
        InOrder(runs) as model,
    ):
        # Throughput: the next images are decoded, and the finished ones written, in threads while the model
        # runs (FFmpeg, PIL and zlib release the GIL); consecutive images of one size share a batch of
        # predictor.batch_size, and `runs` batches run at once (Predictor.concurrent). Outputs and log lines keep
        # the input order.
        writes: deque[Future] = deque()
        batch: list[tuple[Path, Tensor]] = []

        def segment(stacked: Tensor) -> list:
            if probs:
                return [(p.label, p.probs) for p in runner.predict_tensor(stacked, probs=True)]
            # uint8 labels straight from the model's output, no int64 copy
            return [(label, None) for label in runner.predict_labels(stacked).cpu()]

        def write(done: list[tuple[list[tuple[Path, Tensor]], list]]) -> None:
            for images, results in done:
                for (path, rgb), (label, soft) in zip(images, results, strict=True):
                    args = (out / names[path], path, rgb, label, soft, palette, blender)
                    writes.append(io.submit(_write, *args))
            while writes and (writes[0].done() or len(writes) > in_flight):
                finish(writes.popleft().result())

        def flush() -> None:
            stacked = batch[0][1][None] if len(batch) == 1 else torch.stack([rgb for _, rgb in batch])
            write(model.submit(list(batch), lambda: segment(stacked)))
            batch.clear()

        def finish(written: tuple[Path, Path]) -> None:
            path, label_png = written
            report.written.append(label_png)
            if log is not None:
                with progress.suspended():  # the bar is cleared while the line is written, then redrawn
                    log(f"{path} -> {label_png}")
            progress.update(values={"skipped": len(report.skipped)} if report.skipped else None)

        for path, rgb, error in _decoded(io, paths, lookahead=in_flight):
            if error is not None:  # one unreadable file must not cost the others
                report.skipped.append((path, error))
                progress.write(f"skipped {path}: {error}", file=sys.stderr)
                progress.update(values={"skipped": len(report.skipped)})
                continue
            if batch and (len(batch) == predictor.batch_size or batch[0][1].shape != rgb.shape):
                flush()
            batch.append((path, rgb))
        if batch:
            flush()
        write(list(model.drain()))
        while writes:
            finish(writes.popleft().result())
    return report


def _read(path: Path) -> tuple[Tensor | None, str | None]:
    try:
        return read_image(path), None
    except (ValueError, OSError) as e:
        return None, str(e)


def _decoded(io: ThreadPoolExecutor, paths: list[Path], lookahead: int) -> Iterator[tuple[Path, Tensor, str | None]]:
    """``(path, rgb, error)`` in order, the next ``lookahead`` files decoding meanwhile."""
    pending: deque[tuple[Path, Future]] = deque()
    it = iter(paths)
    for path in itertools.islice(it, lookahead):
        pending.append((path, io.submit(_read, path)))
    while pending:
        path, future = pending.popleft()
        nxt = next(it, None)
        if nxt is not None:
            pending.append((nxt, io.submit(_read, nxt)))
        rgb, error = future.result()
        yield path, rgb, error


def _write(
    base: Path, path: Path, rgb: Tensor, label: Tensor, probs: Tensor | None, palette: list, blender: Blender | None
) -> tuple[Path, Path]:
    """The label PNG, the overlay (with a ``blender``) and the probabilities (when given) of one image; ``base`` is
    the output path without suffix."""
    base.parent.mkdir(parents=True, exist_ok=True)
    label = label.numpy()
    label_png = base.with_name(base.name + ".png")
    label_to_palette_png(label, palette).save(label_png, pnginfo=png_mark(), compress_level=LABEL_PNG_COMPRESSION)
    if blender is not None:
        picture = blender.picture(rgb.permute(1, 2, 0).numpy(), label)
        picture.save(base.with_name(base.name + "_overlay.jpg"), quality=92, comment=MARK)
    if probs is not None:
        np.save(base.with_name(base.name + "_probs.npy"), probs.numpy().astype(np.float16))
    return path, label_png
