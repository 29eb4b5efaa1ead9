"""Model registry and the ``create_model`` entry point."""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from . import fastfcn, resnet_fcn, timm_fcn, vgg_fcn  # noqa: F401  (fill the registry)
from .segmenter import Backbone, FeatureInfo, Segmenter
from .weights import MODEL_WEIGHTS, list_weights, resolve
from .zoo import MODELS, infer_num_classes, init_from, load_model_weights, set_metadata

__all__ = [
    "MODELS", "Backbone", "FeatureInfo", "Segmenter", "create_model", "init_from", "list_models", "list_weights",
]  # fmt: skip


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, optionally filtered by a substring or ``fnmatch`` pattern."""
    import fnmatch

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
