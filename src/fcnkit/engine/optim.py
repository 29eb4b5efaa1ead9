"""Optimiser parameter groups, optimisers and per-step learning-rate schedules.

Parameter groups split the trainable parameters by *where* they are (backbone or head) and *what* they are
(weight, bias, normalisation parameter), so that the recipes users compare against can be written as flags:

* Caffe FCN: ``bias_lr_mult=2, bias_decay=False`` (biases at twice the lr, no weight decay on them).
* torchvision / FastFCN: ``head_lr_mult=10`` (heads train 10x faster than the pretrained backbone).
* modern practice: ``norm_decay=False`` (no weight decay on BN / GN / LN scales and shifts).

Each group stores its ``"lr_mult"`` and a ``"name"``; its ``"lr"`` is ``lr * lr_mult``, and the schedulers built
here multiply every group's initial lr by the same factor, so the multipliers hold throughout training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "LRFactor",
    "build_optimizer",
    "build_scheduler",
    "param_groups",
]

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "poly", "cosine", "step")

# Normalisation layers whose affine parameters count as "norm" (no lr multiplier for their bias, optional
# decay). _NormBase covers BatchNorm*, SyncBatchNorm and InstanceNorm*; timm's norms subclass these.
_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


def _norm_param_ids(model: nn.Module) -> set[int]:
    return {id(p) for m in model.modules() if isinstance(m, _NORM_TYPES) for p in m.parameters(recurse=False)}


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    bias_lr_mult: float = 1.0,
    bias_decay: bool = True,
    norm_decay: bool = True,
    head_lr_mult: float = 1.0,
    head_names: Sequence[str] = ("neck", "classifier", "aux_classifier"),
) -> list[dict[str, Any]]:
    """Split the trainable parameters of ``model`` into optimiser groups.

    Args:
        model: a model whose head modules are attributes named in ``head_names`` (absent or ``None`` ones,
            e.g. ``aux_classifier=None``, are skipped). Every other parameter is "backbone".
        lr: base learning rate.
        weight_decay: decay of weights (and of biases / norm parameters unless switched off below).
        bias_lr_mult: lr multiplier for biases (2 in Caffe FCN). Norm-layer biases are not affected, as in
            mmcv: they are normalisation shifts, not the Caffe layer biases the recipe refers to.
        bias_decay: apply ``weight_decay`` to biases (False in Caffe FCN).
        norm_decay: apply ``weight_decay`` to normalisation-layer weights and biases.
        head_lr_mult: lr multiplier for the head parameters (10 in torchvision's and FastFCN's recipes;
            FastFCN gives the JPU neck the same 10x, hence "neck" among the default head names).
        head_names: attribute names of the head modules.

    Returns:
        Non-empty groups, in a fixed order, each ``{"params", "param_names", "name", "lr", "lr_mult",
        "weight_decay"}``; names are ``"<backbone|head>.<weight|bias|norm>"``. Parameters with
        ``requires_grad=False`` (frozen bilinear upsampling, frozen stages) are left out: an optimiser with
        weight decay would otherwise still shrink them.

    Raises:
        ValueError: ``head_lr_mult != 1`` but no head module was found (the multiplier would silently do
            nothing), or the model has no trainable parameter.
    """
    head_ids: set[int] = set()
    for attr in head_names:
        module = getattr(model, attr, None)
        if module is not None:
            head_ids.update(id(p) for p in module.parameters())
    if head_lr_mult != 1.0 and not head_ids:
        raise ValueError(f"head_lr_mult={head_lr_mult} but model has none of the head modules {tuple(head_names)}")
    norm_ids = _norm_param_ids(model)

    decay_of = {"weight": weight_decay, "bias": weight_decay if bias_decay else 0.0}
    decay_of["norm"] = weight_decay if norm_decay else 0.0
    groups: dict[str, dict[str, Any]] = {}
    for part in ("backbone", "head"):
        part_mult = head_lr_mult if part == "head" else 1.0
        for kind in ("weight", "bias", "norm"):
            mult = part_mult * (bias_lr_mult if kind == "bias" else 1.0)
            groups[f"{part}.{kind}"] = {
                "params": [],
                "param_names": [],
                "name": f"{part}.{kind}",
                "lr": lr * mult,
                "lr_mult": mult,
                "weight_decay": decay_of[kind],
            }

    # named_parameters() yields each shared (tied) parameter once, so nothing lands in two groups.
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = "head" if id(p) in head_ids else "backbone"
        if id(p) in norm_ids:
            kind = "norm"
        elif name.rsplit(".", 1)[-1] == "bias":
            kind = "bias"
        else:
            kind = "weight"
        groups[f"{part}.{kind}"]["params"].append(p)
        groups[f"{part}.{kind}"]["param_names"].append(name)

    result = [g for g in groups.values() if g["params"]]
    if not result:
        raise ValueError("model has no parameter with requires_grad=True")
    return result


def build_optimizer(
    model: nn.Module,
    name: str = "sgd",
    *,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    nesterov: bool = False,
    **group_kwargs: Any,
) -> Optimizer:
    """An SGD or AdamW optimiser over :func:`param_groups` of ``model``.

    Args:
        name: ``"sgd"`` (uses ``momentum``, ``nesterov``) or ``"adamw"`` (uses ``betas``).
        lr, weight_decay: base values; the groups scale / zero them.
        **group_kwargs: forwarded to :func:`param_groups` (``bias_lr_mult``, ``bias_decay``, ``norm_decay``,
            ``head_lr_mult``, ``head_names``).

    The Caffe FCN-32s recipe, for instance, is ``build_optimizer(model, "sgd", lr=1e-10, momentum=0.99,
    weight_decay=5e-4, bias_lr_mult=2, bias_decay=False)`` together with a *summed* loss.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    groups = param_groups(model, lr, weight_decay, **group_kwargs)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    if nesterov:
        raise ValueError("nesterov applies to 'sgd' only")
    return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=weight_decay)


