"""Segmenting image files: expanding folders and globs, writing label PNGs, overlays and probabilities."""

from __future__ import annotations

import glob
import itertools
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sized
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..data import voc_palette
from ..data.io import read_image
from ..errors import MissingFileError
from ..progress import Progress, ensure_handler, get_logger
from ..visualize import label_to_palette_png, overlay
from .predictor import Predictor

__all__ = ["IMAGE_SUFFIXES", "PredictionReport", "expand_inputs", "predict_files"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


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
    """Segment image files into ``out``: for ``name.ext``, ``name.png`` (a palette PNG whose pixel values are
    class indices), unless ``overlays`` is False ``name_overlay.jpg`` (the colours over the image), and with
    ``probs`` ``name_probs.npy``
    (``(C, H, W)`` float16 softmax).

    A file that cannot be read is skipped and reported (on stderr, and in the returned report); the others
    are still written. The next files are decoded and the finished ones written in two threads while the model
    runs; consecutive images of the same size are batched up to ``predictor.batch_size``.

    Args:
        log: called with one line per file written (``"<input> -> <label png>"``), e.g. ``print``.
        show_progress: a bar on a terminal, else a log line (``"fcnkit.predict"``) at the first file and every
            tenth of the files.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    palette = list(predictor.model.palette or voc_palette(predictor.num_classes))
    report = PredictionReport([], [])
    total = len(paths) if isinstance(paths, Sized) else None
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
    with progress, ThreadPoolExecutor(max_workers=2, thread_name_prefix="fcnkit-io") as io:
        # Throughput: the next images are decoded, and the finished ones written, in threads while the model
        # runs (PIL and zlib release the GIL), and consecutive images of one size share a batch of
        # predictor.batch_size. Outputs and log lines keep the input order.
        writes: deque[Future] = deque()
        batch: list[tuple[Path, Tensor]] = []

        def flush() -> None:
            preds = predictor.predict_tensor(torch.stack([rgb for _, rgb in batch]), probs=probs)
            for (path, rgb), pred in zip(batch, preds, strict=True):
                writes.append(io.submit(_write, out, path, rgb, pred, palette, alpha if overlays else None, probs))
            batch.clear()
            while writes and (writes[0].done() or len(writes) > 2 * predictor.batch_size + 2):
                finish(writes.popleft().result())

        def finish(written: tuple[Path, Path]) -> None:
            path, label_png = written
            report.written.append(label_png)
            if log is not None:
                with progress.suspended():  # the bar is cleared while the line is written, then redrawn
                    log(f"{path} -> {label_png}")
            progress.update(values={"skipped": len(report.skipped)} if report.skipped else None)

        for path, rgb, error in _decoded(io, [Path(p) for p in paths], lookahead=2 * predictor.batch_size + 2):
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
    out: Path, path: Path, rgb: Tensor, pred: Any, palette: list, alpha: float | None, probs: bool
) -> tuple[Path, Path]:
    """The label PNG, the overlay (unless ``alpha`` is None) and the probabilities of one image."""
    label = pred.label.numpy()
    label_png = out / f"{path.stem}.png"
    label_to_palette_png(label, palette).save(label_png)
    if alpha is not None:
        overlay(rgb, label, palette, alpha=alpha).save(out / f"{path.stem}_overlay.jpg", quality=92)
    if probs:
        np.save(out / f"{path.stem}_probs.npy", pred.probs.numpy().astype(np.float16))
    return path, label_png
