"""The one forward contract shared by every fcnkit model.

optional input standardisation -> backbone -> optional neck -> head(s) -> a single resize to the input size.

* An input standardisation (optional, ``input_norm``) maps the preprocessed images to images of zero mean and
  unit variance per image and channel (``nn.InstanceNorm2d`` without parameters): a brighter, darker or
  lower-contrast copy of an image then gives the same features, a lighting invariance the dataset-wide
  preprocessing cannot give. It has no weights, so it adds no state-dict key.
* A backbone maps ``(B, 3, H, W)`` to ``dict[str, Tensor]`` and declares ``feature_info``: one
  ``FeatureInfo(name, channels, stride)`` per tap, so heads size themselves without probing.
* A neck (optional, e.g. FastFCN's JPU) maps the feature dict to a dict of its own outputs (``{"jpu": ...}``),
  which is merged into the features, so heads pick either a backbone tap or the neck's output by key.
  (Returning only its own entries keeps the neck traceable by ``torch.fx``, which BatchNorm folding uses.)
* A head maps ``(features, (H, W))`` to logits ``(B, C, h, w)``, or to a dict ``{"out": logits, ...}``
  when it has extra outputs (EncNet's ``"se"``: ``(B, C)`` class-presence logits). Heads that restore the
  input geometry themselves (the Caffe FCNs crop to exactly ``H x W``) make the final resize a no-op.
* ``Segmenter.forward`` returns ``{"out": (B, C, H, W)}``, plus ``"aux"`` when built with an aux head:
  the same dict torchvision's segmentation models return, so code written for them keeps working. Extra
  head outputs (``"se"``) are passed through unresized.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from ..card import CardAttributes, ModelCard
from ..errors import ConfigError


@dataclass(frozen=True)
class FeatureInfo:
    """One backbone tap: its key in the feature dict, channel count and stride w.r.t. the input."""

    name: str
    channels: int
    stride: int


class Backbone(nn.Module):
    """Base class: subclasses set ``feature_info`` and return ``{info.name: tensor}`` from ``forward``."""

    feature_info: list[FeatureInfo]

    def channels(self, name: str) -> int:
        return self.info(name).channels

    def info(self, name: str) -> FeatureInfo:
        for info in self.feature_info:
            if info.name == name:
                return info
        raise KeyError(f"backbone has no tap {name!r}; taps: {[i.name for i in self.feature_info]}")


#: ``input_norm`` values of the model builders that take one: None, or "image" (see :func:`image_standardisation`)
INPUT_NORMS = (None, "image")


def image_standardisation(kind: str | None) -> nn.Module | None:
    """The input standardisation a builder's ``input_norm`` names: None (none), or ``"image"``: each image's
    channels shifted and scaled to mean 0 and variance 1 over its pixels, in training and inference alike.

    The statistics are those of the tensor the model is given: padding (training crops past an image's border,
    a padded evaluation batch of mixed sizes) and sliding-window tiles each shift them, so evaluate images of
    mixed sizes with batch 1 and prefer whole-image to tiled inference with this option."""
    if kind not in INPUT_NORMS:
        raise ConfigError(f"input_norm must be one of {list(INPUT_NORMS)}, got {kind!r}")
    # affine=False, track_running_stats=False: no parameters, no buffers, the image's own statistics always
    return None if kind is None else nn.InstanceNorm2d(3, affine=False, track_running_stats=False)


class Segmenter(CardAttributes, nn.Module):
    """Backbone + optional ``neck`` + main head (``classifier``) + optional ``aux_classifier``, resized.

    Attribute names follow torchvision (``backbone``, ``classifier``, ``aux_classifier``) so that its
    segmentation state dicts load without renaming. ``neck`` is registered only when given, so models
    without one keep exactly torchvision's state-dict keys.
    """

    def __init__(
        self,
        backbone: Backbone,
        classifier: nn.Module,
        aux_classifier: nn.Module | None = None,
        num_classes: int | None = None,
        align_corners: bool = False,
        neck: nn.Module | None = None,
        input_norm: nn.Module | None = None,
    ) -> None:
        super().__init__()
        # Registered only when given (like ``neck``): models without it keep their exact module tree.
        self.input_norm = input_norm
        self.backbone = backbone
        # A None attribute is not a submodule: no "neck." keys, no entry in named_modules().
        self.neck = neck
        self.classifier = classifier
        self.aux_classifier = aux_classifier
        self.num_classes = num_classes
        self.align_corners = align_corners
        # What the weights are (architecture, classes, palette, preprocessing, test-time passes, provenance):
        # filled by create_model() and the training loop, travels with checkpoints and ONNX files (fcnkit.card).
        # model.preprocessing / classes / palette / arch read and write it.
        self.card = ModelCard()

    def _resize(self, logits: Tensor, size: tuple[int, int]) -> Tensor:
        if tuple(logits.shape[-2:]) == tuple(size):
            return logits
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=self.align_corners)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """``x``: preprocessed images ``(B, 3, H, W)`` -> ``{"out": (B, C, H, W)[, "aux": ...][, "se": (B, C)]}``."""
        size = (x.shape[-2], x.shape[-1])
        if self.input_norm is not None:
            x = self.input_norm(x)
        features = self.backbone(x)
        if self.neck is not None:
            features = {**features, **self.neck(features)}
        head = self.classifier(features, size)
        if isinstance(head, Tensor):
            result = {"out": self._resize(head, size)}
        else:  # a head with extra outputs: only the logits map is resized
            result = dict(head)
            result["out"] = self._resize(head["out"], size)
        if self.aux_classifier is not None:
            aux = self.aux_classifier(features, size)
            result["aux"] = self._resize(aux if isinstance(aux, Tensor) else aux["out"], size)
        return result
