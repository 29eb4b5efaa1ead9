"""Prediction: load a model once, segment many images of any size, mode or orientation.

``Predictor`` applies the preprocessing stored with the weights, runs whole images by default and large
ones by sliding-window tiling (overlapping tiles whose logits are averaged), and returns per-pixel class
indices at the input's resolution, optionally with class probabilities.
"""

from __future__ import annotations

import glob
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from .checkpoint import load_checkpoint, read_checkpoint
from .data.io import read_image
from .models import Segmenter, create_model
from .models.weights import looks_like_path
from .visualize import label_to_palette_png, overlay

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass
class Prediction:
    """``label``: (H, W) int64 class indices; ``probs``: (C, H, W) float32 softmax, when asked for."""

    label: Tensor
    probs: Tensor | None = None


def load_model(spec: str | os.PathLike[str] | nn.Module) -> Segmenter:
    """A model from an fcnkit checkpoint path, a module, or ``"<model>.<weights tag>"`` (e.g.
    ``"fcn_resnet50_d8.coco_voc"``, fetched through the weights cache)."""
    if isinstance(spec, nn.Module):
        return spec
    text = os.fspath(spec)
    if looks_like_path(text):
        read_checkpoint(text)  # a clear error when the file is not an fcnkit checkpoint
        return load_checkpoint(text)
    name, sep, tag = text.rpartition(".")
    if not sep:
        raise ValueError(
            f"{text!r} is neither a checkpoint file nor '<model>.<weights tag>' (see fcnkit.list_weights())"
        )
    return create_model(name, weights=tag)


@torch.inference_mode()
def sliding_window_logits(model: nn.Module, x: Tensor, tile: int, stride: int, num_classes: int) -> Tensor:
    """Logits ``(B, C, H, W)`` of ``x`` ``(B, 3, H, W)`` from overlapping ``tile x tile`` windows.

    An image smaller than a tile is padded (with 0, the normalised mean) to one tile; windows step by
    ``stride`` with the last one flush with the border; each pixel's logits are the mean over the windows
    that cover it.
    """
    b, _, h, w = x.shape
    ph, pw = max(h, tile), max(w, tile)
    if (ph, pw) != (h, w):
        x = F.pad(x, (0, pw - w, 0, ph - h))
    logits = x.new_zeros(b, num_classes, ph, pw)
    count = x.new_zeros(1, 1, ph, pw)
    rows = max(1, math.ceil((ph - tile) / stride) + 1)
    cols = max(1, math.ceil((pw - tile) / stride) + 1)
    for r in range(rows):
        for c in range(cols):
            y0, x0 = min(r * stride, ph - tile), min(c * stride, pw - tile)
            logits[:, :, y0 : y0 + tile, x0 : x0 + tile] += model(x[:, :, y0 : y0 + tile, x0 : x0 + tile])[
                "out"
            ].float()
            count[:, :, y0 : y0 + tile, x0 : x0 + tile] += 1
    return (logits / count)[:, :, :h, :w]


class Predictor:
    """Load once, predict many.

    Args:
        model: an fcnkit checkpoint path, ``"<model>.<weights tag>"`` or a ``Segmenter``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        tile: images with a side larger than this are segmented in ``tile x tile`` windows (None: never).
        overlap: fraction of a tile shared by neighbouring windows.
        batch_size: images of identical size are batched together up to this many.
    """

    def __init__(self, model: str | os.PathLike[str] | nn.Module, device: str = "auto", tile: int | None = None,
                 overlap: float = 1 / 3, batch_size: int = 1) -> None:  # fmt: skip
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model = load_model(model).to(self.device).eval()
        self.tile, self.batch_size = tile, max(1, batch_size)
        self.stride = max(1, round(tile * (1 - overlap))) if tile else None
        self.num_classes = int(self.model.num_classes or 0)
        self.classes = list(self.model.classes or [f"class {i}" for i in range(self.num_classes)])

    def _logits(self, x: Tensor) -> Tensor:
        if self.tile and max(x.shape[-2:]) > self.tile:
            return sliding_window_logits(self.model, x, self.tile, self.stride, self.num_classes)
        return self.model(x)["out"].float()

    @torch.inference_mode()
    def predict_tensor(self, rgb: Tensor, probs: bool = False) -> list[Prediction]:
        """``rgb``: uint8 ``(B, 3, H, W)`` or ``(3, H, W)`` RGB pixels -> one ``Prediction`` per image."""
        if rgb.ndim == 3:
            rgb = rgb[None]
        x = self.model.preprocessing(rgb.to(self.device))
        logits = self._logits(x)
        labels = logits.argmax(1).cpu()
        soft = logits.softmax(1).cpu() if probs else None
        return [Prediction(labels[i], soft[i] if soft is not None else None) for i in range(labels.shape[0])]

    def predict(
        self, image: str | os.PathLike[str] | Image.Image | np.ndarray | Tensor, probs: bool = False
    ) -> Prediction:
        """One image: a file (EXIF orientation applied), a PIL image, an ``(H, W, 3)`` array or a tensor."""
        return self.predict_tensor(to_rgb_tensor(image), probs)[0]

    def predict_many(self, images: Iterable[Tensor], probs: bool = False) -> Iterator[Prediction]:
        """Predictions in order; consecutive images of the same size share a batch."""
        pending: list[Tensor] = []
        for image in images:
            if pending and (len(pending) == self.batch_size or pending[0].shape != image.shape):
                yield from self.predict_tensor(torch.stack(pending), probs)
                pending = []
            pending.append(image)
        if pending:
            yield from self.predict_tensor(torch.stack(pending), probs)


def to_rgb_tensor(image: str | os.PathLike[str] | Image.Image | np.ndarray | Tensor) -> Tensor:
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, Image.Image):
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB array, got shape {image.shape}")
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).to(torch.uint8)
    if isinstance(image, Tensor) and image.ndim == 3 and image.shape[0] == 3:
        return image
    raise TypeError(f"cannot read an image from {type(image).__name__}")


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
                raise FileNotFoundError(f"{item}: no such file, folder or matching files")
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
    log: Callable[[str], None] | None = print,
) -> PredictionReport:
    """Segment image files into ``out``: for ``name.ext``, ``name.png`` (a palette PNG whose pixel values are
    class indices), ``name_overlay.jpg`` (the colours over the image) and with ``probs`` ``name_probs.npy``
    (``(C, H, W)`` float16 softmax).

    A file that cannot be read is skipped and reported (on stderr, and in the returned report); the others
    are still written.
    """
    from .data import voc_palette

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    palette = list(predictor.model.palette or voc_palette(predictor.num_classes))
    report = PredictionReport([], [])
    for path in paths:
        path = Path(path)
        try:
            rgb = read_image(path)
        except (ValueError, OSError) as e:  # one unreadable file must not cost the others
            report.skipped.append((path, str(e)))
            print(f"skipped {path}: {e}", file=sys.stderr)
            continue
        pred = predictor.predict_tensor(rgb, probs=probs)[0]
        label = pred.label.numpy()
        label_to_palette_png(label, palette).save(out / f"{path.stem}.png")
        overlay(rgb, label, palette, alpha=alpha).save(out / f"{path.stem}_overlay.jpg", quality=92)
        if probs:
            np.save(out / f"{path.stem}_probs.npy", pred.probs.numpy().astype(np.float16))
        report.written.append(out / f"{path.stem}.png")
        if log is not None:
            log(f"{path} -> {out / (path.stem + '.png')}")
    return report
