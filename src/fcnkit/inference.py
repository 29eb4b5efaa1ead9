"""Prediction: load a model once, segment many images of any size, mode or orientation.

``Predictor`` applies the preprocessing stored with the weights, runs whole images by default and large
ones by sliding-window tiling (overlapping tiles whose logits are averaged), and returns per-pixel class
indices at the input's resolution, optionally with class probabilities.
"""

from __future__ import annotations

import dataclasses
import glob
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from .checkpoint import load_checkpoint, read_checkpoint
from .config import InferenceConfig
from .data.io import read_image
from .models import create_model
from .models.weights import looks_like_path
from .visualize import label_to_palette_png, overlay

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass
class Prediction:
    """``label``: (H, W) int64 class indices; ``probs``: (C, H, W) float32 softmax, when asked for."""

    label: Tensor
    probs: Tensor | None = None


def load_model(spec: str | os.PathLike[str] | nn.Module) -> nn.Module:
    """A model from an fcnkit checkpoint path, an ``.onnx`` file from ``fcnkit export`` (run by ONNX Runtime),
    a module, or ``"<model>.<weights tag>"`` (e.g. ``"fcn_resnet50_d8.coco_voc"``, fetched through the weights
    cache)."""
    if isinstance(spec, nn.Module):
        return spec
    text = os.fspath(spec)
    if text.endswith(".onnx"):  # a file written by `fcnkit export`, run by ONNX Runtime
        from .export import OnnxRuntimeModel

        return OnnxRuntimeModel(text)
    if looks_like_path(text):
        read_checkpoint(text)  # a clear error when the file is not an fcnkit checkpoint
        return load_checkpoint(text)
    name, sep, tag = text.rpartition(".")
    if not sep:
        raise ValueError(
            f"{text!r} is neither a checkpoint file nor '<model>.<weights tag>' (see fcnkit.list_weights())"
        )
    return create_model(name, weights=tag)


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    value = list(value)
    return (value[0], value[-1])


def _window_starts(size: int, window: int, step: int) -> list[int]:
    """Window origins along one axis: every ``step`` pixels, the last one flush with the border (mmseg)."""
    if size <= window:
        return [0]
    count = math.ceil((size - window) / step) + 1
    return [min(i * step, size - window) for i in range(count)]


