"""Shared plumbing for the model factories: variant registration, weights loading, staged init."""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import CheckpointError
from ..preprocessing import Preprocessing
from ..registry import Registry
from .segmenter import Segmenter
from .weights import ResolvedWeights, detect_layout, resolve, torchfcn_to_fcnkit

MODELS: Registry[Segmenter] = Registry("model")


def register_variant(name: str, builder: Callable[..., Segmenter], **fixed: Any) -> None:
    """Register ``builder`` with some arguments fixed, exposing only the remaining ones as options.

    The partial gets the builder's signature minus the fixed arguments, so option checking and
    ``help()`` show exactly what a user may pass for this name.
    """
    fn = functools.partial(builder, **fixed)
    sig = inspect.signature(builder)
    fn.__signature__ = sig.replace(parameters=[p for p in sig.parameters.values() if p.name not in fixed])
    fn.__doc__ = builder.__doc__
    MODELS.register(name)(fn)


def to_fcnkit_layout(state_dict: dict[str, Tensor], layout: str | None = None) -> dict[str, Tensor]:
    layout = layout or detect_layout(state_dict)
    if layout == "torchfcn":
        return torchfcn_to_fcnkit(state_dict)
    if layout in ("fcnkit", "torchvision_segmentation"):
        return state_dict
    raise CheckpointError(f"a {layout} state dict holds backbone weights only: pass it as backbone_weights=")


def load_model_weights(model: nn.Module, weights: ResolvedWeights) -> None:
    """Strictly load whole-model weights (any supported layout) into ``model``.

    Aux-head weights are dropped when the model was built without an aux head (torchvision's published
    checkpoints always carry one).
    """
    state = to_fcnkit_layout(weights.state_dict, weights.layout)
    if getattr(model, "aux_classifier", None) is None:
        state = {k: v for k, v in state.items() if not k.startswith("aux_classifier.")}
    own = model.state_dict()
    for k, v in state.items():
        if k in own and own[k].shape != v.shape:
            raise CheckpointError(
                f"{weights.source}: {k} has shape {tuple(v.shape)} but the model expects {tuple(own[k].shape)}"
                " (a different num_classes or architecture?)"
            )
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{weights.source} does not fit this model: missing {result.missing_keys[:8]}"
            f"{'...' if len(result.missing_keys) > 8 else ''}, unexpected {result.unexpected_keys[:8]}"
            f"{'...' if len(result.unexpected_keys) > 8 else ''}"
        )


def infer_num_classes(weights: ResolvedWeights) -> int | None:
    if weights.classes:
        return len(weights.classes)
    state = to_fcnkit_layout(weights.state_dict, weights.layout)
    for key in ("classifier.score_fr.weight", "classifier.4.weight"):
        if key in state:
            return int(state[key].shape[0])
    return None


@torch.no_grad()
def init_from(model: Segmenter, source: nn.Module | str | os.PathLike[str]) -> list[str]:
    """Staged initialisation: copy every same-named tensor of ``source`` into ``model``.

    FCN-16s starts from a trained FCN-32s and FCN-8s from an FCN-16s this way: the backbone and
    ``score_fr`` are copied, the new score layers keep their zero init and the upsamplers their bilinear
    init. The source's preprocessing comes along. Returns the copied keys. A same-named tensor with
    another shape is an error.
    """
    if isinstance(source, nn.Module):
        src = source.state_dict()
        set_metadata(model, getattr(source, "preprocessing", None))
    else:
        resolved = resolve(source, owner="")
        src = to_fcnkit_layout(resolved.state_dict, resolved.layout)
        set_metadata(model, resolved.preprocessing)
    own = model.state_dict()
    copied = []
    for k, v in src.items():
        if k not in own:
            continue
        if own[k].shape != v.shape:
            raise CheckpointError(
                f"init_from: {k} has shape {tuple(v.shape)} in the source, {tuple(own[k].shape)} here"
            )
        own[k].copy_(v)
        copied.append(k)
    if not copied:
        raise CheckpointError("init_from: the source shares no parameter names with this model")
    return copied


def set_metadata(model: Segmenter, preprocessing: Preprocessing | None) -> Segmenter:
    if preprocessing is not None:
        model.preprocessing = preprocessing
    return model
