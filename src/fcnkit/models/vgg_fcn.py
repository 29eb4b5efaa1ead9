"""FCN-32s, FCN-16s, FCN-8s and FCN-8s at-once on VGG16 (Long, Shelhamer, Darrell, CVPR 2015 / PAMI 2016)."""

from __future__ import annotations

import os

from torch import nn

from ..preprocessing import CAFFE_BGR, IMAGENET
from .backbones.vgg import VGG16FCNBackbone, load_vgg16_imagenet
from .heads.fcn import SkipFCNHead
from .segmenter import Segmenter
from .weights import resolve
from .zoo import init_from as copy_matching
from .zoo import register_variant, set_metadata

#: Caffe crop offsets (fixed for every input size given pad 100 and ceil-mode pooling).
CAFFE_OFFSETS = {0: (19,), 1: (5, 27), 2: (5, 9, 31)}
#: FCN-8s at-once scales pool4 and pool3 before scoring so the skips start small next to fc7.
ATONCE_SCALES = (0.01, 0.0001)


def vgg16_fcn(
    skips: int,
    atonce: bool = False,
    num_classes: int = 21,
    upsample: str = "deconv",
    learn_upsample: bool = False,
    batch_norm: bool = False,
    backbone_weights: str | os.PathLike[str] | None = None,
    init_from: nn.Module | str | os.PathLike[str] | None = None,
) -> Segmenter:
    """VGG16 FCN with ``skips`` fused taps (0: 32s, 1: 16s, 2: 8s); output ``{"out": (B, C, H, W)}``.

    Args:
        num_classes: number of output classes (21 for PASCAL VOC).
        upsample: ``"deconv"`` (the original frozen bilinear transposed convolutions), ``"bilinear"``
            (a parameter-free resize with the same geometry) or ``"nearest_conv"`` (nearest + learned 1x1).
        learn_upsample: let the transposed convolutions learn (they are frozen in the reference).
        batch_norm: VGG16-BN backbone instead of VGG16.
        backbone_weights: ``"imagenet"`` (torchvision), ``"imagenet_caffe"`` (Caffe VGG16, BGR 0-255) or a
            torchvision-format VGG16 state-dict file; fc6/fc7 are reshaped from the classifier.
        init_from: staged training: a trained coarser FCN (module or checkpoint path) whose same-named
            layers are copied (FCN-16s from FCN-32s, FCN-8s from FCN-16s).
    """
    backbone = VGG16FCNBackbone(batch_norm=batch_norm)
    taps = ["fc7", "pool4", "pool3"]
    head = SkipFCNHead(
        in_keys=taps,
        in_channels=[backbone.channels(t) for t in taps],
        strides=[backbone.info(t).stride for t in taps],
        num_classes=num_classes,
        skips=skips,
        upsample=upsample,
        learn_upsample=learn_upsample,
        offsets=CAFFE_OFFSETS[skips],
        skip_scales=ATONCE_SCALES if atonce else None,
    )
    model = Segmenter(backbone, head, num_classes=num_classes)
    # Until weights say otherwise, assume the Caffe convention the original recipes used.
    model.preprocessing = CAFFE_BGR
    if backbone_weights is not None:
        resolved = resolve(backbone_weights, owner="vgg16_bn" if batch_norm else "vgg16", backbone=True)
        load_vgg16_imagenet(backbone, resolved.state_dict)
        # An undeclared torchvision-format file is taken to be torchvision's own (RGB, 0-1, ImageNet stats).
        set_metadata(model, resolved.preprocessing or IMAGENET)
    if init_from is not None:
        copy_matching(model, init_from)
    return model


register_variant("fcn32s_vgg16", vgg16_fcn, skips=0)
register_variant("fcn16s_vgg16", vgg16_fcn, skips=1)
register_variant("fcn8s_vgg16", vgg16_fcn, skips=2)
register_variant("fcn8s_atonce_vgg16", vgg16_fcn, skips=2, atonce=True)
