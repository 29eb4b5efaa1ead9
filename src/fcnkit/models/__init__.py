"""The models: ``create_model``, ``list_models``, the registry and its one-line family descriptions.

What lives where: ``segmenter.py`` (the one forward contract: backbone -> optional neck -> head(s) -> one resize),
``backbones/`` (``vgg.py`` with the Caffe geometry, ``resnet.py`` with dilation, ``timm.py``), ``heads/``
(``fcn.py``: FCNHead and the FCN-32s/16s/8s skip head; ``encnet.py``, ``psp.py``, ``aspp.py``), ``necks/jpu.py``
(FastFCN's JPU and JPU_X), the factories (``vgg_fcn.py``, ``resnet_fcn.py``, ``timm_fcn.py``, ``fastfcn.py``),
``zoo.py`` (registration, whole-model weights loading, staged init) and ``weights.py`` (published weights as
data; torchfcn / torchvision key maps). Layer: above the base (registry, config, preprocessing, hub), below
checkpoint, inference and everything else.
"""

from __future__ import annotations

import fnmatch
import os
from typing import Any

import torch
from torch import nn

from . import fastfcn, resnet_fcn, timm_fcn, vgg_fcn  # noqa: F401  (fill the registry)
from .segmenter import Backbone, FeatureInfo, Segmenter
from .weights import MODEL_WEIGHTS, list_weights, resolve
from .zoo import MODELS, FinetuneReport, finetune_from, infer_num_classes, init_from, load_model_weights, set_metadata

__all__ = [
    "MODELS",
    "Backbone",
    "FeatureInfo",
    "FinetuneReport",
    "Segmenter",
    "count_parameters",
    "create_model",
    "describe_model",
    "finetune_from",
    "init_from",
    "list_models",
    "list_weights",
]

_FASTFCN_HEADS = {
    "enc": "EncNet (context encoding)",
    "psp": "PSPNet (pyramid pooling)",
    "deeplabv3": "DeepLabV3 (ASPP)",
}
_FASTFCN_NECKS = {
    "jpu": "on a stride-32 ResNet + JPU (FastFCN)",
    "jpux": "on a stride-32 ResNet + JPU_X (FastFCN)",
    "d8": "on a dilated ResNet, output stride 8 (FastFCN's baseline)",
}
#: (fnmatch pattern, one-line description) of the registered families; the first matching pattern wins.
MODEL_FAMILIES: tuple[tuple[str, str], ...] = (
    *(
        (f"{head}_resnet*_{neck}", f"{head_text} {neck_text}")
        for head, head_text in _FASTFCN_HEADS.items()
        for neck, neck_text in _FASTFCN_NECKS.items()
    ),
    ("*_atonce_vgg16", "VGG16 FCN-8s trained at once (pool4 x0.01, pool3 x0.0001), Caffe geometry"),
    ("*_vgg16", "VGG16 FCN, Caffe geometry (pad 100, ceil pools, fixed crops)"),
    ("*_timm", "any timm features_only backbone (backbone=...)"),
    ("*_d8", "FCNHead on a dilated ResNet, output stride 8 (torchvision form)"),
    ("*_d16", "FCNHead on a dilated ResNet, output stride 16"),
)


def describe_model(name: str) -> str:
    """A one-line description of a registered model's family (empty when no family pattern matches)."""
    return next((text for pattern, text in MODEL_FAMILIES if fnmatch.fnmatchcase(name, pattern)), "")


def count_parameters(name: str, num_classes: int = 21) -> int:
    """Parameters of ``create_model(name, num_classes)``, frozen ones included, counted on the ``meta`` device
    (shapes only: no memory and no initialisation cost)."""
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes)
    return sum(p.numel() for p in model.parameters())


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, optionally filtered by a substring or ``fnmatch`` pattern."""
    names = MODELS.names()
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern) or pattern in n]
    return names


def create_model(
    name: str,
    num_classes: int | None = None,
    weights: str | os.PathLike[str] | None = None,
    **options: Any,
) -> Segmenter:
    """Build a registered model by name.

    Args:
        name: a name from ``list_models()``, e.g. ``"fcn8s_vgg16"``, ``"fcn_resnet50_d8"``,
            ``"fcn8s_timm"``; or ``"timm:<backbone>"`` (skip head chosen with ``head=``, default fcn8s).
        num_classes: output classes; taken from ``weights`` when given, else 21 (PASCAL VOC).
        weights: whole-model weights: a declared tag (``"voc_caffe"``, ``"coco_voc"``; see
            ``list_weights()``) or a file (fcnkit checkpoint, torchvision or torchfcn state dict).
        **options: the factory's options (``aux``, ``upsample``, ``backbone``, ``backbone_weights`` ...).
            An unknown option is an error listing the close matches.

    Returns:
        A ``Segmenter``: ``model(x)`` maps preprocessed ``(B, 3, H, W)`` images to
        ``{"out": (B, num_classes, H, W)}`` (+ ``"aux"`` when built with an aux head).
        ``model.preprocessing`` says how to turn RGB pixels into ``x``.
    """
    if name.startswith("timm:"):
        options.setdefault("backbone", name.removeprefix("timm:"))
        name = f"{options.pop('head', 'fcn8s')}_timm"
    MODELS.get(name)  # an unknown name fails here, with suggestions, before any weights are read
    resolved = resolve(weights, owner=name) if weights is not None else None
    if num_classes is None:
        num_classes = (infer_num_classes(resolved) if resolved else None) or 21
    model = MODELS.build(name, num_classes=num_classes, **options)
    model.arch = {"name": name, "num_classes": num_classes, "options": _plain_options(options)}
    if resolved is not None:
        load_model_weights(model, resolved)
        set_metadata(model, resolved.preprocessing)
        if resolved.classes:
            model.classes = list(resolved.classes)
    return model


def _plain_options(options: dict[str, Any]) -> dict[str, Any]:
    """Options worth storing to rebuild the architecture (weights sources are not: the state dict is)."""
    skip = {"backbone_weights", "init_from"}
    out = {}
    for k, v in options.items():
        if k in skip or isinstance(v, nn.Module):
            continue
        out[k] = os.fspath(v) if isinstance(v, os.PathLike) else v
    return out


assert MODEL_WEIGHTS.keys() <= set(MODELS.names()), "weights declared for an unregistered model"
