"""FCN on a dilated ResNet, in torchvision's form (``fcn_resnet50`` / ``fcn_resnet101``)."""

from __future__ import annotations

import os

from ..preprocessing import IMAGENET
from .backbones.resnet import ResNetBackbone, resnet_state_dict_to_backbone
from .heads.fcn import FCNHead
from .segmenter import Segmenter
from .weights import resolve
from .zoo import register_variant, set_metadata


def resnet_fcn(
    depth: int,
    output_stride: int = 8,
    num_classes: int = 21,
    aux: bool = False,
    dropout: float = 0.1,
    backbone_weights: str | os.PathLike[str] | None = None,
) -> Segmenter:
    """FCNHead on layer4 of a dilated ResNet; ``aux=True`` adds an FCNHead on layer3.

    Output ``{"out": (B, C, H, W)}`` (+ ``"aux"``), logits resized bilinearly (``align_corners=False``)
    as torchvision does. State-dict keys equal torchvision's ``fcn_resnet*`` keys.

    Args:
        output_stride: 8 (layer3 and layer4 dilated, the torchvision default) or 16 (layer4 only).
        aux: auxiliary FCNHead on layer3 (loss weight 0.5 in torchvision's recipe).
        backbone_weights: ``"imagenet"`` / ``"imagenet_v2"`` (torchvision) or a ResNet state-dict file.
    """
    backbone = ResNetBackbone(depth, output_stride)
    classifier = FCNHead(backbone.channels("layer4"), num_classes, "layer4", dropout)
    aux_classifier = FCNHead(backbone.channels("layer3"), num_classes, "layer3", dropout) if aux else None
    model = Segmenter(backbone, classifier, aux_classifier, num_classes=num_classes)
    if backbone_weights is not None:
        resolved = resolve(backbone_weights, owner=f"resnet{depth}", backbone=True)
        backbone.load_state_dict(resnet_state_dict_to_backbone(resolved.state_dict), strict=True)
        set_metadata(model, resolved.preprocessing or IMAGENET)
    return model


for _depth in (18, 34, 50, 101):
    for _os in (8, 16):
        register_variant(f"fcn_resnet{_depth}_d{_os}", resnet_fcn, depth=_depth, output_stride=_os)
