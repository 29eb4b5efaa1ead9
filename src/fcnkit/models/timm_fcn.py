"""FCNs on any timm backbone that supports ``features_only``."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from .backbones.timm import TimmBackbone
from .heads.fcn import FCNHead, SkipFCNHead
from .segmenter import Segmenter, image_standardisation
from .weights import resolve
from .zoo import register_variant, set_metadata

TIMM_HEADS = {"fcn32s": 0, "fcn16s": 1, "fcn8s": 2, "fcn4s": 3, "fcn": None}


def timm_fcn(
    head: str,
    backbone: str = "resnet18",
    num_classes: int = 21,
    output_stride: int | None = None,
    aux: bool = False,
    upsample: str = "deconv",
    learn_upsample: bool = False,
    fuse: str = "sum",
    backbone_weights: str | os.PathLike[str] | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    input_norm: str | None = None,
) -> Segmenter:
    """A timm backbone with an FCN-32s/16s/8s/4s skip head (``head="fcn8s"`` ...) or an FCNHead (``"fcn"``).

    The skip head scores the last one, two, three or four taps (coarse to fine) and fuses them as FCN-8s does,
    with crops derived from the strides timm reports. ``output_stride`` (8 or 16) dilates the backbone
    where timm supports it. ``aux`` (FCNHead only) adds an FCNHead on the second-to-last tap. ``fuse="mix"``
    (skip heads with skips) mixes the upsampling paths with a learned 1x1 convolution instead of summing them.
    ``backbone_weights``: a file with the timm model's state dict (its classifier keys are ignored);
    timm's hub weights are never downloaded at build time. ``input_norm="image"`` standardises each input
    image per channel before the backbone (see :func:`~fcnkit.models.segmenter.image_standardisation`).
    """
    standardise = image_standardisation(input_norm)
    if head not in TIMM_HEADS:
        raise ConfigError(f"head must be one of {sorted(TIMM_HEADS)}, got {head!r}")
    body = TimmBackbone(backbone, output_stride=output_stride, **(backbone_kwargs or {}))
    infos = body.feature_info[::-1]  # coarse to fine
    skips = TIMM_HEADS[head]
    if skips is None:
        if fuse != "sum":
            raise ConfigError("fuse='mix' mixes the skip paths of fcn16s / fcn8s heads; head='fcn' has none")
        classifier = FCNHead(infos[0].channels, num_classes, infos[0].name)
        aux_classifier = FCNHead(infos[1].channels, num_classes, infos[1].name) if aux else None
    else:
        if aux:
            raise ConfigError("aux=True is available with head='fcn' only")
        if len(infos) < skips + 1:
            raise ConfigError(f"{backbone} has {len(infos)} feature taps; {head} needs {skips + 1}")
        classifier = SkipFCNHead(
            in_keys=[i.name for i in infos],
            in_channels=[i.channels for i in infos],
            strides=[i.stride for i in infos],
            num_classes=num_classes,
            skips=skips,
            upsample=upsample,
            learn_upsample=learn_upsample,
            fuse=fuse,
        )
        classifier.floored_maps = floors(body)
        aux_classifier = None
    model = Segmenter(body, classifier, aux_classifier, num_classes=num_classes, input_norm=standardise)
    if backbone_weights is not None:
        resolved = resolve(backbone_weights, owner=body.timm_name, backbone=True)
        result = body.body.load_state_dict(resolved.state_dict, strict=False)
        if result.missing_keys:
            raise CheckpointError(f"{backbone_weights} lacks backbone keys: {result.missing_keys[:8]}")
        set_metadata(model, resolved.preprocessing)
    return model


def floors(body: TimmBackbone) -> bool:
    """Whether ``body``'s feature maps are ``floor(H / stride)`` pixels (convolutions without padding, as ConvNeXt's
    4x4 stride-4 stem) rather than ``ceil``, found by one pass of a ``(2S - 1)``-pixel square (``S``: the largest
    stride), in eval mode without gradients. A backbone that cannot run that size (a ViT with a fixed input size)
    counts as not flooring."""
    strides = [info.stride for info in body.feature_info]
    side = 2 * max(strides) - 1
    first = next((m for m in body.body.modules() if isinstance(m, nn.Conv2d)), None)
    channels = first.in_channels if first is not None else 3
    training = body.training
    try:
        with torch.no_grad():
            maps = list(body.eval()(torch.zeros(1, channels, side, side)).values())
    except Exception:  # the probe is a courtesy; a model it cannot run keeps the head's usual geometry
        return False
    finally:
        body.train(training)
    return any(f.shape[-2] < -(-side // s) or f.shape[-1] < -(-side // s) for f, s in zip(maps, strides, strict=True))


for _head in TIMM_HEADS:
    register_variant(f"{_head}_timm", timm_fcn, head=_head)
