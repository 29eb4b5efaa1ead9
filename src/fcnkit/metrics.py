"""Segmentation metrics from one confusion matrix accumulated over a whole split.

Every reference implementation (Caffe FCN ``score.py``, torchfcn, mmseg) scores a split by summing a single
``(C, C)`` confusion matrix over all of its pixels and deriving the numbers from it at the end. Averaging
per-image scores instead weights small images like large ones and gives different, non-comparable numbers.

Conventions (rows are ground truth, columns are predictions; ``tp = diag``, ``gt = row sums``,
``pred = column sums``):

* pixel accuracy    ``sum(tp) / sum(gt)``
* class accuracy    ``tp_c / gt_c``; NaN for a class with no ground-truth pixel
* IoU               ``tp_c / (gt_c + pred_c - tp_c)``; NaN for a class absent from both ground truth and
  prediction. A class that is only predicted has IoU 0 and does count.
* precision         ``tp_c / pred_c``; NaN for a class never predicted. Recall is the class accuracy.
* Dice / F1         ``2 tp_c / (gt_c + pred_c)``; NaN where IoU is (Dice = 2 IoU / (1 + IoU) per class).
* mean accuracy / mIoU / mean precision / mean Dice: NaN-mean over classes, i.e. NaN classes are excluded.
* fwIoU             ``sum_c freq_c * IoU_c`` over classes with ``freq_c > 0``, ``freq_c = gt_c / sum(gt)``.

FastFCN instead counts absent classes as IoU 0 and divides by C: see :func:`miou_zero_for_absent`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["ConfusionMatrix", "SegMetrics", "metrics_from_matrix", "miou_zero_for_absent"]


@dataclass
class SegMetrics:
    """Headline numbers (floats in 0..1, NaN when undefined) and per-class ``(C,)`` float64 tensors."""

    pixel_acc: float
    mean_acc: float
    miou: float
    fwiou: float
    iou: Tensor
    acc: Tensor
    #: the ``(C, C)`` int64 confusion matrix these numbers came from (rows ground truth, columns prediction)
    matrix: Tensor | None = None
    #: per-class precision and Dice (F1) ``(C,)``, and their NaN-means
    precision: Tensor | None = None
    dice: Tensor | None = None
    mean_precision: float = math.nan
    mean_dice: float = math.nan

    @property
    def recall(self) -> Tensor:
        """Per-class recall, ``tp / gt``: the class accuracy."""
        return self.acc

    @property
    def mean_recall(self) -> float:
        return self.mean_acc

    def as_dict(self) -> dict[str, float | list[float]]:
        """Plain Python values, ready for JSON or a logger: the four floats plus ``iou``/``acc`` lists."""
        return {
            "pixel_acc": self.pixel_acc,
            "mean_acc": self.mean_acc,
            "miou": self.miou,
            "fwiou": self.fwiou,
            "mean_precision": self.mean_precision,
            "mean_dice": self.mean_dice,
            "iou": self.iou.tolist(),
            "acc": self.acc.tolist(),
            "precision": self.precision.tolist() if self.precision is not None else None,
            "dice": self.dice.tolist() if self.dice is not None else None,
        }

    def table(self, class_names: list[str]) -> str:
        """A fixed-width per-class table in % (IoU, accuracy = recall, precision, Dice), then the headline numbers.

        Excluded classes (NaN) are shown as ``-`` so that they cannot be mistaken for a score of 0.
        """
        if len(class_names) != self.iou.numel():
            raise ValueError(f"got {len(class_names)} class names for {self.iou.numel()} classes")

        def pct(x: float) -> str:
            return "-" if math.isnan(x) else f"{100.0 * x:.2f}"

        width = max([len("class"), *(len(n) for n in class_names)])
        nan = [math.nan] * len(class_names)
        precision = self.precision.tolist() if self.precision is not None else nan
        dice = self.dice.tolist() if self.dice is not None else nan
        lines = [f"{'class':<{width}}  {'IoU':>7}  {'Acc':>7}  {'Prec':>7}  {'Dice':>7}", "-" * (width + 36)]
        for name, *values in zip(class_names, self.iou.tolist(), self.acc.tolist(), precision, dice, strict=True):
            lines.append(f"{name:<{width}}" + "".join(f"  {pct(v):>7}" for v in values))
        lines.append("-" * (width + 36))
        lines.append(
            f"pixel acc {pct(self.pixel_acc)}  mean acc {pct(self.mean_acc)}  "
            f"mIoU {pct(self.miou)}  fwIoU {pct(self.fwiou)}  mean prec {pct(self.mean_precision)}  "
            f"mean Dice {pct(self.mean_dice)}"
        )
        return "\n".join(lines)


def _nanmean(x: Tensor) -> float:
    # torch.nanmean of an all-NaN tensor is NaN, which is the honest answer for an empty split.
    return float(torch.nanmean(x)) if x.numel() else math.nan


def metrics_from_matrix(matrix: Tensor) -> SegMetrics:
    """Derive :class:`SegMetrics` from a ``(C, C)`` confusion matrix (rows ground truth, columns prediction)."""
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"expected a square (C, C) matrix, got shape {tuple(matrix.shape)}")
    # float64 on the CPU: counts of a large split exceed float32's exact integer range (2**24).
    m = matrix.detach().to("cpu", torch.float64)
    tp = m.diagonal()
    gt = m.sum(dim=1)
    pred = m.sum(dim=0)
    union = gt + pred - tp
    nan = torch.tensor(math.nan, dtype=torch.float64)
    iou = torch.where(union > 0, tp / union.clamp_min(1), nan)
    acc = torch.where(gt > 0, tp / gt.clamp_min(1), nan)
    precision = torch.where(pred > 0, tp / pred.clamp_min(1), nan)
    dice = torch.where(gt + pred > 0, 2 * tp / (gt + pred).clamp_min(1), nan)
    total = gt.sum()
    if total > 0:
        pixel_acc = float(tp.sum() / total)
        freq = gt / total
        present = freq > 0
        # A class with gt pixels always has union > 0, so its IoU is never NaN here.
        fwiou = float((freq[present] * iou[present]).sum())
    else:
        pixel_acc = fwiou = math.nan
    return SegMetrics(
        pixel_acc=pixel_acc,
        mean_acc=_nanmean(acc),
        miou=_nanmean(iou),
        fwiou=fwiou,
        iou=iou,
        acc=acc,
        matrix=matrix.detach().to("cpu", torch.int64),
        precision=precision,
        dice=dice,
        mean_precision=_nanmean(precision),
        mean_dice=_nanmean(dice),
    )


def miou_zero_for_absent(matrix: Tensor) -> float:
    """Mean IoU with FastFCN's convention: classes absent from both ground truth and prediction count as 0.

    Provided only to reproduce numbers printed by FastFCN. It is **not comparable** with the mIoU of
    :func:`metrics_from_matrix` (Caffe FCN / torchfcn / mmseg): on a split where some classes never occur it is
    lower by the fraction of absent classes.
    """
    m = matrix.detach().to("cpu", torch.float64)
    tp = m.diagonal()
    union = m.sum(dim=0) + m.sum(dim=1) - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.zeros_like(tp))
    return float(iou.mean())


class ConfusionMatrix:
    """Accumulates an int64 ``(C, C)`` confusion matrix over a split (rows ground truth, columns prediction).

    Args:
        num_classes: C.
        ignore_index: target value that is skipped (VOC void, label padding).
        device: where the matrix lives. ``None`` adopts the device of the first :meth:`update`, so that GPU
            predictions are counted on the GPU and an NCCL :meth:`all_reduce` works without copies.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._device_fixed = device is not None
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        """Zero the matrix (keeps its device)."""
        self.matrix.zero_()

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add one batch.

        Args:
            pred: ``(B, H, W)`` or ``(H, W)`` integer class indices (``logits.argmax(1)``).
            target: same shape, integer labels in ``[0, C)`` or ``ignore_index``.

        Raises:
            ValueError: a target (or a prediction at a non-ignored pixel) outside ``[0, C)``. Silently dropping
                such labels would hide a wrong class mapping and inflate every score.
        """
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
        if pred.is_floating_point() or target.is_floating_point():
            raise TypeError("pred and target must be integer class indices (use logits.argmax(1) for pred)")
        if not self._device_fixed:
            self.matrix = self.matrix.to(target.device)
            self._device_fixed = True
        # int64 before any arithmetic: uint8 labels would overflow in C * target + pred.
        target = target.to(self.matrix.device, torch.int64).flatten()
        pred = pred.to(self.matrix.device, torch.int64).flatten()
        c = self.num_classes

        valid = target != self.ignore_index
        bad_target = valid & ((target < 0) | (target >= c))
        if bool(bad_target.any()):
            values = target[bad_target].unique()[:10].tolist()
            raise ValueError(
                f"target contains label(s) {values} outside [0, {c}) that are not ignore_index={self.ignore_index}"
            )
        bad_pred = valid & ((pred < 0) | (pred >= c))
        if bool(bad_pred.any()):
            values = pred[bad_pred].unique()[:10].tolist()
            raise ValueError(f"pred contains class index(es) {values} outside [0, {c})")

        # Each (gt, pred) pair gets a unique bin gt * C + pred; one bincount fills the whole matrix.
        bins = torch.bincount(target[valid] * c + pred[valid], minlength=c * c)
        self.matrix += bins.view(c, c)

    def all_reduce(self) -> None:
        """Sum the matrix over all ``torch.distributed`` ranks (in place); a no-op when not initialised.

        Call it once, after the last :meth:`update` and before :meth:`compute`, on every rank. With the NCCL
        backend the matrix must be on that rank's GPU (it is when the updates were).
        """
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)

    def compute(self) -> SegMetrics:
        """Metrics of everything accumulated so far (see the module docstring for the definitions)."""
        return metrics_from_matrix(self.matrix)
