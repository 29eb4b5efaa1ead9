"""FastFCN models: EncNet / PSP / DeepLabV3 heads on a stride-32 ResNet with a JPU neck, and their
dilated-ResNet (output stride 8) baselines.

Names follow ``<head>_resnet<depth>_<neck>``: ``enc_resnet50_jpu``, ``psp_resnet101_jpux``,
``deeplabv3_resnet50_d8`` (``d8``: no neck, the backbone dilated to stride 8 instead). With a JPU the
backbone runs undilated (stride 32) and the head reads the neck's 2048-channel stride-8 ``"jpu"`` map;
the ``_d8`` baselines read the dilated ``"layer4"`` (2048 channels, stride 8). Everything else is equal,
which is the comparison the FastFCN paper makes.
"""

from __future__ import annotations

import os

from torch import nn

from ..errors import CheckpointError, ConfigError
from ..preprocessing import IMAGENET
from .backbones.resnet import ResNetBackbone, resnet_state_dict_to_backbone
from .heads.aspp import ASPPHead
from .heads.encnet import EncHead
from .heads.fcn import FCNHead
from .heads.psp import PSPHead
from .necks.jpu import JPU, JPU_X
from .segmenter import Segmenter
from .weights import resolve
from .zoo import register_variant, set_metadata

HEADS = ("enc", "psp", "deeplabv3")
NECKS = ("jpu", "jpux", None)
DEPTHS = (50, 101)

_SUFFIX = {"jpu": "jpu", "jpux": "jpux", None: "d8"}


def fastfcn(
    head: str,
    depth: int = 50,
    neck: str | None = "jpu",
    num_classes: int = 21,
    aux: bool = False,
    se_loss: bool | None = None,
    deep_stem: bool = False,
    backbone_weights: str | os.PathLike[str] | None = None,
    dropout: float = 0.1,
) -> Segmenter:
    """A FastFCN-family model: ResNet-``depth`` backbone, optional JPU / JPU_X neck, EncNet / PSP / ASPP head.

    Output ``{"out": (B, C, H, W)}``, plus ``"aux"`` ``(B, C, H, W)`` with ``aux=True`` and ``"se"``
    ``(B, C)`` (class-presence logits for EncNet's SE loss) when the SE branch is built. Logits are
    resized bilinearly with ``align_corners=True``, as FastFCN does.

    Args:
        head: ``"enc"``, ``"psp"`` or ``"deeplabv3"``.
        depth: 50 or 101.
        neck: ``"jpu"``, ``"jpux"`` (backbone at stride 32) or None (backbone dilated to stride 8).
        aux: an FCNHead on ``"layer3"`` (1024 channels; stride 32 with a JPU, 8 without).
        se_loss: build EncNet's SE branch (default: True for ``head="enc"``; other heads have none).
        deep_stem: three 3x3 convs instead of the 7x7 stem (FastFCN's "resnet50s" backbone); torchvision's
            ImageNet weights do not fit it.
        backbone_weights: ``"imagenet"`` / ``"imagenet_v2"`` (torchvision) or a ResNet state-dict file.
        dropout: the Dropout2d before each head's last 1x1 conv (and in the aux head).
    """
    if head not in HEADS:
        raise ConfigError(f"head must be one of {HEADS}, got {head!r}")
    if neck not in NECKS:
        raise ConfigError(f"neck must be one of {NECKS}, got {neck!r}")
    if se_loss is None:
        se_loss = head == "enc"
    if se_loss and head != "enc":
        raise ConfigError(f"se_loss needs the EncNet head (head='enc'); {head!r} has no SE branch")

    backbone = ResNetBackbone(depth, output_stride=32 if neck else 8, deep_stem=deep_stem)
    taps = [backbone.channels(k) for k in ("layer2", "layer3", "layer4")]
    neck_module: nn.Module | None = None
    if neck == "jpu":
        neck_module = JPU(taps, width=512)
    elif neck == "jpux":
        neck_module = JPU_X(taps, width=512)
    in_key = "jpu" if neck_module is not None else "layer4"
    in_channels = neck_module.out_channels if neck_module is not None else backbone.channels("layer4")

    classifier: nn.Module
    if head == "enc":
        classifier = EncHead(in_channels, num_classes, in_key, se_loss=se_loss, jpu=neck is not None, dropout=dropout)
    elif head == "psp":
        classifier = PSPHead(in_channels, num_classes, in_key, dropout=dropout)
    else:
        classifier = ASPPHead(in_channels, num_classes, in_key, dropout=dropout)
    aux_classifier = FCNHead(backbone.channels("layer3"), num_classes, "layer3", dropout) if aux else None
    model = Segmenter(
        backbone, classifier, aux_classifier, num_classes=num_classes, align_corners=True, neck=neck_module
    )
    if backbone_weights is not None:
        resolved = resolve(backbone_weights, owner=f"resnet{depth}", backbone=True)
        try:
            backbone.load_state_dict(resnet_state_dict_to_backbone(resolved.state_dict), strict=True)
        except RuntimeError as err:
            hint = " (deep_stem=True needs deep-stem weights; torchvision's have a 7x7 stem)" if deep_stem else ""
            raise CheckpointError(f"{resolved.source} does not fit the ResNet-{depth} backbone{hint}: {err}") from None
        set_metadata(model, resolved.preprocessing or IMAGENET)
    return model


for _head in HEADS:
    for _depth in DEPTHS:
        for _neck in NECKS:
            register_variant(f"{_head}_resnet{_depth}_{_SUFFIX[_neck]}", fastfcn, head=_head, depth=_depth, neck=_neck)
