"""Training losses: :class:`SegmentationLoss` (cross-entropy with aux head, class weights, OHEM, EncNet's SE loss,
and optional Dice / Tversky / focal / Lovász terms; :mod:`.segmentation`) and the region losses themselves
(:mod:`.region`). Layer: beside checkpoint, metrics and visualize; above models and data."""

from .region import dice_loss, focal_loss, lovasz_softmax_loss, tversky_loss
from .segmentation import (
    CLASS_WEIGHTINGS,
    REDUCTIONS,
    SegmentationLoss,
    class_presence,
    class_weights_from_counts,
    enet_weights,
    median_frequency_weights,
)

__all__ = [
    "CLASS_WEIGHTINGS",
    "REDUCTIONS",
    "SegmentationLoss",
    "class_presence",
    "class_weights_from_counts",
    "dice_loss",
    "enet_weights",
    "focal_loss",
    "lovasz_softmax_loss",
    "median_frequency_weights",
    "tversky_loss",
]
