"""Building a training run: everything the loop needs, made once from the config before the first step.

:func:`build_run` joins the process group, seeds, builds the datasets, the model, the augmentation and the
loader, the loss, the optimiser and its schedule, the grad scaler, the EMA and the wrapped network (SyncBN,
DDP, ``torch.compile``), and the clock of a time budget. Nothing here trains; :mod:`fcnkit.engine.train` runs
what this builds.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..config import AmpMode, DataConfig, TrainConfig, to_dict
from ..data import (
    SegmentationDataset,
    TrainTransform,
    build_dataset,
    check_dataset,
    label_report,
    label_traps,
    shared_groups,
)
from ..data.mixing import BatchMixer
from ..errors import ConfigError, DataError
from ..losses import SegmentationLoss, class_weights_from_counts
from ..models import create_model, finetune_from
from ..progress import Progress, get_logger
from ..utils import AMP_DTYPES, require, resolve_device, tune_malloc
from .clock import BudgetClock
from .distributed import DistInfo, ResumableSampler, barrier, broadcast_from_main, init_distributed
from .ema import ModelEMA
from .loader import AugmentedSamples, SkippedSamples, build_train_loader, check_command
from .optim import build_optimizer, build_scheduler

__all__ = ["Run", "RunPaths", "build_run", "config_differences", "resolve_class_weights", "run_directory"]

log = get_logger("train")


@dataclass(frozen=True)
class RunPaths:
    """The files of a run directory."""

    run_dir: Path
    last: Path
    best: Path
    log: Path

    @classmethod
    def of(cls, run_dir: str | Path) -> RunPaths:
        run_dir = Path(run_dir)
        return cls(run_dir, run_dir / "last.pth", run_dir / "best.pth", run_dir / "metrics.jsonl")


@dataclass
class Run:
    """A training run, built and not yet started (see :func:`build_run`)."""

    cfg: TrainConfig
    dist: DistInfo
    device: torch.device
    paths: RunPaths
    train_set: SegmentationDataset
    val_set: SegmentationDataset
    train_data: AugmentedSamples
    sampler: ResumableSampler
    loader: DataLoader
    #: batches of a whole epoch (the loader's length changes while a resumed epoch is partly consumed)
    batches_per_epoch: int
    #: the run's optimiser steps and epochs; None when the time budget ends it instead
    total_steps: int | None
    epochs: int | None
    model: nn.Module
    #: ``model`` as trained: SyncBN-converted, DDP-wrapped and compiled as the config says
    net: nn.Module
    criterion: SegmentationLoss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    ema: ModelEMA | None
    amp_dtype: torch.dtype | None
    clock: BudgetClock
    skipped: SkippedSamples
    #: Mosaic / CutMix / MixUp of training batches (``data.mosaic`` / ``cutmix`` / ``mixup``)
    mixer: BatchMixer
    #: the augmentation of the run's last ``data.finish_fraction`` (``data.finish_crop_size``...), None without
    finish_transform: TrainTransform | None = None
    writer: Any | None = None
    #: a SIGTERM / SIGINT this process received (set by the handler, at any moment)
    signal_received: int | None = None
    #: the signal the run stops for, agreed by every rank at a step boundary (see fcnkit.engine.train)
    signal: int | None = None
    #: time.monotonic() when last.pth was last written (for ``checkpoint_minutes``)
    saved_at: float = 0.0

    @property
    def eval_model(self) -> nn.Module:
        """What is evaluated and stored as ``best.pth``: the EMA's weights when there is one."""
        return self.ema.module if self.ema is not None else self.model


