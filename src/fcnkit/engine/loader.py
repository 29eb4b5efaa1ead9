"""The training data: augmentation seeded per sample, unreadable samples raised or left out, the loader.

``data.on_error`` decides what a sample that cannot be read does (a :class:`~fcnkit.errors.DataError` from
the dataset: corrupt image, missing or bad label):

* ``raise``: training stops with the file's name and the command that lists every bad file of the split;
* ``skip``: the sample is left out of its batch (a batch of bad samples only trains nothing) and the
  batch says which files were left out; :class:`SkippedSamples` warns once per file and counts them.

Both work the same with loader workers: the wrapper runs inside the worker processes, and what it returns
for a bad sample is a plain dict that travels back with the batch.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ..config import DataConfig
from ..data import pad_collate
from ..errors import DataError
from .distributed import DistInfo, ResumableSampler, gather_objects

__all__ = ["AugmentedSamples", "SkippedSamples", "build_train_loader", "check_command", "train_collate"]


def check_command(data: DataConfig) -> str:
    """The ``fcnkit data check`` command line for the training split of ``data`` (its options included)."""
    options = "".join(
        f" --option '{key}={json.dumps(value, separators=(',', ':'))}'" for key, value in data.options.items()
    )
    return f"fcnkit data check {data.name} --root {data.root} --split {data.train_split}{options}"


class AugmentedSamples(Dataset):
    """Applies the training transform with randomness seeded by (seed, epoch, index).

    Per-sample seeding makes augmentation independent of worker count and of where a run was resumed,
    and keeps the global RNG (dropout) untouched by data loading.

    A sample whose loading raises :class:`DataError` is re-raised with ``hint`` appended
    (``on_error="raise"``), or returned as ``{"skipped": {"path": ..., "error": ...}}`` (``"skip"``).
    """

    def __init__(
        self, base: Dataset, transform: Callable[[dict], dict], seed: int, on_error: str = "raise", hint: str = ""
    ) -> None:
        self.base, self.transform, self.seed, self.epoch = base, transform, seed, 0
        self.on_error, self.hint = on_error, hint

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        try:
            sample = self.base[i]
        except DataError as e:
            if self.on_error != "skip":
                raise DataError(f"{e}. {self.hint}" if self.hint else str(e)) from e
            return {"skipped": {"path": self.path_of(i), "error": str(e)}}
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed would also queue a seed for every CUDA device, which on
            # a CUDA build without a GPU formats a stack trace each time (0.8 ms a sample, 5 % of a CPU step)
            torch.default_generator.manual_seed(hash((self.seed, self.epoch, i)) % (2**63))
            return self.transform(sample)

    def path_of(self, i: int) -> str:
        """The file that names sample ``i`` (its image), or its index when the dataset lists no files."""
        samples = getattr(self.base, "samples", None)
        image = getattr(samples[i], "image", None) if samples is not None else None
        return str(image) if image is not None else f"sample {i}"


def train_collate(batch: Sequence[dict[str, Any]], ignore_index: int) -> dict[str, Any]:
    """:func:`~fcnkit.data.pad_collate` of the readable samples, plus ``"skipped"``: the others' ``{path, error}``.

    A batch without a readable sample has no ``"image"`` key.
    """
    good = [s for s in batch if "skipped" not in s]
    out = pad_collate(good, ignore_index=ignore_index) if good else {}
    out["skipped"] = [s["skipped"] for s in batch if "skipped" in s]
    return out


def build_train_loader(
    dataset: Dataset, transform: Callable[[dict], dict], data: DataConfig, seed: int, info: DistInfo, pin_memory: bool
) -> tuple[AugmentedSamples, ResumableSampler, DataLoader]:
    """The augmented training set, its resumable (and rank-sharded) sampler, and the loader over both."""
    hint = (
        f"To list every bad file of the split at once: {check_command(data)}; or set data.on_error=skip "
        "to train without them"
    )
    augmented = AugmentedSamples(dataset, transform, seed, on_error=data.on_error, hint=hint)
    sampler = ResumableSampler(len(dataset), shuffle=True, seed=seed, rank=info.rank, world_size=info.world_size)
    loader = DataLoader(
        augmented,
        batch_size=data.batch_size,
        sampler=sampler,
        num_workers=data.workers,
        collate_fn=functools.partial(train_collate, ignore_index=dataset.ignore_index),
        drop_last=len(sampler) >= data.batch_size,
        pin_memory=pin_memory,
        generator=torch.Generator(),  # keeps the global RNG (dropout) out of data loading
    )
    return augmented, sampler, loader


class SkippedSamples:
    """The samples ``data.on_error=skip`` left out: a warning the first time each file is skipped, and the
    list of one epoch (every rank's) for the run's ``metrics.jsonl``."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.warned: set[str] = set()
        self.this_epoch: list[str] = []

    def add(self, skipped: Sequence[dict[str, str]]) -> None:
        for item in skipped:
            path = item["path"]
            self.this_epoch.append(path)
            if path not in self.warned:
                self.warned.add(path)
                self.logger.warning(f"skipped unreadable training sample {path} (data.on_error=skip): {item['error']}")

    def take_epoch(self, info: DistInfo) -> list[str]:
        """This epoch's skipped files on every rank (a collective under ``torchrun``), and a fresh list."""
        paths, self.this_epoch = self.this_epoch, []
        return [p for rank_paths in gather_objects(paths, info) for p in rank_paths]
