"""Segmenting image files: expanding folders and globs, writing label PNGs, overlays and probabilities."""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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
) -> PredictionReport:
    """Segment image files into ``out``: for ``name.ext``, ``name.png`` (a palette PNG whose pixel values are
    class indices), ``name_overlay.jpg`` (the colours over the image) and with ``probs`` ``name_probs.npy``
    (``(C, H, W)`` float16 softmax).

    A file that cannot be read is skipped and reported (on stderr, and in the returned report); the others
    are still written.

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
    with progress:
        for path in paths:
            path = Path(path)
            try:
                rgb = read_image(path)
            except (ValueError, OSError) as e:  # one unreadable file must not cost the others
                report.skipped.append((path, str(e)))
                progress.write(f"skipped {path}: {e}", file=sys.stderr)
                progress.update(values={"skipped": len(report.skipped)})
                continue
            pred = predictor.predict_tensor(rgb, probs=probs)[0]
            label = pred.label.numpy()
            label_to_palette_png(label, palette).save(out / f"{path.stem}.png")
            overlay(rgb, label, palette, alpha=alpha).save(out / f"{path.stem}_overlay.jpg", quality=92)
            if probs:
                np.save(out / f"{path.stem}_probs.npy", pred.probs.numpy().astype(np.float16))
            report.written.append(out / f"{path.stem}.png")
            if log is not None:
                with progress.suspended():  # the bar is cleared while the line is written, then redrawn
                    log(f"{path} -> {out / (path.stem + '.png')}")
            progress.update(values={"skipped": len(report.skipped)} if report.skipped else None)
    return report