#: settings a resumed run may change: they change how the run is carried out or reported, not what it trains
RESUMABLE_CHANGES = (
    "output_dir",
    "resume",
    "max_steps",
    "device",
    "log_every",
    "checkpoint_every",
    "checkpoint_minutes",
    "pictures",
    "tensorboard",
    "data.workers",
    "data.cache",
)
#: what marks a folder as holding a run
RUN_FILES = ("config.yaml", "metrics.jsonl", "last.pth", "best.pth")


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict) or (prefix and not data):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def config_differences(saved: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, saved value, new value)`` for each setting of a resolved config that differs from the saved one's,
    except :data:`RESUMABLE_CHANGES`. A key the saved config lacks (written by an older fcnkit) counts as its
    default."""
    old, now, default = _flatten(saved), _flatten(new), _flatten(to_dict(TrainConfig()))
    keys = sorted(set(old) | set(now))
    missing = object()
    changed = []
    for key in keys:
        if key in RESUMABLE_CHANGES:
            continue
        a, b = old.get(key, default.get(key, missing)), now.get(key, default.get(key, missing))
        if a != b and not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and list(a) == list(b)):
            changed.append((key, None if a is missing else a, None if b is missing else b))
    return changed


def holds_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in RUN_FILES)


def run_directory(cfg: TrainConfig) -> Path:
    """Where this run lives, without touching any file: ``output_dir`` to resume it (``resume: true`` and a
    ``last.pth`` there, written with the same settings: otherwise the differing keys are named and nothing
    starts) or to start in an empty folder; a folder holding an earlier run is left as it is and the new run goes
    to the first free ``output_dir-2``, ``-3``... (as Ultralytics names its runs)."""
    folder = Path(cfg.output_dir)
    last = folder / "last.pth"
    if cfg.resume and last.exists():
        saved = torch.load(last, map_location="cpu", weights_only=True, mmap=True).get("config") or {}
        changed = config_differences(saved, to_dict(cfg))
        if changed:
            listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changed[:12])
            more = f" (and {len(changed) - 12} more)" if len(changed) > 12 else ""
            raise ConfigError(
                f"{folder} holds a run with other settings, and resuming it would mix the two: {listed}{more}. "
                f"To go on with that run, use its settings ({folder / 'config.yaml'}); to start a new run with "
                f"these, add resume=false (it goes to {free_folder(folder)}, the earlier run stays as it is) or "
                "choose another output_dir"
            )
        return folder
    return free_folder(folder) if holds_run(folder) else folder


def free_folder(folder: Path) -> Path:
    """``folder`` itself when it holds no run, else the first ``folder-N`` (N = 2, 3, ...) that holds none."""
    if not holds_run(folder):
        return folder
    n = 2
    while holds_run(folder.with_name(f"{folder.name}-{n}")):
        n += 1
    return folder.with_name(f"{folder.name}-{n}")


def build_run(cfg: TrainConfig) -> Run:
    """Everything of ``cfg`` built, seeded and placed on this rank's device."""
    device = resolve_device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {cfg.device!r} but torch sees no CUDA device; use device=auto or cpu")
    amp_dtype = _amp_dtype(cfg.amp, device)
    if cfg.tune_malloc:
        tune_malloc()
    info = init_distributed(device.type)
    folder = run_directory(cfg)  # every rank reads the same files before rank 0 writes any
    barrier(info)
    if str(folder) != cfg.output_dir:
        if info.is_main:
            log.warning(
                f"{cfg.output_dir} holds an earlier run (resume=false, or nothing to resume from); this run goes "
                f"to {folder} and the earlier one is left as it is"
            )
        cfg = dataclasses.replace(cfg, output_dir=str(folder))
    if cfg.sync_bn and info.enabled and device.type != "cuda":
        raise ConfigError("sync_bn needs CUDA: PyTorch's SyncBatchNorm has no CPU implementation")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    torch.manual_seed(cfg.seed)  # the same on every rank: identical initial weights
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)

    train_set, val_set = _datasets(cfg.data)
    if cfg.data.cache:
        _cache(train_set, info)
    leaking = shared_groups(train_set, val_set)
    if leaking and info.is_main:
        log.warning(
            f"train and val share {len(leaking)} group(s) ({', '.join(leaking)}): validation frames have neighbours "
            "in training, so val mIoU measures memory more than generalisation. Hold out whole groups: "
            "data.options.exclude_groups / data.val_options.groups (see docs/design.md, 'Validation that does not leak')"
        )
    if cfg.data.check_labels:
        _stop_on_label_traps(train_set, cfg.data)
    num_classes = cfg.model.num_classes or train_set.num_classes
    model = create_model(cfg.model.name, num_classes=num_classes, weights=cfg.model.weights, **cfg.model.options)
    if cfg.model.init_from:
        report = finetune_from(model, cfg.model.init_from)
        if info.is_main:
            log.info(report.format())
    model.classes = list(train_set.classes)
    model.palette = [tuple(c) for c in train_set.palette] if train_set.palette else None
    transform = TrainTransform.from_config(model.preprocessing, cfg.data, train_set.ignore_index)
    d = cfg.data
    mixer = BatchMixer(d.mosaic, d.cutmix, d.mixup, d.mix_alpha, ignore_index=train_set.ignore_index)
    train_data, sampler, loader = build_train_loader(
        train_set, transform, cfg.data, cfg.seed, info, pin_memory=device.type == "cuda"
    )
    batches_per_epoch = len(loader)
    if batches_per_epoch == 0:
        raise DataError(f"{cfg.data.name}/{cfg.data.train_split}: no training batch (empty split?)")
    total_steps, epochs = _run_length(cfg, batches_per_epoch)

    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    weights = resolve_class_weights(cfg, train_set)
    criterion = SegmentationLoss.from_config(cfg.loss, train_set.ignore_index, weights).to(device)
    optimizer = build_optimizer(model, cfg.optim)
    budget = cfg.schedule.budget_minutes * 60.0 if cfg.schedule.budget_minutes else None
    clock = BudgetClock(budget, agree=functools.partial(broadcast_from_main, info=info, device=device))
    # with a budget the clock ends training, and poly / cosine decay over the fraction of it spent
    scheduler = build_scheduler(optimizer, cfg.schedule, total_steps=total_steps, clock=clock if budget else None)
    _warn_lr_reduction(cfg, info)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    ema = ModelEMA(model, decay=cfg.ema_decay, warmup_steps=cfg.ema_warmup_steps) if cfg.ema_decay else None
    paths = RunPaths.of(cfg.output_dir)
    return Run(
        cfg=cfg,
        dist=info,
        device=device,
        paths=paths,
        train_set=train_set,
        val_set=val_set,
        train_data=train_data,
        sampler=sampler,
        loader=loader,
        batches_per_epoch=batches_per_epoch,
        total_steps=total_steps,
        epochs=epochs,
        model=model,
        net=_wrap(model, cfg, info, device),
        criterion=criterion,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        ema=ema,
        amp_dtype=amp_dtype,
        clock=clock,
        skipped=SkippedSamples(log),
        mixer=mixer,
        finish_transform=(
            TrainTransform.from_config(model.preprocessing, d, train_set.ignore_index, finish=True)
            if d.finish_fraction > 0
            else None
        ),
        writer=_tensorboard(cfg, info, paths),
    )


