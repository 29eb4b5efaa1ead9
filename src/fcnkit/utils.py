"""Small torch helpers shared by every layer: device names, eval mode, size pairs, optional imports, parity.

Base layer: imports nothing of fcnkit but :mod:`fcnkit.errors`.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType

import torch
from torch import Tensor, nn

from .errors import ConfigError, MissingDependencyError

__all__ = ["AMP_DTYPES", "Parity", "as_pair", "compare_logits", "eval_mode", "require", "resolve_device"]

#: The autocast dtype of each mixed-precision mode (training's ``amp``, ``optimize_for_inference(amp=...)``).
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> ``cuda`` when torch sees a GPU, else ``cpu``; any other name as ``torch.device(name)``."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for the block; its train/eval mode is restored afterwards, also on errors."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def as_pair(value: int | Sequence[int], what: str = "size") -> tuple[int, int]:
    """``N``, ``[N]`` or ``[H, W]`` -> ``(H, W)``; anything else is a :class:`ConfigError` naming ``what``."""
    if isinstance(value, int):
        return value, value
    values = [int(v) for v in value]
    if len(values) not in (1, 2):
        raise ConfigError(f"{what} must be N, [N] or [H, W], got {list(value)}")
    return values[0], values[-1]


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import an optional dependency, or raise :class:`MissingDependencyError` saying what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(
            f"{purpose} needs {module!r}, which is not installed: pip install 'fcnkit[{extra}]'"
        ) from e


@dataclass(frozen=True)
class Parity:
    """How far ``got`` is from ``expected``: logits ``(B, C, H, W)`` of the same images."""

    max_abs_diff: float
    max_abs_logit: float
    argmax_agreement: float  # fraction of pixels, 0-1

    def passed(self, atol: float, rtol: float, min_agreement: float = 0.999, exact_logits: bool = True) -> bool:
        """Arg-max agreement of at least ``min_agreement`` and, with ``exact_logits``, ``|diff| <= atol +
        rtol * max|logit|``."""
        close = self.max_abs_diff <= atol + rtol * self.max_abs_logit
        return self.argmax_agreement >= min_agreement and (close or not exact_logits)


def compare_logits(expected: Tensor, got: Tensor) -> Parity:
    """The figures of :class:`Parity` for two float logit tensors of the same shape."""
    expected, got = expected.float(), got.float().to(expected.device)
    return Parity(
        max_abs_diff=float((expected - got).abs().max()),
        max_abs_logit=float(expected.abs().max()),
        argmax_agreement=float((expected.argmax(1) == got.argmax(1)).float().mean()),
    )
