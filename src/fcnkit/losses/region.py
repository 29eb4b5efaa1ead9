"""Losses users ask for beside cross-entropy: Dice, Tversky, softmax focal and Lovász-softmax.

All take logits ``(B, C, H, W)`` and integer targets ``(B, H, W)`` whose ``ignore_index`` pixels count for
nothing, and return a scalar.

* **Dice** and **Tversky** are the soft, multi-class forms of segmentation_models_pytorch (smp) with its
  defaults: softmax probabilities, per-class sums over the whole batch, ``score = (2 |P T| + smooth) /
  (|P| + |T| + smooth)`` (Tversky: ``(|P T| + smooth) / (|P T| + alpha |P (1 - T)| + beta |(1 - P) T| +
  smooth)``), the loss ``1 - score`` of every class averaged over all C classes, where a class with no target
  pixel in the batch contributes 0. Tversky with ``alpha = beta = 0.5`` is Dice; ``beta > alpha`` weighs missed
  pixels more than false alarms (Salehi et al. 2017).
* **Focal** (Lin et al. 2017) in its softmax form, ``-(1 - p_t) ** gamma * log p_t``, averaged over the valid
  pixels (class-weighted like ``F.cross_entropy`` when ``weight`` is given); ``gamma = 0`` is cross-entropy.
  smp's multi-class focal loss is a different one: a sigmoid focal loss per class, one against the rest.
* **Lovász-softmax** (Berman et al., CVPR 2018): the Lovász extension of the Jaccard loss of each class present
  in the batch, on the softmax probabilities of the valid pixels, averaged over those classes (smp's
  ``LovaszLoss(mode="multiclass")``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["dice_loss", "focal_loss", "lovasz_softmax_loss", "tversky_loss"]


def _masked_probs(logits: Tensor, target: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """Softmax probabilities and one-hot targets ``(B, C, N)``, both zero at ignored pixels."""
    b, c = logits.shape[:2]
    probs = logits.float().softmax(dim=1).reshape(b, c, -1)
    flat = target.reshape(b, -1)
    valid = flat != ignore_index
    onehot = F.one_hot(torch.where(valid, flat, torch.zeros_like(flat)).long(), c).permute(0, 2, 1)
    mask = valid.unsqueeze(1).to(probs.dtype)
    return probs * mask, onehot.to(probs.dtype) * mask


def tversky_loss(
    logits: Tensor,
    target: Tensor,
    alpha: float = 0.5,
    beta: float = 0.5,
    ignore_index: int = 255,
    smooth: float = 0.0,
    eps: float = 1e-7,
) -> Tensor:
    """Multi-class soft Tversky loss (see the module docstring); ``alpha`` weighs false positives, ``beta``
    false negatives."""
    probs, onehot = _masked_probs(logits, target, ignore_index)
    dims = (0, 2)
    tp = (probs * onehot).sum(dims)
    fp = (probs * (1.0 - onehot)).sum(dims)
    fn = ((1.0 - probs) * onehot).sum(dims)
    score = (tp + smooth) / (tp + alpha * fp + beta * fn + smooth).clamp_min(eps)
    present = onehot.sum(dims) > 0
    return ((1.0 - score) * present).mean()


def dice_loss(
    logits: Tensor, target: Tensor, ignore_index: int = 255, smooth: float = 0.0, eps: float = 1e-7
) -> Tensor:
    """Multi-class soft Dice loss (see the module docstring)."""
    probs, onehot = _masked_probs(logits, target, ignore_index)
    dims = (0, 2)
    score = (2.0 * (probs * onehot).sum(dims) + smooth) / ((probs + onehot).sum(dims) + smooth).clamp_min(eps)
    present = onehot.sum(dims) > 0
    return ((1.0 - score) * present).mean()


def focal_loss(
    logits: Tensor, target: Tensor, gamma: float = 2.0, ignore_index: int = 255, weight: Tensor | None = None
) -> Tensor:
    """Softmax focal loss averaged over the valid pixels (a weighted mean with class ``weight``)."""
    log_p = F.log_softmax(logits.float(), dim=1)
    valid = target != ignore_index
    safe = torch.where(valid, target, torch.zeros_like(target)).long()
    log_pt = log_p.gather(1, safe.unsqueeze(1)).squeeze(1)
    per_pixel = -((1.0 - log_pt.exp()) ** gamma) * log_pt
    w = valid.to(per_pixel.dtype) if weight is None else weight.to(per_pixel)[safe] * valid
    denom = w.sum()
    return torch.where(denom > 0, (per_pixel * w).sum() / denom.clamp_min(1e-12), per_pixel.sum() * 0.0)


def _lovasz_grad(fg_sorted: Tensor) -> Tensor:
    """Gradient of the Lovász extension of the Jaccard loss at errors sorted in decreasing order, along the last
    dimension (one row per class)."""
    total = fg_sorted.sum(-1, keepdim=True)
    intersection = total - fg_sorted.cumsum(-1)
    union = total + (1.0 - fg_sorted).cumsum(-1)
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], dim=-1)


def lovasz_softmax_loss(logits: Tensor, target: Tensor, ignore_index: int = 255) -> Tensor:
    """Lovász-softmax over the valid pixels of the batch, averaged over the classes present in it.

    All classes are sorted in one call (a class x pixel matrix) rather than class by class: the sorts are the
    cost of this loss, and one batched sort runs them in parallel."""
    c = logits.shape[1]
    probs = logits.float().softmax(dim=1).permute(1, 0, 2, 3).reshape(c, -1)
    labels = target.reshape(-1)
    valid = labels != ignore_index
    probs, labels = probs[:, valid], labels[valid]
    fg = torch.zeros_like(probs).scatter_(0, labels[None].long(), 1.0)
    present = fg.any(dim=1)
    if not present.any():
        return logits.sum() * 0.0
    fg, probs = fg[present], probs[present]
    errors, order = (fg - probs).abs().sort(dim=1, descending=True)
    return (errors * _lovasz_grad(fg.gather(1, order))).sum(dim=1).mean()
