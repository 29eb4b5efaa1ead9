"""What a model argument can name, turned into a model: a checkpoint file, an ``.onnx`` export, a module,
``"<model>.<weights tag>"`` or, for benchmarks and export tests, a bare registered name (random weights)."""

from __future__ import annotations

import os

import torch
from torch import nn

from ..card import card_of
from ..checkpoint import WEIGHT_CHOICES, load_checkpoint, read_checkpoint
from ..errors import CheckpointError, ConfigError
from ..models import create_model
from ..models.weights import looks_like_path

__all__ = ["is_bare_model_name", "load_model", "model_from_spec"]


def load_model(spec: str | os.PathLike[str] | nn.Module, weights: str = "auto") -> nn.Module:
    """A model from an fcnkit checkpoint path, an ``.onnx`` file from ``fcnkit export`` (run by ONNX Runtime),
    a module, or ``"<model>.<weights tag>"`` (e.g. ``"fcn_resnet50_d8.coco_voc"``, fetched through the weights
    cache).

    ``weights`` picks the weights of a training run's ``last.pth`` (``"auto"``: those that were evaluated, the
    EMA when the run kept one; ``"ema"``; ``"raw"``); any other source holds one set, which ``"auto"`` takes and
    an explicit choice must name (see :func:`fcnkit.checkpoint.select_weights`)."""
    if weights not in WEIGHT_CHOICES:
        raise ConfigError(f"weights must be one of {', '.join(WEIGHT_CHOICES)}, got {weights!r}")
    if isinstance(spec, nn.Module):
        return _check_one_set(spec, weights, type(spec).__name__)
    text = os.fspath(spec)
    if text.endswith(".onnx"):  # a file written by `fcnkit export`, run by ONNX Runtime
        from ..export.runtime import OnnxRuntimeModel  # deferred: onnxruntime is an optional dependency

        return _check_one_set(OnnxRuntimeModel(text), weights, text)
    if looks_like_path(text):
        read_checkpoint(text)  # a clear error when the file is not an fcnkit checkpoint
        return load_checkpoint(text, weights=weights)
    name, sep, tag = text.rpartition(".")
    if not sep:
        raise ConfigError(
            f"{text!r} is neither a checkpoint file nor '<model>.<weights tag>' (see fcnkit.list_weights())"
        )
    return _check_one_set(create_model(name, weights=tag), weights, text)


def _check_one_set(model: nn.Module, weights: str, source: str) -> nn.Module:
    """A source with one set of weights: ``"auto"`` takes it, ``"ema"`` / ``"raw"`` must be what it is."""
    kind = card_of(model).weights
    if weights != "auto" and weights != kind:
        raise CheckpointError(f"{source} holds one set of weights, the {kind} ones: --weights {weights} cannot apply")
    return model


def is_bare_model_name(spec: str) -> bool:
    """``spec`` names a model to build (``fcn8s_vgg16``, ``timm:resnet18``), not a file or ``<model>.<tag>``."""
    return spec.startswith("timm:") or not (looks_like_path(spec) or "." in spec)


def model_from_spec(spec: str, num_classes: int | None = None, weights: str = "auto") -> nn.Module:
    """What the CLI tools accept as a model: a bare registered name (or ``timm:<backbone>``) is built with random
    weights seeded 0 (``num_classes``, default 21: for benchmarks and export tests); anything else goes to
    :func:`load_model` (with ``weights``), where ``num_classes`` has no meaning."""
    if is_bare_model_name(spec):
        torch.manual_seed(0)  # the same random weights on every run
        return create_model(spec, num_classes=num_classes or 21)
    if num_classes is not None:
        raise ConfigError(f"{spec}: --num-classes only applies to a bare model name (random weights)")
    return load_model(spec, weights)
