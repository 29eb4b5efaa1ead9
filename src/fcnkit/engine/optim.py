"""Optimiser parameter groups, optimisers and per-step learning-rate schedules.

Parameter groups split the trainable parameters by *where* they are (backbone or head) and *what* they are
(weight, bias, normalisation parameter), so that the recipes users compare against can be written as flags:

* Caffe FCN: ``bias_lr_mult=2, bias_decay=False`` (biases at twice the lr, no weight decay on them).
* torchvision / FastFCN: ``head_lr_mult=10`` (heads train 10x faster than the pretrained backbone).
* modern practice: ``norm_decay=False`` (no weight decay on BN / GN / LN scales and shifts).

Each group stores its ``"lr_mult"`` and a ``"name"``; its ``"lr"`` is ``lr * lr_mult``, and the schedulers built
here multiply every group's initial lr by the same factor, so the multipliers hold throughout training.

Both builders take their config section whole (``build_optimizer(model, cfg.optim)``,
``build_scheduler(optimizer, cfg.schedule, total_steps=...)``), or a name and keyword arguments with the
same names as the section's keys.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from ..config import OptimConfig, OptimizerName, ScheduleConfig, ScheduleName, choices, validate_schedule
from .clock import BudgetClock

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "LRFactor",
    "ScheduledLR",
    "build_optimizer",
    "build_scheduler",
    "param_groups",
]

#: the values of ``optim.name`` and ``schedule.name`` (one list each, in :mod:`fcnkit.config`)
OPTIMIZERS: tuple[str, ...] = choices(OptimizerName)
SCHEDULES: tuple[str, ...] = choices(ScheduleName)

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
    optim: OptimConfig | str = "sgd",
    *,
    head_names: Sequence[str] = ("neck", "classifier", "aux_classifier"),
    **settings: Any,
) -> Optimizer:
    """An SGD or AdamW optimiser over :func:`param_groups` of ``model``.

    Args:
        optim: an ``optim:`` config section, or the optimiser's name with its settings as keyword arguments:
            ``"sgd"`` (uses ``momentum``, ``nesterov``) or ``"adamw"`` (uses ``betas``).
        head_names: attribute names of the head modules (see :func:`param_groups`).
        **settings: with a name, the :class:`~fcnkit.config.OptimConfig` keys: ``lr`` (required),
            ``weight_decay`` (default 0 here), ``momentum``, ``betas``, ``nesterov`` and the group settings
            ``bias_lr_mult``, ``bias_decay``, ``norm_decay``, ``head_lr_mult``.

    The Caffe FCN-32s recipe, for instance, is ``build_optimizer(model, "sgd", lr=1e-10, momentum=0.99,
    weight_decay=5e-4, bias_lr_mult=2, bias_decay=False)`` together with a *summed* loss.
    """
    if isinstance(optim, str):
        if "lr" not in settings:
            raise TypeError("build_optimizer() with an optimiser name needs lr=")
        optim = OptimConfig(name=optim, **{"weight_decay": 0.0, **settings})  # type: ignore[arg-type]
    elif settings:
        raise TypeError(f"build_optimizer() takes settings from the OptimConfig, not also {sorted(settings)}")
    o = optim
    if o.name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {o.name!r}; valid: {', '.join(OPTIMIZERS)}")
    groups = param_groups(
        model,
        o.lr,
        o.weight_decay,
        bias_lr_mult=o.bias_lr_mult,
        bias_decay=o.bias_decay,
        norm_decay=o.norm_decay,
        head_lr_mult=o.head_lr_mult,
        head_names=head_names,
    )
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov)
    if o.nesterov:
        raise ValueError("nesterov applies to 'sgd' only")
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)


@dataclass
class LRFactor:
    """The lr factor at optimiser step ``t`` (0-based): ``warmup(t) * decay(t)``.

    ``decay`` with ``T = total_steps``, ``m = min_lr_factor`` and ``s = min(t, T)``:

    * constant: ``1``
    * poly:     ``m + (1 - m) * (1 - s / T) ** power``
    * cosine:   ``m + (1 - m) * 0.5 * (1 + cos(pi * s / T))``
    * step:     ``max(m, gamma ** (t // step_size))``

    With a ``clock`` (time-budget training), ``s / T`` is replaced by the fraction of the budget it has spent,
    :meth:`BudgetClock.fraction_spent`; the warm-up still counts optimiser steps.

    ``warmup`` is linear from ``warmup_start_factor`` at ``t = 0`` to 1 at ``t = warmup_steps`` and 1 after.
    It multiplies the decay (mmcv's convention) rather than delaying it, so the decay curve is the same
    closed form with or without warmup.

    A dataclass rather than a closure so that the scheduler's ``state_dict()`` stores the schedule's settings
    (:class:`ScheduledLR` leaves the clock out: it is state of the run, not of the schedule). The fields other
    than ``total_steps`` and ``clock`` are keys of :class:`~fcnkit.config.ScheduleConfig`, of the same names.
    """

    name: str
    total_steps: int | None
    warmup_steps: int = 0
    warmup_start_factor: float = 0.001
    power: float = 0.9
    min_lr_factor: float = 0.0
    step_size: int | None = None
    gamma: float = 0.1
    clock: BudgetClock | None = dataclasses.field(default=None, repr=False, compare=False)

    @classmethod
    def from_config(
        cls, schedule: ScheduleConfig, total_steps: int | None, clock: BudgetClock | None = None
    ) -> LRFactor:
        """The factor of a ``schedule:`` config section (epochs / iterations / budget_minutes aside)."""
        shared = {f.name for f in dataclasses.fields(cls)} & {f.name for f in dataclasses.fields(schedule)}
        return cls(total_steps=total_steps, clock=clock, **{k: getattr(schedule, k) for k in shared})

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
            if self.clock is not None:
                progress = self.clock.fraction_spent()
            else:
                assert self.total_steps is not None
                progress = min(t, self.total_steps) / self.total_steps
            if self.name == "poly":
                decay = m + (1.0 - m) * (1.0 - progress) ** self.power
            else:  # cosine
                decay = m + (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return warm * decay


class ScheduledLR(LambdaLR):
    """A ``LambdaLR`` over :class:`LRFactor` s whose ``state_dict()`` holds the step count and the settings.

    The factors' clock is left out of the state (the run restores its own clock) and a ``progress`` entry,
    which checkpoints of earlier versions hold (the budget fraction, then set by the loop), is ignored.
    """

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["lr_lambdas"] = [_settings_only(d) for d in state["lr_lambdas"]]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict({**state_dict, "lr_lambdas": [_settings_only(d) for d in state_dict["lr_lambdas"]]})


def _settings_only(factor_state: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if factor_state is None else {k: v for k, v in factor_state.items() if k not in ("clock", "progress")}


def build_scheduler(
    optimizer: Optimizer,
    schedule: ScheduleConfig | str = "constant",
    total_steps: int | None = None,
    *,
    clock: BudgetClock | None = None,
    **settings: Any,
) -> ScheduledLR:
    """A ``LambdaLR`` implementing :class:`LRFactor`; call its ``step()`` once after every ``optimizer.step()``.

    Each group's lr is ``initial lr * factor(t)`` where the initial lr is the group's ``lr`` when the scheduler
    is built, i.e. ``lr * lr_mult`` for groups from :func:`param_groups`. The scheduler's ``state_dict()``
    round-trips (step count and schedule settings).

    Args:
        schedule: a ``schedule:`` config section, or the schedule's name, one of ``"constant"``, ``"poly"``,
            ``"cosine"``, ``"step"``, with its settings as keyword arguments of the section's names:
            ``warmup_steps`` (linear warm-up length, 0: none), ``warmup_start_factor`` (factor at step 0 of the
            warm-up), ``power`` (of ``"poly"``: 0.9 in the DeepLab / FastFCN / torchvision recipes),
            ``min_lr_factor`` (floor of the decay, as a fraction of the initial lr), ``step_size`` and ``gamma``
            (``"step"`` multiplies by ``gamma`` every ``step_size`` steps).
        total_steps: number of optimiser steps, T; required by ``"poly"`` and ``"cosine"`` without a clock.
        clock: time-budget training: ``"poly"`` and ``"cosine"`` decay over the fraction of the clock's budget
            spent instead of over steps (:meth:`BudgetClock.mark` before each ``step()`` takes the reading).
    """
    if isinstance(schedule, str):
        schedule = ScheduleConfig(name=schedule, **settings)  # type: ignore[arg-type]
    elif settings:
        raise TypeError(f"build_scheduler() takes settings from the ScheduleConfig, not also {sorted(settings)}")
    s = schedule
    if s.name not in SCHEDULES:
        raise ValueError(f"unknown schedule {s.name!r}; valid: {', '.join(SCHEDULES)}")
    if s.name in ("poly", "cosine") and total_steps is None and clock is None:
        raise ValueError(f"schedule {s.name!r} needs total_steps")
    if total_steps is not None and total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    validate_schedule(s)
    return ScheduledLR(optimizer, LRFactor.from_config(s, total_steps, clock))
