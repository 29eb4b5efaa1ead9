"""Training throughput (images/s) of fcnkit models under the training loop's speed settings, in one run.

Each setting is one full training step as ``fcnkit train`` does it: forward (autocast when asked), the
segmentation loss, backward, optimiser step, ``zero_grad(set_to_none=True)``, on a fixed random batch.
After the warm-up, rounds run every setting once in turn (interleaved, so the drift of a shared machine hits
every row alike); the figures are medians over rounds and the ratio is the median per-round ratio against
the first setting (the plain fp32 NCHW loop).

Settings (the names of the recipe keys they stand for):

* ``fp32``: the plain loop (``channels_last: false``, ``amp: none``);
* ``channels_last``: NHWC model and input (``channels_last: true``);
* ``bf16`` / ``channels_last+bf16``: bf16 autocast (``amp: bf16``; CUDA or CPUs with bf16 support);
* ``compile``: ``torch.compile`` of the model (``compile: true``).

    python benchmarks/train_speed.py                                   # CPU: fp32 vs channels_last
    python benchmarks/train_speed.py --device cuda --settings fp32 channels_last channels_last+bf16 compile

**The loop against its own compute** (``--config``): the run a recipe describes is built as ``fcnkit train``
builds it (``build_run``), and each round times, in turn, (a) ``compute``: one epoch's worth of steps of the
loop's own step code (forward, loss, backward, optimiser, scheduler, EMA) on one fixed batch already in memory,
and (b) for every ``--variant``, one real epoch of ``train_one_epoch``: loader, augmentation, collation and the
same step code, logging included. A variant is a list of config overrides (e.g. ``data.cache=true
data.workers=0``). Each row is images/s (median over rounds) and its ratio to ``compute`` (median of the
per-round ratios). The recipe's time budget, evaluation and periodic checkpoints are switched off.

    python benchmarks/train_speed.py --config configs/camvid/budget30_fcn8s_camvid.yaml \
        --set data.root=../shared/data/camvid --rounds 3 \
        --variant data.cache=false data.workers=2 --variant data.cache=true data.workers=0
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from pathlib import Path

import torch

import fcnkit
from fcnkit.apps.benchmark import ResultsTable, time_interleaved
from fcnkit.engine.optim import build_optimizer
from fcnkit.losses import SegmentationLoss
from fcnkit.utils import tune_malloc

SETTINGS = ("fp32", "channels_last", "bf16", "channels_last+bf16", "compile", "channels_last+compile")


def make_step(name: str, settings: str, args: argparse.Namespace, device: torch.device, backbone: str | None = None):
    torch.manual_seed(0)
    model = fcnkit.create_model(name, num_classes=args.num_classes, **({"backbone": backbone} if backbone else {}))
    model.to(device).train()
    channels_last = "channels_last" in settings
    if channels_last:
        model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if "compile" in settings else model
    optimizer = build_optimizer(model, "sgd", lr=1e-3, momentum=0.9, weight_decay=1e-4)
    criterion = SegmentationLoss(ignore_index=255, aux_weight=0.4 if model.aux_classifier is not None else 0.0)
    amp = torch.bfloat16 if "bf16" in settings else None
    g = torch.Generator().manual_seed(1)
    h, w = args.size
    images = torch.randn(args.batch, 3, h, w, generator=g).to(device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, args.num_classes, (args.batch, h, w), generator=g).to(device)

    def step() -> float:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            outputs = net(images)
        loss, _ = criterion({k: v.float() for k, v in outputs.items()}, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def loop_against_compute(args: argparse.Namespace) -> int:
    """The ``--config`` mode: rounds of compute-only steps and of real loop epochs, per variant."""
    import tempfile

    from fcnkit.config import load_config
    from fcnkit.engine.run import build_run
    from fcnkit.engine.train import forward_backward, optimizer_step, resume, train_one_epoch
    from fcnkit.progress import Progress

    variants = args.variant or [[]]
    fixed = ["schedule.budget_minutes=null", "schedule.iterations=1000000", "eval_every=0", "checkpoint_every=0"]
    runs, out = {}, tempfile.mkdtemp(prefix="train_speed_")
    for i, overrides in enumerate(variants):
        cfg = load_config(args.config, [*args.set, *fixed, *overrides, f"output_dir={out}/v{i}"])
        run = build_run(cfg)
        runs[" ".join(overrides) or "recipe"] = (run, resume(run))  # a fresh run directory
    first, state0 = next(iter(runs.values()))
    batch = next(iter(first.loader))  # one real batch of the first variant, reused by every compute step
    steps = first.batches_per_epoch

    def compute() -> None:
        for _ in range(steps):
            forward_backward(first, state0, batch)
            optimizer_step(first)
            first.scheduler.step()
            if first.ema is not None:
                first.ema.update(first.model)

    def epoch_of(name: str):
        run, state = runs[name]

        def one_epoch() -> None:
            run.cfg.max_steps = state.step + run.batches_per_epoch
            with Progress(None, "step", enabled=False) as progress:
                train_one_epoch(run, state, progress)
            state.epoch, state.batches_done = state.epoch + 1, 0

        return one_epoch

    for run, _ in runs.values():  # oneDNN picks its kernels on the first steps: not timed
        for _ in range(args.warmup):
            forward_backward(run, state0, batch)
            optimizer_step(run)
    timers = {"compute": compute, **{name: epoch_of(name) for name in runs}}
    seconds = time_interleaved(timers, torch.device("cpu"), 0, args.rounds)
    images = {"compute": steps * first.cfg.data.batch_size}
    images.update({name: run.batches_per_epoch * run.cfg.data.batch_size for name, (run, _) in runs.items()})
    table = ResultsTable(
        {"setting": "{}", "s/round": "{:.1f}", "images/s": "{:.2f}", "vs compute": "{:.1%}"}, command=command()
    )
    for name, ts in seconds.items():
        rates = [images[name] / t for t in ts]
        ratio = statistics.median(r / (images["compute"] / c) for r, c in zip(rates, seconds["compute"], strict=True))
        table.add(
            setting=name,
            **{"s/round": statistics.median(ts), "images/s": statistics.median(rates), "vs compute": ratio},
        )
    cfg = first.cfg
    table.protocol = (
        f"{args.config} ({cfg.model.name} {cfg.model.options}, batch {cfg.data.batch_size}, crop "
        f"{cfg.data.crop_size}); {args.rounds} rounds, each: compute = {steps} steps of the loop's step code on one "
        f"fixed batch, then one epoch ({steps} batches) of train_one_epoch per variant; median images/s, ratio = "
        f"median per-round ratio to compute; {args.warmup} untimed warm-up steps per variant; {platform.machine()}, "
        f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}"
    )
    table.finish(args.json)
    return 0


def command() -> str:
    return " ".join(["python benchmarks/train_speed.py", *sys.argv[1:]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["fcn_resnet18_d8", "fcn8s_timm"])
    parser.add_argument(
        "--backbone", nargs="+", help="timm backbone(s) of fcn*_timm models, each timed in turn (default: the model's)"
    )
    parser.add_argument("--settings", nargs="+", default=["fp32", "channels_last"], choices=SETTINGS)
    parser.add_argument("--size", type=lambda s: tuple(int(v) for v in s.split("x")), default=(224, 288))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--num-classes", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--config", help="time the training loop of this recipe against its compute (see above)")
    parser.add_argument("--set", nargs="*", default=[], help="overrides of --config for every variant")
    parser.add_argument("--variant", nargs="*", action="append", help="overrides of one loop variant (repeatable)")
    parser.add_argument(
        "--default-malloc", action="store_true", help="keep glibc's default allocator (fcnkit train tunes it)"
    )
    parser.add_argument("--json", type=Path, help="also save the table with its command, commit and machine here")
    args = parser.parse_args(argv)
    if not args.default_malloc:
        tune_malloc()
    if args.config:
        return loop_against_compute(args)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    base = args.settings[0]
    table = ResultsTable(
        {"model": "{}", "setting": "{}", "ms/step": "{:.1f}", "images/s": "{:.1f}", f"vs {base}": "{:.2f}x"},
        command=command(),
    )
    for name, backbone in [(m, b) for m in args.models for b in args.backbone or [None]]:
        steps = {s: make_step(name, s, args, device, backbone) for s in args.settings}
        times = time_interleaved(steps, device, args.warmup, args.rounds)
        for s, ts in times.items():
            med = statistics.median(ts)
            ratio = statistics.median(b / t for b, t in zip(times[base], ts, strict=True))
            label = f"{name} ({backbone})" if backbone else name
            table.add(
                model=label, setting=s, **{"ms/step": med * 1000, "images/s": args.batch / med, f"vs {base}": ratio}
            )
    table.protocol = (
        f"one training step = forward, loss, backward, SGD step, zero_grad; batch {args.batch} of "
        f"{args.size[0]}x{args.size[1]}, {args.num_classes} classes, {args.warmup} warm-up steps per setting, "
        f"{args.rounds} interleaved rounds (median; ratio = median per-round ratio against {args.settings[0]}); "
        f"{platform.machine()}, {device.type}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}"
    )
    table.finish(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