@dataclass
class LRFactor:
    """The lr factor at optimiser step ``t`` (0-based): ``warmup(t) * decay(t)``.

    ``decay`` with ``T = total_steps``, ``m = min_lr_factor`` and ``s = min(t, T)``:

    * constant: ``1``
    * poly:     ``m + (1 - m) * (1 - s / T) ** power``
    * cosine:   ``m + (1 - m) * 0.5 * (1 + cos(pi * s / T))``
    * step:     ``max(m, gamma ** (t // step_size))``

    With ``progress`` set (time-budget training), ``s / T`` is replaced by ``progress``.

    ``warmup`` is linear from ``warmup_start_factor`` at ``t = 0`` to 1 at ``t = warmup_steps`` and 1 after.
    It multiplies the decay (mmcv's convention) rather than delaying it, so the decay curve is the same
    closed form with or without warmup.

    A dataclass rather than a closure so that ``LambdaLR.state_dict()`` stores the schedule's settings.
    """

    name: str
    total_steps: int | None
    warmup_steps: int = 0
    warmup_start_factor: float = 0.001
    power: float = 0.9
    min_lr_factor: float = 0.0
    step_size: int | None = None
    gamma: float = 0.1
    #: time-budget training: the fraction of the budget spent (0-1), set by the training loop before each
    #: ``scheduler.step()``. The decay then runs over the budget, ``s = progress * T``; the warm-up still
    #: counts optimiser steps.
    progress: float | None = None

    def __call__(self, t: int) -> float:
        if self.warmup_steps > 0 and t < self.warmup_steps:
            warm = self.warmup_start_factor + (1.0 - self.warmup_start_factor) * t / self.warmup_steps
        else:
            warm = 1.0
        m = self.min_lr_factor
        if self.name == "constant":
            decay = 1.0
        elif self.name == "step":
            assert self.step_size is not None
            decay = max(m, self.gamma ** (t // self.step_size))
        else:
            assert self.total_steps is not None
            if self.progress is not None:
                progress = min(max(self.progress, 0.0), 1.0)
            else:
                progress = min(t, self.total_steps) / self.total_steps
            if self.name == "poly":
                decay = m + (1.0 - m) * (1.0 - progress) ** self.power
            else:  # cosine
                decay = m + (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return warm * decay


def build_scheduler(
    optimizer: Optimizer,
    name: str = "constant",
    total_steps: int | None = None,
    warmup_steps: int = 0,
    warmup_start_factor: float = 0.001,
    power: float = 0.9,
    min_lr_factor: float = 0.0,
    step_size: int | None = None,
    gamma: float = 0.1,
) -> LambdaLR:
    """A ``LambdaLR`` implementing :class:`LRFactor`; call its ``step()`` once after every ``optimizer.step()``.

    Each group's lr is ``initial lr * factor(t)`` where the initial lr is the group's ``lr`` when the scheduler
    is built, i.e. ``lr * lr_mult`` for groups from :func:`param_groups`. The scheduler's ``state_dict()``
    round-trips (step count and schedule settings).

    Args:
        name: one of ``"constant"``, ``"poly"``, ``"cosine"``, ``"step"``.
        total_steps: number of optimiser steps, T; required by ``"poly"`` and ``"cosine"``.
        warmup_steps: length of the linear warm-up (0: none).
        warmup_start_factor: factor at step 0 of the warm-up.
        power: exponent of ``"poly"`` (0.9 in the DeepLab / FastFCN / torchvision recipes).
        min_lr_factor: floor of the decay, as a fraction of the initial lr.
        step_size, gamma: ``"step"`` multiplies by ``gamma`` every ``step_size`` steps.
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; valid: {', '.join(SCHEDULES)}")
    if name in ("poly", "cosine") and total_steps is None:
        raise ValueError(f"schedule {name!r} needs total_steps")
    if total_steps is not None and total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if name == "step" and (step_size is None or step_size < 1):
        raise ValueError(f"schedule 'step' needs step_size >= 1, got {step_size}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if not 0.0 < warmup_start_factor <= 1.0:
        raise ValueError(f"warmup_start_factor must be in (0, 1], got {warmup_start_factor}")
    if not 0.0 <= min_lr_factor <= 1.0:
        raise ValueError(f"min_lr_factor must be in [0, 1], got {min_lr_factor}")
    if power <= 0:
        raise ValueError(f"power must be > 0, got {power}")
    factor = LRFactor(name, total_steps, warmup_steps, warmup_start_factor, power, min_lr_factor, step_size, gamma)
    return LambdaLR(optimizer, factor)
