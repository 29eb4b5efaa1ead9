"""The training loop: reads top to bottom, resumable to the batch, single process or ``torchrun``.

``train(cfg)`` is: build the run (:func:`~fcnkit.engine.run.build_run`) -> :func:`resume` from ``last.pth``
if present -> epochs of :func:`train_one_epoch` (micro-batches, accumulate, clip, step, EMA, periodic
``last.pth``) -> :func:`evaluate_and_log` and ``best.pth`` by val mIoU -> ``last.pth`` -> until
:func:`should_stop` -> a summary.

Resumable without loss: a checkpoint is written only between optimiser steps and holds the model,
optimiser, scheduler, grad scaler, EMA, every RNG state and the position in the epoch (:class:`TrainState`).
The sampler replays the same (seed, epoch) permutation and skips what was consumed, and augmentation
randomness is seeded per (seed, epoch, sample), so a run killed at any moment and resumed ends with the same
weights as an uninterrupted one (bitwise on CPU with ``deterministic: true``).

Progress goes to the ``"fcnkit.train"`` logger (:mod:`fcnkit.progress`): a bar on a terminal, otherwise a
line every ``log_every`` steps and one per evaluation; ``metrics.jsonl`` records the same figures.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..card import ModelCard
from ..checkpoint import atomic_save, checkpoint_dict
from ..config import TrainConfig, dump_config, to_dict
from ..errors import DataError, TrainingDiverged
from ..metrics import SegMetrics
from ..progress import Progress, ensure_handler, get_logger
from ..version import __version__
from .distributed import barrier, broadcast_buffers, shutdown
from .evaluate import evaluate
from .loader import check_command
from .pictures import save_training_pictures
from .run import Run, build_run
from .runlog import append_record
from .state import TrainState, gather_rng_states, rank_rng_state, set_rng_state

__all__ = [
    "TrainResult",
    "begin_finish",
    "evaluate_and_log",
    "forward_backward",
    "optimizer_step",
    "resume",
    "save_checkpoint",
    "should_stop",
    "train",
    "train_one_epoch",
]

log = get_logger("train")

#: what :func:`should_stop` answers, in words
STOP_REASONS = {
    "signal": "stopped by a signal; last.pth holds the run up to here",
    "budget": "the time budget is spent",
    "steps": "all steps are done",
    "max_steps": "max_steps reached (the run can be resumed)",
    "epochs": "all epochs are done",
}


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    best_miou: float | None
    last_metrics: SegMetrics | None
    images_per_second: float
    #: the signal that stopped the run early (it resumes from last.pth), or None
    signal: int | None = None


def train(cfg: TrainConfig) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data``; returns where the run lives and how it ended."""
    ensure_handler()  # library use without logging set up still shows the progress lines
    run = build_run(cfg)
    state = resume(run)
    metrics: SegMetrics | None = None
    progress = Progress(
        run.total_steps,
        "step",
        unit="step",
        logger=log,
        log_every=cfg.log_every,
        initial=state.step,
        elapsed=state.train_seconds,
        enabled=run.dist.is_main,
    )
    with progress, _stop_on_signals(run):
        while (stop := should_stop(run, state)) is None:
            begin_finish(run, state)
            train_one_epoch(run, state, progress)
            stop = should_stop(run, state)
            done = stop in ("budget", "steps")  # the run is complete (max_steps only pauses it)
            if state.batches_done >= run.batches_per_epoch or done:
                state.epoch, state.batches_done = state.epoch + 1, 0
            due = cfg.eval_every and state.epoch % cfg.eval_every == 0
            if stop not in ("max_steps", "signal") and state.batches_done == 0 and (due or done):
                metrics = evaluate_and_log(run, state)
                if state.best_miou is None or metrics.miou > state.best_miou:
                    state.best_miou = metrics.miou
                    save_checkpoint(run, state, run.paths.best, weights=run.eval_model)
            save_checkpoint(run, state, run.paths.last)

    if stop == "signal" and run.dist.is_main:
        name = signal.Signals(run.signal).name if run.signal is not None else "a signal"
        log.warning(
            f"{name} received: stopped at step {state.step} (epoch {state.epoch + 1}, batch {state.batches_done}) and "
            f"wrote {run.paths.last}; run the same command again to resume from there"
        )
    images_per_second = state.images_seen * run.dist.world_size / max(state.train_seconds, 1e-9)
    if run.dist.is_main:
        log.info(f"stopped at step {state.step}: {STOP_REASONS[stop]} ({state.train_seconds:.1f} s of training)")
    if run.writer is not None:
        run.writer.close()
    barrier(run.dist)
    shutdown(run.dist)
    return TrainResult(
        run.paths.run_dir,
        state.step,
        state.best_miou,
        metrics,
        images_per_second,
        run.signal if stop == "signal" else None,
    )


