"""The training loop: reads top to bottom, resumable to the batch, single process or ``torchrun``.

One call, ``train(cfg)``, does: set-up (process group, seed, data, model, loss, optimiser, schedule,
EMA) -> resume from ``last.pth`` if present -> epochs of (micro-batches, accumulate, clip, step, EMA) with
periodic ``last.pth`` -> evaluation and ``best.pth`` by val mIoU -> a summary.

Resumable without loss: a checkpoint is written only between optimiser steps and holds the model,
optimiser, scheduler, grad scaler, EMA, every RNG state and the position in the epoch. The sampler
replays the same (seed, epoch) permutation and skips what was consumed, and augmentation randomness is
seeded per (seed, epoch, sample), so a run killed at any moment and resumed ends with the same weights
as an uninterrupted one (bitwise on CPU with ``deterministic: true``).
"""

from __future__ import annotations

import functools
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..checkpoint import atomic_save, checkpoint_dict
from ..config import TrainConfig, dump_config, to_dict
from ..data import TrainTransform, build_dataset, check_dataset, pad_collate
from ..errors import DataError, TrainingDiverged
from ..losses import SegmentationLoss, median_frequency_weights
from ..metrics import SegMetrics
from ..models import create_model
from .distributed import DistInfo, ResumableSampler, barrier, broadcast_buffers, init_distributed, shutdown
from .ema import ModelEMA
from .evaluate import evaluate
from .optim import build_optimizer, build_scheduler
from .pictures import save_training_pictures
from .progress import Progress

#: Stand-in for the step and epoch limits of a time-budget run: the clock ends it.
BUDGET_STEPS = 10**15


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    best_miou: float | None
    last_metrics: SegMetrics | None
    images_per_second: float


class _Augmented(Dataset):
    """Applies the training transform with randomness seeded by (seed, epoch, index).

    Per-sample seeding makes augmentation independent of worker count and of where a run was resumed,
    and keeps the global RNG (dropout) untouched by data loading.
    """

    def __init__(self, base: Dataset, transform: Callable[[dict], dict], seed: int) -> None:
        self.base, self.transform, self.seed, self.epoch = base, transform, seed, 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        sample = self.base[i]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hash((self.seed, self.epoch, i)) % (2**63))
            return self.transform(sample)


def pick_device(name: str, info: DistInfo) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        torch.cuda.set_device(info.local_rank)
        return torch.device("cuda", info.local_rank)
    return torch.device(name)


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    # numpy's state as plain lists: weights_only loading accepts no ndarray
    numpy_state = [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)]
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": numpy_state}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.amp == "none":
        return None
    if cfg.amp == "fp16" and device.type != "cuda":
        raise ValueError("amp: fp16 needs CUDA; use bf16 on CPU")
    return torch.bfloat16 if cfg.amp == "bf16" else torch.float16


def _class_weights(cfg: TrainConfig, dataset: Any) -> list[float] | None:
    if cfg.loss.class_weights != "median_frequency":
        return cfg.loss.class_weights
    report = check_dataset(dataset)  # the same pass `fcnkit data check` makes: per-class pixel counts
    if report.errors:
        raise DataError(f"cannot compute class weights, {len(report.errors)} bad samples; first: {report.errors[0]}")
    return median_frequency_weights(torch.tensor(report.class_pixels, dtype=torch.float64)).tolist()


def _warn_lr_reduction(cfg: TrainConfig, info: DistInfo) -> None:
    """The most common FCN training failure: a summed-loss lr with a mean loss, or the reverse."""
    lr, reduction = cfg.optim.lr, cfg.loss.reduction
    if info.is_main and ((reduction == "sum" and lr > 1e-6) or (reduction == "mean" and lr < 1e-7)):
        hint = "a summed loss needs an lr near 1e-10" if reduction == "sum" else "a mean loss needs an lr near 1e-3"
        print(f"warning: optim.lr={lr:g} with loss.reduction={reduction!r}: {hint}; expect NaN or no learning")


