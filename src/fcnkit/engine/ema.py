"""Exponential moving average of model weights, evaluated in place of the raw weights."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

__all__ = ["ModelEMA"]


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel / DataParallel / ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


class ModelEMA:
    """Keeps ``ema = d * ema + (1 - d) * weights`` after every optimiser step.

    Args:
        model: the model being trained; a deep copy becomes :attr:`module` (eval mode, no gradients).
        decay: the decay ``d`` (0.999 ~ an average over the last ~1000 steps).
        warmup_steps: if > 0, during the first ``warmup_steps`` updates the decay is
            ``min(decay, (1 + n) / (10 + n))`` with ``n`` the number of updates already done (TensorFlow's
            ``ExponentialMovingAverage(num_updates=...)`` ramp). Early on the average then follows the fast
            moving weights instead of staying anchored to the initialisation. The ramp reaches 0.999 at
            ``n ~ 9000``; a shorter warm-up ends the low-decay phase earlier, a longer one changes nothing.

    Floating-point parameters are averaged. Buffers (BatchNorm running statistics, ``num_batches_tracked``)
    are copied as they are: they are already running averages, and averaging them again would make the
    statistics lag behind the weights they normalise.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup_steps: int = 0) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.decay = decay
        self.warmup_steps = warmup_steps
        self.updates = 0
        self.module = copy.deepcopy(_unwrap(model)).eval()
        self.module.requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next :meth:`update` will use."""
        if self.warmup_steps > 0 and self.updates < self.warmup_steps:
            return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current weights of ``model`` (same architecture; may be DDP/compiled-wrapped) into the average."""
        d = self.current_decay()
        model = _unwrap(model)
        params = dict(model.named_parameters())
        for name, ema_p in self.module.named_parameters():
            p = params[name].detach()
            if ema_p.is_floating_point():
                # lerp_(p, 1 - d) == d * ema + (1 - d) * p, in place.
                ema_p.lerp_(p.to(ema_p.dtype), 1.0 - d)
            else:
                ema_p.copy_(p)
        buffers = dict(model.named_buffers())
        for name, ema_b in self.module.named_buffers():
            ema_b.copy_(buffers[name])
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        """``{"module": averaged weights, "updates": number of updates}`` (what resuming needs)."""
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output; ``decay`` and ``warmup_steps`` keep their constructor values."""
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