def _datasets(d: DataConfig) -> tuple[SegmentationDataset, SegmentationDataset]:
    """The training split, and the validation split (of another dataset when ``val_name`` / ``val_root`` say so)."""
    train_set = build_dataset(d.name, d.root, d.train_split, **d.options)
    val_options = d.val_options if d.val_options is not None else d.options
    val_set = build_dataset(d.val_name or d.name, d.val_root or d.root, d.val_split, **val_options)
    return train_set, val_set


def _stop_on_label_traps(dataset: SegmentationDataset, d: DataConfig) -> None:
    """One pass over the training labels (``data.check_labels``); a class whose pixels the masks hide under the
    ignore value stops the run before the first step, with the fix named."""
    start = time.perf_counter()
    report = label_report(dataset)
    traps = label_traps(report, f"{d.name}/{d.train_split}")
    if traps:
        raise DataError(traps[0] + " (data.check_labels=false skips this check)")
    log.info(f"training labels checked: {len(dataset)} masks in {time.perf_counter() - start:.1f} s")


def _cache(dataset: SegmentationDataset, info: DistInfo) -> None:
    """Decode the training split into memory (``data.cache``), with a progress bar and what it took."""
    start = time.perf_counter()
    progress = Progress(
        len(dataset), "caching", unit="image", logger=log, log_every=100, min_interval=5.0, enabled=info.is_main
    )
    with progress:
        held = dataset.cache(on_sample=lambda _: progress.update(1))
    if info.is_main:
        log.info(
            f"data.cache: {len(dataset)} training samples decoded into memory "
            f"({held / 2**20:.0f} MiB, {time.perf_counter() - start:.1f} s)"
        )