def sliding_window_logits(
    model: nn.Module,
    x: Tensor,
    crop_size: int | Sequence[int],
    stride: int | Sequence[int],
    num_classes: int,
    pad_value: Tensor | float | None = None,
) -> Tensor:
    """Logits ``(B, C, H, W)`` of ``x`` ``(B, 3, H, W)`` from overlapping windows, averaged where they overlap.

    Windows of ``crop_size`` start every ``stride`` pixels, the last row and column flush with the border, as
    mmseg's ``slide_inference``. An image smaller than the window along an axis gets one window of the image's
    size there, so a window covering the image is exactly whole-image inference; with ``pad_value`` (a number
    or a ``(3,)`` per-channel tensor in the model's input space) it is first padded to the window instead, as
    FastFCN's ``MultiEvalModule`` does with the normalised value of a black pixel.
    """
    (ch, cw), (sh, sw) = _pair(crop_size), _pair(stride)
    if min(ch, cw, sh, sw) < 1:
        raise ValueError(f"crop_size and stride must be positive, got {crop_size} and {stride}")
    b, _, h, w = x.shape
    ph, pw = (max(h, ch), max(w, cw)) if pad_value is not None else (h, w)
    if (ph, pw) != (h, w):
        fill = torch.as_tensor(pad_value, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
        padded = fill.expand(b, x.shape[1], ph, pw).clone()
        padded[:, :, :h, :w] = x
        x = padded
    logits = x.new_zeros(b, num_classes, ph, pw, dtype=torch.float32)
    count = x.new_zeros(1, 1, ph, pw, dtype=torch.float32)
    wh, ww = min(ch, ph), min(cw, pw)
    for y0 in _window_starts(ph, wh, sh):
        for x0 in _window_starts(pw, ww, sw):
            window = x[:, :, y0 : y0 + wh, x0 : x0 + ww]
            logits[:, :, y0 : y0 + wh, x0 : x0 + ww] += model(window)["out"].float()
            count[:, :, y0 : y0 + wh, x0 : x0 + ww] += 1
    return (logits / count)[:, :, :h, :w]


def _one_pass(model: nn.Module, x: Tensor, num_classes: int, cfg: InferenceConfig) -> Tensor:
    if cfg.mode == "whole":
        return model(x)["out"].float()
    crop = _pair(cfg.crop_size)
    # FastFCN steps by 2/3 of the crop; mmseg configs give the stride explicitly.
    stride = _pair(cfg.stride) if cfg.stride else (max(1, crop[0] * 2 // 3), max(1, crop[1] * 2 // 3))
    pad_value = None
    if cfg.pad:
        black = torch.zeros(1, 3, 1, 1, dtype=torch.uint8, device=x.device)
        pad_value = model.preprocessing(black).reshape(-1).to(x.dtype)
    return sliding_window_logits(model, x, crop, stride, num_classes, pad_value)


def _scaled_size(h: int, w: int, scale: float, base_size: int | None) -> tuple[int, int]:
    if base_size is None:
        return max(1, round(h * scale)), max(1, round(w * scale))
    long_side = max(1, round(base_size * scale))
    if h >= w:
        return long_side, max(1, round(w * long_side / h))
    return max(1, round(h * long_side / w)), long_side


def describe_inference(cfg: InferenceConfig) -> str:
    """A one-line summary, e.g. ``slide 480x480 stride 320x320, scales 0.5,1.0 (base 520), flip``."""
    text = "whole image"
    if cfg.mode == "slide":
        (ch, cw) = _pair(cfg.crop_size)
        stride = _pair(cfg.stride) if cfg.stride else (max(1, ch * 2 // 3), max(1, cw * 2 // 3))
        text = f"slide {ch}x{cw} stride {stride[0]}x{stride[1]}" + (" padded" if cfg.pad else "")
    if list(cfg.scales) != [1.0] or cfg.base_size:
        text += ", scales " + ",".join(f"{s:g}" for s in cfg.scales)
        text += f" (base {cfg.base_size})" if cfg.base_size else ""
    return text + (", flip" if cfg.flip else "")


def infer_logits(model: nn.Module, x: Tensor, cfg: InferenceConfig | None = None,
                 num_classes: int | None = None) -> Tensor:  # fmt: skip
    """Float32 logits ``(B, C, H, W)`` for preprocessed images ``x`` under a test-time ``cfg``.

    For each scale (and its mirror image with ``flip``) the images are resized bilinearly, run whole or by
    sliding window, and the logits resized back to ``H x W``; the result is their mean. Averaging logits
    follows FastFCN (mmseg averages softmax probabilities; the arg-max rarely differs). With the defaults
    (one scale of 1.0, no flip, whole) this is exactly ``model(x)["out"]``.
    """
    cfg = cfg or InferenceConfig()
    num_classes = num_classes or int(getattr(model, "num_classes", 0) or 0)
    h, w = x.shape[-2:]
    total: Tensor | None = None
    passes = 0
    for scale in cfg.scales:
        size = _scaled_size(h, w, scale, cfg.base_size)
        xs = x if size == (h, w) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        for mirrored in (False, True) if cfg.flip else (False,):
            out = _one_pass(model, xs.flip(-1) if mirrored else xs, num_classes, cfg)
            if mirrored:
                out = out.flip(-1)
            if tuple(out.shape[-2:]) != (h, w):
                out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
            total = out if total is None else total + out
            passes += 1
    assert total is not None
    return total if passes == 1 else total / passes


def is_bare_model_name(spec: str) -> bool:
    """``spec`` names a model to build (``fcn8s_vgg16``, ``timm:resnet18``), not a file or ``<model>.<tag>``."""
    return spec.startswith("timm:") or not (looks_like_path(spec) or "." in spec)


def model_from_spec(spec: str, num_classes: int | None = None) -> nn.Module:
    """What the CLI tools accept as a model: a bare registered name (or ``timm:<backbone>``) is built with random
    weights seeded 0 (``num_classes``, default 21: for benchmarks and export tests); anything else goes to
    :func:`load_model`, where ``num_classes`` has no meaning."""
    if is_bare_model_name(spec):
        torch.manual_seed(0)  # the same random weights on every run
        return create_model(spec, num_classes=num_classes or 21)
    if num_classes is not None:
        raise ValueError(f"{spec}: --num-classes only applies to a bare model name (random weights)")
    return load_model(spec)


def optimized_or_plain(model: nn.Module, backend: str = "torch") -> nn.Module:
    """``optimize_for_inference(model, backend=backend)``, or ``model`` itself with a warning when the
    optimised copy does not reproduce its predictions. A model without parameters (an ONNX Runtime model) is
    returned as it is."""
    import warnings

    from .optimize import optimize_for_inference

    if next(model.parameters(), None) is None:
        return model
    try:
        return optimize_for_inference(model, backend=backend)
    except RuntimeError as exc:
        warnings.warn(f"using the model unoptimised: {exc}", stacklevel=2)
        return model


class Predictor:
    """Load once, predict many.

    Args:
        model: an fcnkit checkpoint path, ``"<model>.<weights tag>"`` or a ``Segmenter``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        tile: shorthand for sliding-window inference in ``tile x tile`` windows (images smaller than a tile
            in both directions are run whole, which is the same thing).
        overlap: fraction of a tile shared by neighbouring windows.
        batch_size: images of identical size are batched together up to this many.
        inference: test-time options (scales, flip, slide; see :class:`fcnkit.config.InferenceConfig`).
            ``tile`` turns its whole-image passes into sliding windows; an explicit slide setting wins.
        optimize: run through :func:`fcnkit.optimize_for_inference` with its exact defaults (BatchNorm folded
            into the convolutions, checked against the plain model on a random input); if that check fails
            the plain model is used and a warning says why.
        backend: ``"torch"`` or ``"onnxruntime"`` (the model exported to ONNX once and run by ONNX Runtime on
            the CPU; needs ``fcnkit[onnx]``), for ``optimize``.
    """

    def __init__(self, model: str | os.PathLike[str] | nn.Module, device: str = "auto", tile: int | None = None,
                 overlap: float = 1 / 3, batch_size: int = 1,
                 inference: InferenceConfig | None = None, optimize: bool = True,
                 backend: str = "torch") -> None:  # fmt: skip
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model = load_model(model).to(self.device).eval()
        if optimize:
            self.model = optimized_or_plain(self.model, backend)
        self.batch_size = max(1, batch_size)
        inference = inference or InferenceConfig()
        if tile and inference.mode == "whole":
            stride = max(1, round(tile * (1 - overlap)))
            inference = dataclasses.replace(inference, mode="slide", crop_size=[tile, tile], stride=[stride, stride])
        self.inference = inference
        self.num_classes = int(self.model.num_classes or 0)
        self.classes = list(self.model.classes or [f"class {i}" for i in range(self.num_classes)])

    def _logits(self, x: Tensor) -> Tensor:
        return infer_logits(self.model, x, self.inference, self.num_classes)

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