@contextlib.contextmanager
def _stop_on_signals(run: Run) -> Iterator[None]:
    """While training: SIGTERM (what a scheduler sends before it kills a job) and SIGINT (Ctrl-C) set
    ``run.signal``; the loop finishes the step it is in, writes ``last.pth`` and returns. A second SIGINT stops at
    once (KeyboardInterrupt). Only the main thread can handle signals; elsewhere nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def note(signum: int, frame: Any) -> None:
        if run.signal_received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        run.signal_received = signum

    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def resume(run: Run) -> TrainState:
    """Where the run starts: ``last.pth`` restored into ``run`` when resuming (its settings were compared with
    these by :func:`~fcnkit.engine.run.run_directory`), else a fresh run directory with ``config.yaml`` (a folder
    that holds no run: an earlier run's folder is never written into)."""
    state = TrainState()
    paths = run.paths
    if run.cfg.resume and paths.last.exists():
        ckpt = torch.load(paths.last, map_location="cpu", weights_only=True)
        run.model.load_state_dict(ckpt["state_dict"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.scheduler.load_state_dict(ckpt["scheduler"])
        run.scaler.load_state_dict(ckpt["scaler"])
        if run.ema is not None and ckpt.get("ema") is not None:
            run.ema.load_state_dict(ckpt["ema"])
        set_rng_state(rank_rng_state(ckpt["rng"], run.dist))
        state.load_state_dict(ckpt["progress"])
        if run.dist.is_main:
            log.info(f"resumed from {paths.last}: step {state.step}, epoch {state.epoch}, batch {state.batches_done}")
    elif run.dist.is_main:
        paths.run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(run.cfg, paths.run_dir / "config.yaml")
    barrier(run.dist)
    run.clock.reset(state.train_seconds)
    run.saved_at = time.monotonic()
    return state


def should_stop(run: Run, state: TrainState) -> str | None:
    """Why training stops here (a key of :data:`STOP_REASONS`), or None to go on.

    Read after every optimiser step and at every epoch's end. With a budget, the clock's reading is rank 0's
    on every rank, so under ``torchrun`` all ranks stop after the same step.
    """
    if run.clock.out_of_time:
        return "budget"
    if run.total_steps is not None and state.step >= run.total_steps:
        return "steps"
    if run.cfg.max_steps is not None and state.step >= run.cfg.max_steps:
        return "max_steps"
    if run.epochs is not None and state.epoch >= run.epochs:
        return "epochs"
    if run.signal is not None:  # after the reasons above: a run that is complete finishes as one
        return "signal"
    return None


def begin_finish(run: Run, state: TrainState) -> None:
    """At an epoch's start, switch to the ``data.finish_*`` augmentation once the last ``finish_fraction`` of the
    run has begun (of the budget's time when there is one, else of the steps); the epoch it began at is kept in
    ``state`` so that a resumed run switches where the interrupted one did."""
    if run.finish_transform is None:
        return
    if state.finish_epoch is None and state.batches_done == 0:
        if run.clock.budget is not None:
            done = run.clock.fraction_spent()
        else:
            done = state.step / run.total_steps if run.total_steps else 0.0
        if done >= 1.0 - run.cfg.data.finish_fraction:
            state.finish_epoch = state.epoch
            if run.dist.is_main:
                d = run.cfg.data
                crop = "whole images" if d.finish_crop_size is None else f"{d.finish_crop_size} crops"
                log.info(f"epoch {state.epoch + 1}: the finish begins ({crop}, {done * 100:.0f} % of the run done)")
    if state.finish_epoch is not None and state.epoch >= state.finish_epoch:
        run.train_data.transform = run.finish_transform


def train_one_epoch(run: Run, state: TrainState, progress: Progress) -> None:
    """Train from ``state``'s position to the end of its epoch, or to the step :func:`should_stop` names.

    The clock runs meanwhile. The epoch counter is left to the caller; the position in the epoch
    (``state.batches_done``) and everything else in ``state`` are brought up to date.
    """
    cfg = run.cfg
    run.train_data.epoch = state.epoch
    run.sampler.set_epoch(state.epoch, start=state.batches_done * cfg.data.batch_size)
    run.net.train()
    run.clock.start()
    pending = 0  # micro-batches whose gradients wait for the next optimiser step
    batches = iter(run.loader)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            break
        except RuntimeError:
            # A scheduler that signals every process of a job also stops the loader's workers: the loader fails
            # between two steps, where last.pth can still be written and the run resumed
            if run.signal_received is None or pending or run.dist.enabled:
                raise
            run.signal = run.signal_received
            break
        state.batches_done += 1
        run.skipped.add(batch["skipped"])
        if "image" in batch:
            if run.mixer.enabled:
                batch = run.mixer(batch, (cfg.seed, run.dist.rank, state.epoch, state.batches_done))
            parts = forward_backward(run, state, batch)
            pending += 1
        elif run.dist.enabled:  # every sample unreadable: this rank would miss the other ranks' gradient sync
            files = ", ".join(item["path"] for item in batch["skipped"])
            raise DataError(
                f"rank {run.dist.rank}: no sample of a batch could be read ({files}); under torchrun every rank "
                f"must train on every step. Fix the files ({check_command(cfg.data)} lists them) or use a larger "
                "data.batch_size"
            )
        if state.batches_done % cfg.accumulate or not pending:
            continue
        optimizer_step(run)
        pending = 0
        state.step += 1
        state.train_seconds = run.clock.mark()  # the reading the lr and the stop decision use
        run.scheduler.step()
        if run.ema is not None:
            run.ema.update(run.model)
        _log_step(run, state, parts, progress)
        if _checkpoint_due(run, state):
            run.clock.stop()  # writing the file is not training time
            save_checkpoint(run, state, run.paths.last)
            run.clock.start()
        if should_stop(run, state):
            break
    run.clock.stop()
    state.train_seconds = run.clock.seconds
    if state.batches_done >= run.batches_per_epoch:
        run.optimizer.zero_grad(set_to_none=True)  # an incomplete accumulation at the epoch's end is dropped
    if cfg.data.on_error == "skip":
        _log_skipped(run, state)


def _checkpoint_due(run: Run, state: TrainState) -> bool:
    """After a step: is ``last.pth`` due (``checkpoint_every`` steps, ``checkpoint_minutes`` since the last write)?
    Under ``torchrun`` rank 0 decides for every rank, and a signal any rank received reaches every rank, so that
    all stop and write at the same step."""
    cfg = run.cfg
    due = bool(cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0)
    if cfg.checkpoint_minutes and time.monotonic() - run.saved_at >= cfg.checkpoint_minutes * 60:
        due = True
    received = run.signal_received or 0  # read once: the handler may set it at any moment
    if run.dist.enabled:
        flags = torch.tensor([float(due and run.dist.is_main), float(received)], device=run.device)
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        due, received = bool(flags[0]), int(flags[1])
    if received:
        run.signal = received
    return due and run.signal is None  # a signal's checkpoint is written once the loop has stopped


def forward_backward(run: Run, state: TrainState, batch: dict[str, Any]) -> dict[str, float]:
    """One micro-batch: forward, the loss (a non-finite one stops training), backward of loss / accumulate."""
    cfg = run.cfg
    images = batch["image"].to(run.device, non_blocking=True)
    labels = batch["label"].to(run.device, non_blocking=True)
    if cfg.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
        outputs = run.net(images)
    outputs = {k: v.float() for k, v in outputs.items()}
    loss, parts = run.criterion(outputs, labels)
    if "lam" in batch:  # MixUp: the loss of each of the two label maps, weighted as the images were
        lam = batch["lam"]
        loss_b, parts_b = run.criterion(outputs, batch["label_b"].to(run.device, non_blocking=True))
        loss = lam * loss + (1.0 - lam) * loss_b
        parts = {k: lam * v + (1.0 - lam) * parts_b[k] for k, v in parts.items()}
    if not torch.isfinite(loss):
        raise TrainingDiverged(
            f"loss became {loss.item()} at step {state.step + 1} (epoch {state.epoch + 1}, batch "
            f"{state.batches_done}); training stopped and {_kept(run)}. Check the lr against "
            f"loss.reduction={cfg.loss.reduction!r}."
        )
    run.scaler.scale(loss / cfg.accumulate).backward()
    state.images_seen += images.shape[0]
    return parts


def optimizer_step(run: Run) -> None:
    """Clip (when asked), step the optimiser through the grad scaler, and clear the gradients."""
    if run.cfg.clip_grad_norm:
        run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.clip_grad_norm)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)


def _log_step(run: Run, state: TrainState, parts: dict[str, float], progress: Progress) -> None:
    """The progress line / bar, and a ``metrics.jsonl`` record every ``log_every`` steps and at the last."""
    lr = run.optimizer.param_groups[0]["lr"]
    seconds = state.train_seconds
    images_per_s = state.images_seen * run.dist.world_size / max(seconds, 1e-9)
    due = state.step % run.cfg.log_every == 0 or state.step == run.total_steps or run.clock.out_of_time
    epoch = f"{state.epoch + 1}/{run.epochs}" if run.epochs is not None else str(state.epoch + 1)
    eta = max(0.0, run.clock.budget - seconds) if run.clock.budget is not None else None
    values = {"epoch": epoch, "loss": parts["total"], "lr": lr, "images/s": images_per_s}
    first = progress.count == progress.initial  # a line at once shows that this invocation is training
    progress.update(1, values, elapsed=seconds, eta=eta, log=due or first)
    if not (due and run.dist.is_main):
        return
    record = {
        "step": state.step,
        "epoch": state.epoch + 1,
        "lr": lr,
        **{f"loss_{k}": v for k, v in parts.items()},
        "images_per_s": images_per_s,
        "train_minutes": seconds / 60,
    }
    append_record(run.paths.log, record)
    if run.writer is not None:
        for k, v in record.items():
            run.writer.add_scalar(f"train/{k}", v, state.step)


def _log_skipped(run: Run, state: TrainState) -> None:
    """The files this epoch left out (every rank's), as one ``metrics.jsonl`` record."""
    paths = run.skipped.take_epoch(run.dist)
    if paths and run.dist.is_main:
        append_record(run.paths.log, {"step": state.step, "epoch": state.epoch + 1, "skipped_samples": paths})
        log.info(f"epoch {state.epoch + 1}: {len(paths)} unreadable training samples skipped (data.on_error=skip)")


def save_checkpoint(run: Run, state: TrainState, path: Path, weights: nn.Module | None = None) -> None:
    """Write ``path`` with everything resuming needs; ``weights`` replaces the model's weights in it (``best.pth``
    holds the EMA's). Every rank calls it (the RNG states are gathered); rank 0 writes."""
    # A finite loss can still be followed by an update that overflows the weights: never let such a state
    # replace the last good checkpoint.
    bad = [n for n, p in run.model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise TrainingDiverged(
            f"weights became non-finite after step {state.step} (epoch {state.epoch + 1}, first: {bad[0]}); "
            f"training stopped, {path.name} was not written and {_kept(run)}. Check the lr against "
            f"loss.reduction={run.cfg.loss.reduction!r}."
        )
    rng = gather_rng_states(run.dist)
    if not run.dist.is_main:
        return
    if weights is not None:  # best.pth: a deployable model, the weights that were evaluated and their card
        weights.card = model_card(run, state, ema=run.ema is not None and weights is run.ema.module)
        atomic_save(checkpoint_dict(weights, config=to_dict(run.cfg), progress=state.state_dict()), path)
        return
    run.model.card = model_card(run, state, ema=False)
    run.saved_at = time.monotonic()
    ckpt = checkpoint_dict(
        run.model,
        config=to_dict(run.cfg),
        optimizer=run.optimizer.state_dict(),
        scheduler=run.scheduler.state_dict(),
        scaler=run.scaler.state_dict(),
        ema=run.ema.state_dict() if run.ema is not None else None,
        rng=rng,
        progress=state.state_dict(),
    )
    atomic_save(ckpt, path)


def model_card(run: Run, state: TrainState, ema: bool) -> ModelCard:
    """The card written with the run's weights: the recipe's test-time passes, which weights, provenance."""
    cfg = run.cfg
    provenance = {
        "run_dir": str(run.paths.run_dir),
        "step": state.step,
        "epoch": state.epoch,
        "dataset": f"{cfg.data.name}/{cfg.data.train_split}",
        "best_val_miou": state.best_miou,
        "fcnkit": __version__,
    }
    return run.model.card.replace(test=cfg.test, weights="ema" if ema else "raw", provenance=provenance)


def _kept(run: Run) -> str:
    last = run.paths.last
    return f"the last good checkpoint {last} was kept" if last.exists() else "no checkpoint was written yet"


def evaluate_and_log(run: Run, state: TrainState) -> SegMetrics:
    """Validation metrics of :attr:`Run.eval_model` (every rank its shard), logged, recorded and drawn."""
    cfg, model = run.cfg, run.eval_model
    broadcast_buffers(model, run.dist)
    metrics = evaluate(
        model, run.val_set, run.device, cfg.data.val_batch_size, 0, run.dist, run.amp_dtype, cfg.channels_last
    )
    if run.dist.is_main:
        record = {
            "step": state.step,
            "epoch": state.epoch,
            "train_minutes": state.train_seconds / 60,
            "val": metrics.as_dict(),
        }
        append_record(run.paths.log, record)
        log.info(f"epoch {state.epoch}: val mIoU {metrics.miou * 100:.2f}  pixel acc {metrics.pixel_acc * 100:.2f}")
        pictures = []
        if cfg.pictures:
            pictures = save_training_pictures(
                model, run.val_set, run.paths.run_dir, state.epoch, cfg.pictures, run.device
            )
        if run.writer is not None:
            _tensorboard_validation(run.writer, metrics, list(run.val_set.classes), pictures, state.step)
    return metrics


def _tensorboard_validation(
    writer: Any, metrics: SegMetrics, classes: list[str], pictures: list[Path], step: int
) -> None:
    """Validation in TensorBoard: the summary metrics, the IoU of each class and the picture grid."""
    for key in ("miou", "pixel_acc", "mean_acc", "fwiou", "mean_dice"):
        writer.add_scalar(f"val/{key}", getattr(metrics, key), step)
    for name, iou in zip(classes, metrics.iou.tolist(), strict=True):
        writer.add_scalar(f"val_iou/{name}", iou, step)
    for path in pictures[:1]:  # the grid: image | ground truth | prediction
        writer.add_image("val/pictures", np.asarray(Image.open(path).convert("RGB")), step, dataformats="HWC")
    writer.flush()
