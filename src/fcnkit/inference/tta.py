"""Test-time inference: multi-scale, flip and sliding-window logits, the same for eval, predict and Predictor."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import InferenceConfig
from ..errors import ConfigError
from ..utils import as_pair

__all__ = ["describe_inference", "infer_logits", "is_plain", "sliding_window_logits"]


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
    (ch, cw), (sh, sw) = as_pair(crop_size), as_pair(stride)
    if min(ch, cw, sh, sw) < 1:
        raise ConfigError(f"crop_size and stride must be positive, got {crop_size} and {stride}")
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
    crop = as_pair(cfg.crop_size)
    # FastFCN steps by 2/3 of the crop; mmseg configs give the stride explicitly.
    stride = as_pair(cfg.stride) if cfg.stride else (max(1, crop[0] * 2 // 3), max(1, crop[1] * 2 // 3))
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
        (ch, cw) = as_pair(cfg.crop_size)
        stride = as_pair(cfg.stride) if cfg.stride else (max(1, ch * 2 // 3), max(1, cw * 2 // 3))
        text = f"slide {ch}x{cw} stride {stride[0]}x{stride[1]}" + (" padded" if cfg.pad else "")
    if list(cfg.scales) != [1.0] or cfg.base_size:
        text += ", scales " + ",".join(f"{s:g}" for s in cfg.scales)
        text += f" (base {cfg.base_size})" if cfg.base_size else ""
    return text + (", flip" if cfg.flip else "")


def infer_logits(
    model: nn.Module, x: Tensor, cfg: InferenceConfig | None = None, num_classes: int | None = None
) -> Tensor:
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


def is_plain(cfg: InferenceConfig | None) -> bool:
    """``cfg`` is one whole-image pass at scale 1 without flip: ``model(x)["out"]`` itself."""
    return cfg is None or (cfg.mode == "whole" and list(cfg.scales) == [1.0] and not cfg.flip)