def _run_length(cfg: TrainConfig, batches_per_epoch: int) -> tuple[int | None, int | None]:
    """(optimiser steps, epochs) of the run; (None, None) with a time budget, which ends it instead."""
    if cfg.schedule.budget_minutes:
        return None, None
    steps_per_epoch = max(1, batches_per_epoch // cfg.accumulate)
    total_steps = cfg.schedule.iterations or cfg.schedule.epochs * steps_per_epoch
    return total_steps, math.ceil(total_steps / steps_per_epoch)


def _amp_dtype(amp: AmpMode, device: torch.device) -> torch.dtype | None:
    if amp == "none":
        return None
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("amp: fp16 needs CUDA; use bf16 on CPU")
    return AMP_DTYPES[amp]


def resolve_class_weights(cfg: TrainConfig, dataset: SegmentationDataset) -> list[float] | None:
    """``loss.class_weights``, a method's weights (``"median_frequency"``, ...) computed from the labels of ``dataset``."""
    method = cfg.loss.class_weights
    if not isinstance(method, str):
        return method
    report = check_dataset(dataset)  # the same pass `fcnkit data check` makes: per-class pixel counts
    if report.errors and cfg.data.on_error != "skip":
        raise DataError(
            f"cannot compute class weights, {len(report.errors)} bad samples; first: {report.errors[0]}. "
            f"To list them all: {check_command(cfg.data)}; or set data.on_error=skip to train without them"
        )
    if report.errors:
        log.warning(f"class weights from the {report.num_checked - report.num_errors} readable training samples")
    return class_weights_from_counts(method, torch.tensor(report.class_pixels, dtype=torch.float64)).tolist()


def _warn_lr_reduction(cfg: TrainConfig, info: DistInfo) -> None:
    """The most common FCN training failure: a summed-loss lr with a mean loss, or the reverse."""
    lr, reduction = cfg.optim.lr, cfg.loss.reduction
    if info.is_main and ((reduction == "sum" and lr > 1e-6) or (reduction == "mean" and lr < 1e-7)):
        hint = "a summed loss needs an lr near 1e-10" if reduction == "sum" else "a mean loss needs an lr near 1e-3"
        log.warning(f"warning: optim.lr={lr:g} with loss.reduction={reduction!r}: {hint}; expect NaN or no learning")


def _wrap(model: nn.Module, cfg: TrainConfig, info: DistInfo, device: torch.device) -> nn.Module:
    """``model`` as the training step calls it: SyncBN and DDP under ``torchrun``, then ``torch.compile``."""
    net = model
    if info.enabled:
        if cfg.sync_bn:
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(net) if cfg.compile else net


def _tensorboard(cfg: TrainConfig, info: DistInfo, paths: RunPaths) -> Any | None:
    if not (cfg.tensorboard and info.is_main):
        return None
    require("tensorboard", "tensorboard", "tensorboard: true (TensorBoard logging)")  # an actionable error
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(paths.run_dir / "tensorboard"))
