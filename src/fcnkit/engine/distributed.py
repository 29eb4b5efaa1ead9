"""Process-group set-up for ``torchrun`` and a resumable, rank-sharded sampler."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group when launched by ``torchrun`` (gloo on CPU, NCCL on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


@torch.no_grad()
def broadcast_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Give every rank rank 0's buffers (BN running statistics).

    DDP broadcasts buffers at the start of each forward, so after the last training step each rank holds
    statistics updated by its own last batch. Evaluating shards with different statistics would not
    match the checkpoint rank 0 writes.
    """
    if info.enabled:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def broadcast_from_main(value: float, info: DistInfo, device: torch.device) -> float:
    """Rank 0's ``value`` on every rank (e.g. a clock reading: the clocks of the ranks differ a little)."""
    if not info.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return float(tensor)


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` in a single process)."""
    if not info.enabled:
        return [obj]
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


class ResumableSampler(Sampler[int]):
    """A ``DistributedSampler`` that can start in the middle of an epoch.

    Epoch ``e`` visits the permutation drawn from ``seed + e`` (the same on every rank), padded by
    repetition to a multiple of the world size and dealt out round-robin: rank ``r`` takes positions
    ``r, r + W, ...``. ``set_epoch(e, start)`` skips the first ``start`` indices of this rank's share, which
    is how a resumed run continues exactly where the killed one stopped.
    """

    def __init__(self, size: int, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _share(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        total = -(-self.size // self.world_size) * self.world_size
        order += order[: total - len(order)]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._share()[self.start :])

    def __len__(self) -> int:
        return max(0, -(-self.size // self.world_size) - self.start)


def shard_indices(size: int, info: DistInfo) -> list[int]:
    """Evaluation shard of this rank: every index exactly once across ranks (no padding duplicates)."""
    return list(range(info.rank, size, info.world_size))