def _log(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def train(cfg: TrainConfig) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data``; returns where the run lives and how it ended."""
    # ---- set-up --------------------------------------------------------------------------------------
    device_type = "cuda" if cfg.device in ("cuda", "auto") and torch.cuda.is_available() else "cpu"
    info = init_distributed(device_type)
    device = pick_device(cfg.device, info)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    torch.manual_seed(cfg.seed)  # the same on every rank: identical initial weights
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    run_dir = Path(cfg.output_dir)
    last_path, best_path, log_path = run_dir / "last.pth", run_dir / "best.pth", run_dir / "metrics.jsonl"

    train_set = build_dataset(cfg.data.name, cfg.data.root, cfg.data.train_split, **cfg.data.options)
    d = cfg.data
    val_set = build_dataset(d.val_name or d.name, d.val_root or d.root, d.val_split,
                            **(d.val_options if d.val_options is not None else d.options))  # fmt: skip
    num_classes = cfg.model.num_classes or train_set.num_classes
    model = create_model(cfg.model.name, num_classes=num_classes, weights=cfg.model.weights, **cfg.model.options)
    model.classes = list(train_set.classes)
    model.palette = [tuple(c) for c in train_set.palette] if train_set.palette else None
    crop = cfg.data.crop_size
    transform = TrainTransform(
        model.preprocessing,
        crop_size=None if crop is None else (crop[0], crop[-1]),
        scale_range=tuple(cfg.data.scale_range),
        base_size=cfg.data.base_size,
        hflip=cfg.data.hflip,
        color_jitter=cfg.data.color_jitter,
        ignore_index=train_set.ignore_index,
    )
    augmented = _Augmented(train_set, transform, cfg.seed)
    sampler = ResumableSampler(len(train_set), shuffle=True, seed=cfg.seed, rank=info.rank, world_size=info.world_size)
    loader = DataLoader(
        augmented,
        batch_size=cfg.data.batch_size,
        sampler=sampler,
        num_workers=cfg.data.workers,
        collate_fn=functools.partial(pad_collate, ignore_index=train_set.ignore_index),
        drop_last=len(sampler) >= cfg.data.batch_size,
        pin_memory=device.type == "cuda",
        generator=torch.Generator(),  # keeps the global RNG (dropout) out of data loading
    )
    batches_per_epoch = len(loader)
    if batches_per_epoch == 0:
        raise ValueError(f"{cfg.data.name}/{cfg.data.train_split}: no training batch (empty split?)")
    steps_per_epoch = max(1, batches_per_epoch // cfg.accumulate)
    budget = cfg.schedule.budget_minutes * 60.0 if cfg.schedule.budget_minutes else None
    if budget is None:
        total_steps = cfg.schedule.iterations or cfg.schedule.epochs * steps_per_epoch
        epochs = math.ceil(total_steps / steps_per_epoch)
    else:  # the clock ends training; the decay runs over the fraction of the budget spent (LRFactor.progress)
        total_steps, epochs = BUDGET_STEPS, BUDGET_STEPS

    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    criterion = SegmentationLoss(
        ignore_index=train_set.ignore_index,
        reduction=cfg.loss.reduction,
        class_weights=_class_weights(cfg, train_set),
        aux_weight=cfg.loss.aux_weight,
        se_weight=cfg.loss.se_weight,
        label_smoothing=cfg.loss.label_smoothing,
        ohem_thresh=cfg.loss.ohem_thresh,
        ohem_min_kept=cfg.loss.ohem_min_kept,
    ).to(device)
    o = cfg.optim
    optimizer = build_optimizer(
        model, o.name, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, betas=tuple(o.betas),
        nesterov=o.nesterov, bias_lr_mult=o.bias_lr_mult, bias_decay=o.bias_decay, norm_decay=o.norm_decay,
        head_lr_mult=o.head_lr_mult,
    )  # fmt: skip
    s = cfg.schedule
    scheduler = build_scheduler(
        optimizer, s.name, total_steps=total_steps, warmup_steps=s.warmup_steps,
        warmup_start_factor=s.warmup_start_factor, power=s.power, min_lr_factor=s.min_lr_factor,
        step_size=s.step_size, gamma=s.gamma,
    )  # fmt: skip
    if budget is not None:
        for factor in scheduler.lr_lambdas:
            factor.progress = 0.0
    _warn_lr_reduction(cfg, info)
    amp_dtype = _amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    ema = ModelEMA(model, decay=cfg.ema_decay, warmup_steps=cfg.ema_warmup_steps) if cfg.ema_decay else None

    net: nn.Module = model
    if info.enabled:
        if cfg.sync_bn:
            if device.type != "cuda":
                raise ValueError("sync_bn needs CUDA: PyTorch's SyncBatchNorm has no CPU implementation")
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)

    tic: float | None = None  # start of the current epoch's clock (None outside the loop)

    # ---- resume --------------------------------------------------------------------------------------
    step, epoch, batches_done, best_miou = 0, 0, 0, None
    train_time, images_seen = 0.0, 0  # training wall-clock (s) and images, over every invocation of the run
    if cfg.resume and last_path.exists():
        ckpt = torch.load(last_path, map_location="cpu", weights_only=True)
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        if ema is not None and ckpt.get("ema") is not None:
            ema.load_state_dict(ckpt["ema"])
        _set_rng_state(ckpt["rng"][info.rank] if isinstance(ckpt["rng"], list) else ckpt["rng"])
        p = ckpt["progress"]
        step, epoch, batches_done, best_miou = p["step"], p["epoch"], p["batches_done"], p["best_miou"]
        train_time, images_seen = p.get("train_time", 0.0), p.get("images_seen", 0)
        if info.is_main:
            print(f"resumed from {last_path}: step {step}, epoch {epoch}, batch {batches_done}")
    elif info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, run_dir / "config.yaml")
        log_path.unlink(missing_ok=True)  # a fresh run must not append to an older run's log
    barrier(info)

    writer = None
    if cfg.tensorboard and info.is_main:
        from torch.utils.tensorboard import SummaryWriter  # optional dependency: pip install tensorboard

        writer = SummaryWriter(str(run_dir / "tensorboard"))

    def save(path: Path, eval_model: nn.Module | None = None) -> None:
        # A finite loss can still be followed by an update that overflows the weights: never let such a
        # state replace the last good checkpoint.
        bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise TrainingDiverged(
                f"weights became non-finite after step {step} (epoch {epoch + 1}, first: {bad[0]}); training "
                f"stopped and {path} was not overwritten. Check the lr against loss.reduction={cfg.loss.reduction!r}."
            )
        rng = _gather_rng(info)
        if not info.is_main:
            return
        extra = {
            "config": to_dict(cfg),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "rng": rng,
            "progress": {
                "step": step,
                "epoch": epoch,
                "batches_done": batches_done,
                "best_miou": best_miou,
                "train_time": train_time + (time.perf_counter() - tic if tic is not None else 0.0),
                "images_seen": images_seen,
            },
        }
        ckpt = checkpoint_dict(model, **extra)
        if eval_model is not None:
            ckpt["state_dict"] = eval_model.state_dict()
        atomic_save(ckpt, path)

    def run_eval() -> SegMetrics:
        eval_model = ema.module if ema is not None else model
        broadcast_buffers(eval_model, info)
        return evaluate(eval_model, val_set, device, cfg.data.val_batch_size, 0, info, amp_dtype, cfg.channels_last)

    # ---- epochs --------------------------------------------------------------------------------------
    metrics: SegMetrics | None = None
    out_of_time = budget is not None and train_time >= budget
    net.train()
    while epoch < epochs and step < total_steps and not out_of_time:
        augmented.epoch = epoch
        sampler.set_epoch(epoch, start=batches_done * cfg.data.batch_size)
        title = f"epoch {epoch + 1}/{epochs}" if budget is None else f"epoch {epoch + 1}"
        progress = Progress(batches_per_epoch - batches_done, title, enabled=info.is_main)
        tic = time.perf_counter()
        for batch in loader:
            images = batch["image"].to(device, non_blocking=True)
            labels = batch["label"].to(device, non_blocking=True)
            if cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                outputs = net(images)
            loss, parts = criterion({k: v.float() for k, v in outputs.items()}, labels)
            if not torch.isfinite(loss):
                kept = (
                    f"the last good checkpoint is {last_path}"
                    if last_path.exists()
                    else "no checkpoint was written yet"
                )
                raise TrainingDiverged(
                    f"loss became {loss.item()} at step {step + 1} (epoch {epoch + 1}, batch {batches_done + 1}); "
                    f"training stopped and {kept}. Check the lr against loss.reduction={cfg.loss.reduction!r}."
                )
            scaler.scale(loss / cfg.accumulate).backward()
            batches_done += 1
            images_seen += images.shape[0]
            if batches_done % cfg.accumulate:
                continue
            if cfg.clip_grad_norm:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if budget is not None:
                # every rank follows rank 0's clock, so all stop after the same step
                spent = _agreed_seconds(train_time + time.perf_counter() - tic, info, device)
                for factor in scheduler.lr_lambdas:
                    factor.progress = min(1.0, spent / budget)
                out_of_time = spent >= budget
            scheduler.step()
            if ema is not None:
                ema.update(model)
            step += 1
            lr = optimizer.param_groups[0]["lr"]
            progress.update(cfg.accumulate, loss=parts["total"], lr=lr)
            if info.is_main and (step % cfg.log_every == 0 or step == total_steps or out_of_time):
                elapsed = train_time + time.perf_counter() - tic
                record = {"step": step, "epoch": epoch + 1, "lr": lr, **{f"loss_{k}": v for k, v in parts.items()},
                          "images_per_s": images_seen * info.world_size / max(elapsed, 1e-9),
                          "train_minutes": elapsed / 60}  # fmt: skip
                _log(log_path, record)
                if writer is not None:
                    for k, v in record.items():
                        writer.add_scalar(f"train/{k}", v, step)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                save(last_path)
            if step >= total_steps or out_of_time or (cfg.max_steps is not None and step >= cfg.max_steps):
                break
        train_time += time.perf_counter() - tic
        tic = None
        progress.close()
        if batches_done >= batches_per_epoch:
            optimizer.zero_grad(set_to_none=True)  # an incomplete accumulation at the epoch's end is dropped
        finished = step >= total_steps or out_of_time
        stopped_early = cfg.max_steps is not None and step >= cfg.max_steps and not finished
        if batches_done >= batches_per_epoch or finished:
            epoch, batches_done = epoch + 1, 0
        due = cfg.eval_every and epoch % cfg.eval_every == 0
        if not stopped_early and (due or finished) and batches_done == 0:
            metrics = run_eval()
            if info.is_main:
                _log(log_path, {"step": step, "epoch": epoch, "train_minutes": train_time / 60,
                                "val": metrics.as_dict()})  # fmt: skip
                print(f"epoch {epoch}: val mIoU {metrics.miou * 100:.2f}  pixel acc {metrics.pixel_acc * 100:.2f}")
                if cfg.pictures:
                    eval_model = ema.module if ema is not None else model
                    save_training_pictures(eval_model, val_set, run_dir, epoch, cfg.pictures, device)
            if best_miou is None or metrics.miou > best_miou:
                best_miou = metrics.miou
                save(best_path, ema.module if ema is not None else None)
        save(last_path)
        if stopped_early:
            break

    ips = images_seen * info.world_size / max(train_time, 1e-9)
    if writer is not None:
        writer.close()
    barrier(info)
    shutdown(info)
    return TrainResult(run_dir, step, best_miou, metrics, ips)


def _agreed_seconds(seconds: float, info: DistInfo, device: torch.device) -> float:
    """Rank 0's value of ``seconds`` on every rank (the clocks of the ranks differ a little)."""
    if not info.enabled:
        return seconds
    value = torch.tensor([seconds], dtype=torch.float64, device=device)
    torch.distributed.broadcast(value, src=0)
    return float(value)


def _gather_rng(info: DistInfo) -> dict[str, Any] | list[dict[str, Any]]:
    """Every rank's RNG state (rank 0 stores the list, so each rank resumes with its own)."""
    state = _rng_state()
    if not info.enabled:
        return state
    gathered: list[Any] = [None] * info.world_size
    torch.distributed.all_gather_object(gathered, state)
    return gathered
