"""Shared plumbing for the model factories: variant registration, weights loading, staged init."""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass, field
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


#: the modules whose layers depend on the class count (torchvision's names, kept by every fcnkit model)
CLASSIFIER_PREFIXES = ("classifier.", "aux_classifier.")


@dataclass
class FinetuneReport:
    """What :func:`finetune_from` did: tensors copied, tensors left as built because their class count differs
    (``reinitialised``), the model's tensors the source lacks (``not_in_source``, kept as built) and the
    source's tensors the model has no place for (``unused``)."""

    source: str
    loaded: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    not_in_source: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    def format(self) -> str:
        def some(keys: list[str]) -> str:
            return ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")

        text = f"init_from {self.source}: {len(self.loaded)} tensors loaded"
        if self.reinitialised:
            text += f"; re-initialised for another class count: {some(self.reinitialised)}"
        if self.not_in_source:
            text += f"; not in the source, kept as built: {some(self.not_in_source)}"
        if self.unused:
            text += f"; in the source but not in this model: {some(self.unused)}"
        return text


@torch.no_grad()
def finetune_from(model: Segmenter, source: str | os.PathLike[str]) -> FinetuneReport:
    """Start ``model`` from the weights of another model: an fcnkit checkpoint (the weights it was evaluated
    with), ``"<model>.<weights tag>"`` (e.g. ``fcn_resnet50_d8.coco_voc``) or a torchvision / torchfcn file.

    Every tensor whose name and shape match is copied. The classifier layers (``classifier.*``,
    ``aux_classifier.*``) whose shapes differ only where this model has ``num_classes`` (another class count)
    keep this model's own initialisation; a shape that differs anywhere else is an error, as is a source that
    shares no tensor with the model. The source's preprocessing comes along (the copied weights expect it).
    """
    resolved = resolve(source, owner="")
    state = to_fcnkit_layout(resolved.state_dict, resolved.layout)
    own = model.state_dict()
    report = FinetuneReport(str(source))
    classes = model.num_classes
    for key, tensor in own.items():
        if key not in state:
            report.not_in_source.append(key)
            continue
        theirs = state[key]
        if theirs.shape == tensor.shape:
            tensor.copy_(theirs)
            report.loaded.append(key)
            continue
        differs = [i for i, (a, b) in enumerate(zip(theirs.shape, tensor.shape, strict=False)) if a != b]
        if (
            key.startswith(CLASSIFIER_PREFIXES)
            and theirs.ndim == tensor.ndim
            and differs
            and all(tensor.shape[i] == classes for i in differs)
        ):
            report.reinitialised.append(key)
            continue
        raise CheckpointError(
            f"init_from {source}: {key} has shape {tuple(theirs.shape)} in the source and {tuple(tensor.shape)} "
            "here. Only classifier layers may differ (in their class count): the source is another architecture "
            "or backbone than model.name / model.options say"
        )
    report.unused = [k for k in state if k not in own]
    if not report.loaded:
        raise CheckpointError(f"init_from {source}: the source shares no tensor with this model")
    set_metadata(model, resolved.preprocessing)
    return report


def set_metadata(model: Segmenter, preprocessing: Preprocessing | None) -> Segmenter:
    if preprocessing is not None:
        model.preprocessing = preprocessing
    return model
