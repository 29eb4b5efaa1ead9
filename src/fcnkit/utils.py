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

__all__ = ["AMP_DTYPES", "Parity", "as_pair", "compare_logits", "eval_mode", "require", "resolve_device", "tune_malloc"]

#: The autocast dtype of each mixed-precision mode (training's ``amp``, ``optimize_for_inference(amp=...)``).
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> ``cuda`` when torch sees a GPU, else ``cpu``; any other name as ``torch.device(name)``."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


#: glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def tune_malloc(mmap_threshold: int = 32 * 2**20, trim_threshold: int = 2**30) -> bool:
    """Make glibc's malloc keep the memory of freed tensors for the next step; True when it was applied.

    By default glibc serves every block above an adaptive threshold (128 KiB at first) with a fresh ``mmap``
    and returns it to the OS when freed, and trims the heap's free top above 128 KiB. A training step frees
    and re-allocates the same activation sizes every time, so each step touches new pages: tens of thousands
    of page faults per step, costly on virtual machines. Raising both thresholds (``mmap`` only above 32 MiB,
    glibc's maximum on 64-bit; trim only above 1 GiB free) lets freed blocks be reused, the effect the PyTorch
    CPU tuning guide gets from jemalloc or tcmalloc, without preloading a library. The process keeps up to
    ``trim_threshold`` bytes of freed memory. Anything but glibc (macOS, Windows, musl) is left as it is.
    """
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold)
        )
    except (OSError, AttributeError):
        return False


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
