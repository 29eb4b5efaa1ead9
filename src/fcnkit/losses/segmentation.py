"""Per-pixel cross-entropy for segmentation, with the auxiliary head, class weights, OHEM and EncNet's SE loss,
and optional Dice / Tversky / focal / Lovász-softmax terms (:mod:`fcnkit.losses.region`).

The learning-rate / reduction trap
----------------------------------
The original FCN recipe (Caffe, torchfcn) **sums** the loss over pixels and trains with lr 1e-10 (FCN-32s),
1e-12 (16s), 1e-14 (8s), momentum 0.99, batch 1. A summed loss on a 500x375 image is ~1e5 times larger than
the mean, so those rates are only sensible with ``reduction="sum"``. Using them with ``"mean"`` makes nothing
learn; using a modern rate (1e-3 .. 1e-2) with ``"sum"`` diverges to NaN within a few steps. Always state the
reduction and the lr together.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import LossConfig, Reduction, choices, validate_loss
from .region import dice_loss, focal_loss, lovasz_softmax_loss, tversky_loss

__all__ = [
    "CLASS_WEIGHTINGS",
    "REDUCTIONS",
    "SegmentationLoss",
    "class_presence",
    "class_weights_from_counts",
    "enet_weights",
    "median_frequency_weights",
]

#: the values of ``reduction`` (one list, :data:`fcnkit.config.Reduction`)
REDUCTIONS: tuple[str, ...] = choices(Reduction)


def class_presence(target: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """``(B, C)`` float: 1 where class c occurs in image b's labels (ignored pixels excluded), else 0.

    The target of EncNet's semantic-encoding (SE) loss (Zhang et al., CVPR 2018).
    """
    b = target.shape[0]
    flat = target.reshape(b, -1).long()
    valid = flat != ignore_index
    if valid.any() and (flat[valid].min() < 0 or flat[valid].max() >= num_classes):
        raise ValueError(f"labels hold values outside [0, {num_classes}) that are not ignore_index {ignore_index}")
    index = torch.where(valid, flat, torch.zeros_like(flat))
    counts = torch.zeros(b, num_classes, dtype=torch.float32, device=target.device)
    counts.scatter_add_(1, index, valid.float())
    return (counts > 0).float()


class SegmentationLoss(nn.Module):
    """Cross-entropy on the ``"out"`` logits, plus ``aux_weight`` times the same loss on ``"aux"``.

    Args:
        ignore_index: target value that contributes nothing (void, label padding).
        reduction: ``"mean"`` averages over the non-ignored pixels of the batch (a weighted mean with class
            weights, exactly like ``F.cross_entropy``); ``"sum"`` sums over them, as the original FCN recipe
            does (see the module docstring for the lr that goes with each).
        class_weights: ``(C,)`` per-class weights, e.g. from :func:`median_frequency_weights`.
        aux_weight: weight of the auxiliary head's loss (torchvision 0.5, mmseg 0.4, FastFCN 0.2); 0 disables it.
        se_weight: weight of EncNet's SE loss (FastFCN 0.2): binary cross-entropy between the model's ``"se"``
            logits ``(B, C)`` and which classes occur in each image's labels (:func:`class_presence`), averaged
            over ``B x C``; 0 disables it.
        label_smoothing: as in ``F.cross_entropy``.
        ohem_thresh: enables online hard example mining (PSPNet / mmseg ``OHEMPixelSampler``): only pixels
            whose softmax probability of the true class is below this threshold are trained on.
        ohem_min_kept: with OHEM, at least this many of the hardest valid pixels **per image** are kept
            (``ohem_min_kept * B`` over the batch, as mmseg counts), so easy batches still give a gradient.
        ce_weight, dice_weight, tversky_weight, focal_weight, lovasz_weight: each head's loss is the weighted
            sum of cross-entropy (with the settings above) and these terms of :mod:`fcnkit.losses.region`
            (class weights apply to cross-entropy and focal); the extra terms need ``reduction="mean"``.
        tversky_alpha, tversky_beta: Tversky's weights of false positives and false negatives.
        focal_gamma: the focusing exponent of the focal term.

    Keys of the model output other than ``"out"``, ``"aux"`` and ``"se"`` are ignored, and ``"se"`` too when
    ``se_weight`` is 0.
    OHEM selects pixels separately for each head, from that head's own probabilities.
    """

    class_weights: Tensor | None

    def __init__(
        self,
        ignore_index: int = 255,
        reduction: Reduction = "mean",
        class_weights: Sequence[float] | Tensor | None = None,
        aux_weight: float = 0.0,
        se_weight: float = 0.0,
        label_smoothing: float = 0.0,
        ohem_thresh: float | None = None,
        ohem_min_kept: int = 0,
        ce_weight: float = 1.0,
        dice_weight: float = 0.0,
        tversky_weight: float = 0.0,
        tversky_alpha: float = 0.5,
        tversky_beta: float = 0.5,
        focal_weight: float = 0.0,
        focal_gamma: float = 2.0,
        lovasz_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}; got {reduction!r}")
        self.term_weights = {
            "ce": float(ce_weight),
            "dice": float(dice_weight),
            "tversky": float(tversky_weight),
            "focal": float(focal_weight),
            "lovasz": float(lovasz_weight),
        }
        validate_loss(
            LossConfig(
                reduction=reduction,  # type: ignore[arg-type]
                **{f"{k}_weight": v for k, v in self.term_weights.items()},
                tversky_alpha=tversky_alpha,
                tversky_beta=tversky_beta,
                focal_gamma=focal_gamma,
            )
        )
        self.tversky_alpha, self.tversky_beta, self.focal_gamma = float(tversky_alpha), float(tversky_beta), focal_gamma
        if aux_weight < 0:
            raise ValueError(f"aux_weight must be >= 0, got {aux_weight}")
        if se_weight < 0:
            raise ValueError(f"se_weight must be >= 0, got {se_weight}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if ohem_thresh is not None and not 0.0 < ohem_thresh <= 1.0:
            raise ValueError(f"ohem_thresh must be in (0, 1], got {ohem_thresh}")
        if ohem_min_kept < 0:
            raise ValueError(f"ohem_min_kept must be >= 0, got {ohem_min_kept}")
        if ohem_min_kept and ohem_thresh is None:
            raise ValueError("ohem_min_kept only has an effect together with ohem_thresh")
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.aux_weight = float(aux_weight)
        self.se_weight = float(se_weight)
        self.label_smoothing = float(label_smoothing)
        self.ohem_thresh = ohem_thresh
        self.ohem_min_kept = ohem_min_kept
        weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32).flatten()
        # A buffer so that .to(device) moves it; not persistent, because a loss is configuration, not state.
        self.register_buffer("class_weights", weights, persistent=False)

    @classmethod
    def from_config(
        cls, cfg: LossConfig, ignore_index: int = 255, class_weights: Sequence[float] | Tensor | None = None
    ) -> SegmentationLoss:
        """The loss a ``loss:`` config section describes (its keys are this class's arguments).

        ``class_weights`` replaces ``cfg.class_weights``; it is required when that names a method
        (``"median_frequency"``), since the weights then come from the training labels.
        """
        settings = dataclasses.asdict(cfg)
        configured = settings.pop("class_weights")
        if class_weights is None and isinstance(configured, str):
            raise ValueError(
                f"loss.class_weights={configured!r} is computed from the training labels: pass the weights "
                "(e.g. median_frequency_weights of the class pixel counts) as class_weights"
            )
        return cls(
            ignore_index=ignore_index, class_weights=configured if class_weights is None else class_weights, **settings
        )

    def extra_repr(self) -> str:
        return (
            f"reduction={self.reduction!r}, ignore_index={self.ignore_index}, aux_weight={self.aux_weight}, "
            f"se_weight={self.se_weight}, "
            f"label_smoothing={self.label_smoothing}, ohem_thresh={self.ohem_thresh}, "
            f"ohem_min_kept={self.ohem_min_kept}, class_weights={self.class_weights is not None}, "
            f"terms={ {k: w for k, w in self.term_weights.items() if w > 0} }"
        )

    @torch.no_grad()
    def hard_pixel_mask(self, logits: Tensor, target: Tensor) -> Tensor:
        """OHEM selection: ``(B, H, W)`` bool, True for the pixels that are trained on.

        Keeps every valid pixel whose true-class probability is below ``ohem_thresh``, and in any case the
        ``ohem_min_kept * B`` valid pixels with the lowest probability (ties broken by position). Without OHEM
        it is simply ``target != ignore_index``.
        """
        valid = target != self.ignore_index
        if self.ohem_thresh is None:
            return valid
        # Ignored pixels point at class 0 only to make gather legal; they are masked out below.
        safe_target = torch.where(valid, target, torch.zeros_like(target))
        prob = logits.detach().float().softmax(dim=1).gather(1, safe_target.unsqueeze(1)).squeeze(1)
        keep = valid & (prob < self.ohem_thresh)
        n_min = min(self.ohem_min_kept * target.shape[0], int(valid.sum()))
        if n_min > 0:
            # Ignored pixels get +inf so they can never be among the hardest.
            ranked = torch.where(valid, prob, torch.full_like(prob, float("inf"))).flatten()
            hardest = ranked.topk(n_min, largest=False).indices
            keep.view(-1)[hardest] = True
        return keep

    def _single(self, logits: Tensor, target: Tensor, name: str) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss of one head: ``logits`` ``(B, C, H, W)``, ``target`` ``(B, H, W)`` -> the weighted sum of its
        terms, and each term unweighted."""
        if logits.ndim != 4 or target.ndim != 3:
            raise ValueError(
                f"expected {name!r} logits (B, C, H, W) and target (B, H, W), got "
                f"{tuple(logits.shape)} and {tuple(target.shape)}"
            )
        if logits.shape[0] != target.shape[0] or logits.shape[2:] != target.shape[1:]:
            # Resizing silently would hide a model that forgot its final upsampling.
            raise ValueError(
                f"{name!r} logits {tuple(logits.shape)} do not match target {tuple(target.shape)}; "
                "models must return logits at the label resolution"
            )
        weight = self.class_weights
        if weight is not None and weight.numel() != logits.shape[1]:
            raise ValueError(f"class_weights has {weight.numel()} entries for {logits.shape[1]} classes")

        terms = {"ce": self._cross_entropy(logits, target)} if self.term_weights["ce"] > 0 else {}
        w, ignore = self.term_weights, self.ignore_index
        if w["dice"] > 0:
            terms["dice"] = dice_loss(logits, target, ignore)
        if w["tversky"] > 0:
            terms["tversky"] = tversky_loss(logits, target, self.tversky_alpha, self.tversky_beta, ignore)
        if w["focal"] > 0:
            terms["focal"] = focal_loss(logits, target, self.focal_gamma, ignore, self.class_weights)
        if w["lovasz"] > 0:
            terms["lovasz"] = lovasz_softmax_loss(logits, target, ignore)
        total = sum(w[k] * v for k, v in terms.items())
        return total, terms

    def _cross_entropy(self, logits: Tensor, target: Tensor) -> Tensor:
        weight = self.class_weights
        # Per-pixel losses are 0 at ignored pixels and already include the class weight w[y] (and torch's
        # weighted label-smoothing term), so both reductions are a plain sum with a different divisor.
        per_pixel = F.cross_entropy(
            logits,
            target,
            weight=weight,
            ignore_index=self.ignore_index,
            reduction="none",
            label_smoothing=self.label_smoothing,
        )
        keep = self.hard_pixel_mask(logits, target)
        if self.ohem_thresh is not None:
            per_pixel = per_pixel * keep
        total = per_pixel.sum()
        if self.reduction == "sum":
            return total

        safe_target = torch.where(keep, target, torch.zeros_like(target))
        pixel_weight = keep.to(per_pixel.dtype) if weight is None else weight.to(per_pixel.dtype)[safe_target] * keep
        denom = pixel_weight.sum()
        # All pixels ignored: the sum is 0 and so must be the loss (torch's mean gives 0/0 = NaN). torch.where
        # avoids a device sync and keeps the graph, so backward gives zero, finite gradients.
        safe_denom = torch.where(denom > 0, denom, torch.ones_like(denom))
        return torch.where(denom > 0, total / safe_denom, total * 0.0)

    def forward(self, outputs: Mapping[str, Tensor] | Tensor, target: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Compute the training loss.

        Args:
            outputs: the model output ``{"out": (B, C, H, W), "aux": (B, C, H, W), ...}``, or bare logits.
            target: ``(B, H, W)`` integer labels in ``[0, C)`` or ``ignore_index``.

        Returns:
            The scalar loss to back-propagate and its parts as floats: ``{"main", "aux", "se", "total"}``
            (``"aux"`` and ``"se"`` only when those losses are used; ``"ce"``, ``"dice"``, ... the main head's
            unweighted terms, when it has more than cross-entropy).
        """
        if isinstance(outputs, Tensor):
            outputs = {"out": outputs}
        if "out" not in outputs:
            raise ValueError(f"model output has no 'out' key (got {sorted(outputs)})")
        target = target.long()
        main, terms = self._single(outputs["out"], target, "out")
        loss = main
        parts: dict[str, float] = {"main": float(main.detach())}
        if len(terms) > 1 or "ce" not in terms:  # the terms of the main head, when there is more than plain CE
            parts.update({k: float(v.detach()) for k, v in terms.items()})
        if self.aux_weight > 0:
            aux_logits = _required(outputs, "aux", self.aux_weight, "build the model with aux=True")
            aux, _ = self._single(aux_logits, target, "aux")
            loss = loss + self.aux_weight * aux
            parts["aux"] = float(aux.detach())
        if self.se_weight > 0:
            se_logits = _required(outputs, "se", self.se_weight, "use an EncNet model built with se_loss=True")
            presence = class_presence(target, se_logits.shape[1], self.ignore_index)
            se = F.binary_cross_entropy_with_logits(se_logits.float(), presence)
            loss = loss + self.se_weight * se
            parts["se"] = float(se.detach())
        parts["total"] = float(loss.detach())
        return loss, parts


def _required(outputs: Mapping[str, Tensor], key: str, weight: float, fix: str) -> Tensor:
    """``outputs[key]``, or an error saying which loss weight asked for it and how to provide it."""
    if outputs.get(key) is None:
        raise ValueError(
            f"{key}_weight={weight} but the model output has no {key!r} logits: {fix}, or set {key}_weight=0"
        )
    return outputs[key]


def median_frequency_weights(
    class_pixel_counts: Sequence[float] | Tensor, image_pixel_counts: Sequence[float] | Tensor | None = None
) -> Tensor:
    """Median frequency balancing (Eigen & Fergus; SegNet): ``w_c = median(freq) / freq_c``.

    Args:
        class_pixel_counts: ``(C,)`` number of training pixels labelled c.
        image_pixel_counts: ``(C,)`` total pixels of the training images in which c appears, SegNet's
            denominator. ``None`` uses the total of all labelled pixels for every class (plain frequency).

    Returns:
        ``(C,)`` float32 weights. Classes that never occur get weight 0 (not infinity) and are left out of the
        median, so the weights do not depend on how many unused classes a label set declares.
    """
    counts = torch.as_tensor(class_pixel_counts, dtype=torch.float64).flatten()
    if (counts < 0).any():
        raise ValueError("class_pixel_counts must be >= 0")
    if image_pixel_counts is None:
        denom = counts.sum().expand_as(counts)
    else:
        denom = torch.as_tensor(image_pixel_counts, dtype=torch.float64).flatten()
        if denom.shape != counts.shape:
            raise ValueError(f"image_pixel_counts has {denom.numel()} entries, class_pixel_counts {counts.numel()}")
        if ((counts > 0) & (denom < counts)).any():
            raise ValueError("image_pixel_counts must be >= class_pixel_counts for every class that occurs")
    present = counts > 0
    if not present.any():
        raise ValueError("no class has any pixel")
    freq = counts[present] / denom[present]
    # The true median (mean of the two middle values for an even count), as in SegNet's numpy code;
    # torch.median would return the lower of the two.
    median = float(freq.quantile(0.5))
    weights = torch.zeros_like(counts)
    weights[present] = median / freq
    return weights.float()


def enet_weights(class_pixel_counts: Sequence[float] | Tensor, c: float = 1.02) -> Tensor:
    """ENet's class weighting (Paszke et al. 2016): ``w_c = 1 / ln(c + p_c)``, ``p_c`` the class's pixel share.

    With ``c = 1.02`` the weights lie between 1 / ln(2.02) = 1.42 (a class of every pixel) and 1 / ln(1.02) = 50.5
    (a vanishing class): bounded, unlike inverse frequency. Classes that never occur get weight 0.
    """
    counts = torch.as_tensor(class_pixel_counts, dtype=torch.float64).flatten()
    if (counts < 0).any() or not (counts > 0).any():
        raise ValueError("class_pixel_counts must be >= 0 with at least one class present")
    share = counts / counts.sum()
    return torch.where(counts > 0, 1.0 / torch.log(c + share), 0.0).float()


#: the ``loss.class_weights`` methods that compute weights from the training labels' class pixel counts
CLASS_WEIGHTINGS = {
    "median_frequency": median_frequency_weights,
    # the square root of median-frequency balancing: half of its correction on a log scale
    "sqrt_median_frequency": lambda counts: median_frequency_weights(counts).sqrt(),
    "enet": enet_weights,
}


def class_weights_from_counts(method: str, class_pixel_counts: Sequence[float] | Tensor) -> Tensor:
    """The weights ``method`` (a key of :data:`CLASS_WEIGHTINGS`) gives classes with these pixel counts."""
    if method not in CLASS_WEIGHTINGS:
        raise ValueError(f"unknown class weighting {method!r}; one of {', '.join(CLASS_WEIGHTINGS)}")
    return CLASS_WEIGHTINGS[method](class_pixel_counts)
