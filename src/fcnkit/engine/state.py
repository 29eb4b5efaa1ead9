"""Where a run stands: the counters a checkpoint records, and every random number generator's state.

``last.pth`` holds them under ``"progress"`` (:meth:`TrainState.state_dict`) and ``"rng"``; together with the
model, optimiser, scheduler, grad scaler and EMA they are all a resumed run needs to continue exactly where the
killed one stopped.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .distributed import DistInfo, gather_objects

__all__ = ["TrainState", "gather_rng_states", "rng_state", "set_rng_state"]


@dataclass
class TrainState:
    """The position of a run, over every invocation of it."""

    #: optimiser steps made
    step: int = 0
    #: epochs completed (0-based index of the current epoch)
    epoch: int = 0
    #: batches of the current epoch already consumed (the position in the epoch)
    batches_done: int = 0
    #: best validation mIoU so far (0-1), None before the first evaluation
    best_miou: float | None = None
    #: training wall-clock (evaluation and checkpoints excluded), seconds
    train_seconds: float = 0.0
    #: training images this process has trained on
    images_seen: int = 0
    #: the epoch the ``data.finish_*`` augmentation started at, None before
    finish_epoch: int | None = None

    def state_dict(self) -> dict[str, Any]:
        """The ``"progress"`` entry of a checkpoint (its keys are those of every fcnkit version so far)."""
        return {
            "step": self.step,
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "best_miou": self.best_miou,
            "train_time": self.train_seconds,
            "images_seen": self.images_seen,
            "finish_epoch": self.finish_epoch,
        }

    def load_state_dict(self, progress: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output; checkpoints older than the clock, the image count or the finish start those at 0 / None."""
        self.step = int(progress["step"])
        self.epoch = int(progress["epoch"])
        self.batches_done = int(progress["batches_done"])
        self.best_miou = progress["best_miou"]
        self.train_seconds = float(progress.get("train_time", progress.get("train_seconds", 0.0)))
        self.images_seen = int(progress.get("images_seen", 0))
        self.finish_epoch = progress.get("finish_epoch")


def rng_state() -> dict[str, Any]:
    """This process's torch, Python, numpy (and CUDA) generator states, in types ``weights_only`` loading accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    # numpy's state as plain lists: weights_only loading accepts no ndarray
    numpy_state = [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)]
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": numpy_state}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng_states(info: DistInfo) -> dict[str, Any] | list[dict[str, Any]]:
    """Every rank's RNG state (rank 0 stores the list, so each rank resumes with its own)."""
    states = gather_objects(rng_state(), info)
    return states if info.enabled else states[0]


def rank_rng_state(stored: dict[str, Any] | list[dict[str, Any]], info: DistInfo) -> dict[str, Any]:
    """This rank's entry of what :func:`gather_rng_states` stored."""
    return stored[info.rank] if isinstance(stored, list) else stored
