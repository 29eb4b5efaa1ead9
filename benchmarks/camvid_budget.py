"""CamVid from scratch under a wall-clock budget: fcnkit's recipe against an smp FPN peer, same machine, same data.

Both runs train on CamVid train (367 images) from random weights for ``--minutes`` of training wall-clock
(evaluation excluded) and are evaluated on CamVid val (101 images) at the full 360x480 resolution with the same
code (``fcnkit.engine.evaluate.evaluate``: one confusion matrix over the split, void = 11 ignored).

* fcnkit: ``fcnkit train RECIPE data.root=DATA seed=S schedule.budget_minutes=MINUTES`` (the recipe's own
  evaluation schedule gives the curve; the reported figures are those of the final evaluation, at the end of
  the budget, not of the best epoch).
* peer: ``segmentation_models_pytorch.FPN`` with a ResNet-18 encoder, ``encoder_weights=None``, AdamW (lr 1e-3,
  weight decay 1e-4) with cosine decay over the budget, random scale 0.5-2.0 / 224x288 crop / horizontal flip,
  plain cross-entropy with ignore index 11, batch 8, evaluated every ``--eval-every`` minutes (clock stopped).
  FPN needs sides divisible by 32: val images are zero-padded to 384x480 and the logits cropped back.

    python benchmarks/camvid_budget.py --data ../shared/data/camvid                 # both, seeds 0 and 1, 30 min
    python benchmarks/camvid_budget.py --data ../shared/data/camvid --runs peer --seeds 0 --minutes 20
    python benchmarks/camvid_budget.py --data ../shared/data/camvid --recipe configs/camvid/other.yaml \\
        --set loss.class_weights=null --tag no_class_weights --runs fcnkit            # an ablation row
    python benchmarks/camvid_budget.py --data ../shared/data/camvid --runs fcnkit --tta flip flip_ms  # TTA rows
    python benchmarks/camvid_budget.py --data ../shared/data/camvid --runs fcnkit --tag nw+scale \
        --set loss.class_weights=null 'data.scale_range=[0.5,2.0]' --baseline 'fcnkit no_class_weights'
        # a change on top of another: compared with that run's seeds (and its spread), not the recipe's

**Held-out drives** (``--fold DRIVE``, e.g. ``--fold 0006R0 0001TP``): SegNet's val frames come from drive 0016E5,
whose other frames are in train, so val rewards memory of neighbouring frames. With a fold, both runs train on
train + val without that drive and are evaluated on the drive's frames only (``fcnkit.data`` groups); that
figure is the one to decide on, and the summary gives its mean and spread over seeds for each fold. ``--fold
val`` (the default) is SegNet's split, for reference.

Prints, per run: the evaluation split's mIoU, per-class IoU (the small classes Pole, SignSymbol, Fence, Pedestrian, Bicyclist
included), optimiser steps and training images/s; writes ``summary.json`` and ``miou_vs_minutes.png`` (val mIoU
against training minutes) under ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from fcnkit.apps.benchmark import device_name, provenance
from fcnkit.engine.runlog import read_run_log

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = REPO / "configs" / "camvid" / "budget30_fcn8s_camvid.yaml"
#: this invocation, as a row records it
COMMAND = "python benchmarks/camvid_budget.py " + " ".join(sys.argv[1:])
SMALL = ("Pole", "SignSymbol", "Fence", "Pedestrian", "Bicyclist")


@dataclasses.dataclass
class Row:
    """One run's figures on one fold: an entry of ``summary.json`` and of ``benchmarks/results/camvid_*.json``.

    ``miou``, ``pixel_acc`` and ``iou`` are percentages; ``curve`` is (training minutes, mIoU) at each evaluation;
    ``settings`` the recipe overrides of the run (``test.*`` for test-time passes); ``repeat`` says why a seed was
    measured again (it is shown as ``0r`` and counts once). ``command``, ``commit`` and ``date`` say what wrote it;
    ``note`` says how they were filled for a row recorded before the script wrote them itself.
    """

    run: str
    seed: int
    fold: str
    train_minutes: float
    steps: int
    images_per_s: float
    miou: float
    pixel_acc: float
    iou: dict[str, float]
    curve: list[tuple[float, float]] = dataclasses.field(default_factory=list)
    settings: list[str] = dataclasses.field(default_factory=list)
    cpu: str | None = None
    repeat: str | None = None
    command: str | None = None
    commit: str | None = None
    date: str | None = None
    note: str | None = None

    @classmethod
    def from_dict(cls, data: dict) -> Row:
        """A row from its JSON form; a field this class does not know is an error naming it."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(unknown)} in a CamVid results row ({data.get('run')!r})")
        return cls(**data)

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @property
    def key(self) -> tuple[str, int, str, bool]:
        return self.run, self.seed, self.fold, bool(self.repeat)


def load_rows(path: Path) -> list[Row]:
    return [Row.from_dict(r) for r in json.loads(Path(path).read_text())]


def save_rows(path: Path, rows: Sequence[Row]) -> None:
    Path(path).write_text(json.dumps([r.to_dict() for r in rows], indent=1) + "\n")


class PaddedPeer(nn.Module):
    """The smp model with the fcnkit contract: ``{"out": logits}`` at the input size, ImageNet preprocessing."""

    def __init__(self, net: nn.Module, num_classes: int, multiple: int = 32) -> None:
        super().__init__()
        from fcnkit.preprocessing import IMAGENET

        self.net, self.multiple = net, multiple
        self.preprocessing, self.num_classes, self.classes, self.palette = IMAGENET, num_classes, None, None

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h, w = x.shape[-2:]
        ph, pw = -h % self.multiple, -w % self.multiple
        out = self.net(F.pad(x, (0, pw, 0, ph)) if ph or pw else x)
        return {"out": out[..., :h, :w]}


def fold_data(fold: str) -> dict[str, object]:
    """The dataset splits of a fold: SegNet's train -> val, or train + val without one drive -> that drive."""
    if fold == "val":
        return {"train_split": "train", "val_split": "val", "options": {}, "val_options": None}
    return {
        "train_split": "train+val",
        "val_split": "train+val",
        "options": {"exclude_groups": [fold]},
        "val_options": {"groups": [fold]},
    }


def _record(
    kind: str,
    seed: int,
    val: dict,
    classes: list[str],
    steps: int,
    ips: float,
    minutes: float,
    curve: list[tuple[float, float]],
    fold: str = "val",
) -> Row:
    """One row of the summary from an evaluation (``SegMetrics.as_dict()``) and the run's figures."""
    return Row(
        run=kind,
        seed=seed,
        fold=fold,
        train_minutes=minutes,
        steps=steps,
        images_per_s=ips,
        miou=val["miou"] * 100,
        pixel_acc=val["pixel_acc"] * 100,
        iou={c: float(v) * 100 for c, v in zip(classes, val["iou"], strict=True)},
        curve=curve,
        cpu=device_name(torch.device("cpu")),
        **{k: v for k, v in provenance(COMMAND).items() if k != "machine"},  # the machine is in cpu
    )


def run_fcnkit(args: argparse.Namespace, seed: int, out: Path, fold: str = "val") -> Row:
    """Train (or resume / reuse a finished run in ``out``) and read the figures back from its run log."""
    from fcnkit.config import load_config
    from fcnkit.data import build_dataset
    from fcnkit.engine.train import train

    split = fold_data(fold)
    overrides = [
        *(f"data.{key}={json.dumps(value)}" for key, value in split.items()),
        f"data.root={args.data}",
        f"seed={seed}",
        f"output_dir={out}",
        f"schedule.budget_minutes={args.minutes}",
        f"resume={str(not args.fresh).lower()}",
        *args.set,
    ]
    # with --fresh where a run lives, training goes to a new folder (out-2 ...): read the run it made
    out = train(load_config(str(args.recipe), overrides)).run_dir
    steps, evaluations = read_run_log(out / "metrics.jsonl")
    curve = [(r["train_minutes"], r["val"]["miou"] * 100) for r in evaluations]
    classes = list(build_dataset("camvid", args.data, "val").classes)
    last = steps[-1]  # images_per_s is cumulative over the run (resumed runs included)
    return _record(
        "fcnkit",
        seed,
        evaluations[-1]["val"],
        classes,
        last["step"],
        last["images_per_s"],
        last["train_minutes"],
        curve,
        fold,
    )


def run_peer(args: argparse.Namespace, seed: int, out: Path, fold: str = "val") -> Row:
    import segmentation_models_pytorch as smp

    from fcnkit.data import TrainTransform, build_dataset, pad_collate
    from fcnkit.engine.evaluate import evaluate
    from fcnkit.preprocessing import IMAGENET
    from fcnkit.utils import tune_malloc

    tune_malloc()  # the allocator setting of fcnkit train: the comparison is of recipes and models

    torch.manual_seed(seed)
    split = fold_data(fold)
    val_options = split["val_options"] if split["val_options"] is not None else split["options"]
    val_set = build_dataset("camvid", args.data, split["val_split"], **val_options)
    ignore = val_set.ignore_index
    transform = TrainTransform(IMAGENET, crop_size=(224, 288), scale_range=(0.5, 2.0), hflip=0.5, ignore_index=ignore)
    train_set = build_dataset("camvid", args.data, split["train_split"], transform=transform, **split["options"])
    loader = DataLoader(
        train_set,
        batch_size=8,
        shuffle=True,
        num_workers=args.workers,
        drop_last=True,
        collate_fn=lambda b: pad_collate(b, ignore_index=ignore),
        persistent_workers=args.workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )
    net = smp.FPN(encoder_name="resnet18", encoder_weights=None, classes=train_set.num_classes)
    model = PaddedPeer(net, train_set.num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    budget, spent, steps, images = args.minutes * 60.0, 0.0, 0, 0
    next_eval, curve = args.eval_every * 60.0, []
    out.mkdir(parents=True, exist_ok=True)
    log = (out / "metrics.jsonl").open("w")
    model.train()
    while spent < budget:
        tic = time.perf_counter()
        for batch in loader:
            for group in optimizer.param_groups:  # cosine over the fraction of the budget spent
                group["lr"] = (
                    1e-3 * 0.5 * (1 + math.cos(math.pi * min(1.0, (spent + time.perf_counter() - tic) / budget)))
                )
            loss = F.cross_entropy(model(batch["image"])["out"], batch["label"], ignore_index=ignore)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps, images = steps + 1, images + batch["image"].shape[0]
            now = spent + time.perf_counter() - tic
            if now >= budget or now >= next_eval:
                break
        spent += time.perf_counter() - tic
        if spent >= next_eval or spent >= budget:  # the clock is stopped while evaluating
            metrics = evaluate(model, val_set)
            model.train()
            curve.append((spent / 60, metrics.miou * 100))
            log.write(json.dumps({"step": steps, "train_minutes": spent / 60, "val": metrics.as_dict()}) + "\n")
            log.flush()
            print(f"peer seed {seed}: {spent / 60:.1f} min, step {steps}, val mIoU {metrics.miou * 100:.2f}")
            next_eval += args.eval_every * 60.0
    log.close()
    return _record(
        "smp FPN R18", seed, metrics.as_dict(), list(val_set.classes), steps, images / spent, spent / 60, curve, fold
    )


def seed_label(row: Row) -> str:
    """A row's seed as the tables show it: ``0``, or ``0r`` for a seed run again (a row with a ``repeat`` field)."""
    return f"{row.seed}{'r' * bool(row.repeat)}"


def seed_means(rows: list[Row], value: Callable[[Row], float] = lambda r: r.miou) -> list[float]:
    """``value`` averaged per seed over ``rows`` (one run and fold): a seed run again counts once."""
    by_seed: dict[int, list[float]] = {}
    for r in rows:
        by_seed.setdefault(r.seed, []).append(value(r))
    return [sum(v) / len(v) for v in by_seed.values()]


def run_lines(rows: list[Row]) -> list[str]:
    """One line per row (its steps, speed, mIoU and every class's IoU), then each run's mean over seeds."""
    classes = list(rows[0].iou)
    short = [c[:9] for c in classes]
    w = max(14, *(len(r.run) + 1 for r in rows))
    lines = [
        f"{'run':<{w}}{'fold':>8}{'seed':>5}{'min':>6}{'steps':>7}{'img/s':>7}{'mIoU':>7}  "
        + " ".join(f"{c:>9}" for c in short)
    ]
    for r in rows:
        lines.append(
            f"{r.run:<{w}}{r.fold:>8}{seed_label(r):>5}{r.train_minutes:>6.1f}{r.steps:>7}"
            f"{r.images_per_s:>7.2f}{r.miou:>7.2f}  " + " ".join(f"{r.iou[c]:>9.2f}" for c in classes)
        )
    for kind, fold in dict.fromkeys((r.run, r.fold) for r in rows):
        same = [r for r in rows if r.run == kind and r.fold == fold]
        mious = seed_means(same)
        smalls = seed_means(same, small_classes_mean)
        mean = sum(mious) / len(mious)
        spread = f", seeds {min(mious):.2f} .. {max(mious):.2f}" if len(mious) > 1 else ""
        where = "val (frames of a training drive)" if fold == "val" else f"held-out drive {fold}"
        lines.append(
            f"{kind} on {where}: mean mIoU over {len(mious)} seed(s) {mean:.2f}{spread}; "
            f"mean IoU of {', '.join(SMALL)}: {sum(smalls) / len(smalls):.2f}"
        )
    return lines


def report(rows: list[Row], baseline: str | None = None) -> list[str]:
    """One line per (run, fold) of a results file: each seed's mIoU, the mean over seeds and their spread (max -
    min), the steps and images/s of the runs, and the mean's difference from ``baseline``'s on the same fold (a run
    name, e.g. the recipe as filed). A seed measured again (a row with a ``repeat`` field) is shown as ``0r`` and
    counts once: its runs are averaged before the mean over seeds."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.run, r.fold), []).append(r)

    per_seed = {key: seed_means(same) for key, same in groups.items()}
    means = {key: sum(v) / len(v) for key, v in per_seed.items()}
    w = max(len("run"), *(len(run) for run, _ in groups)) + 1
    lines = [
        f"{'run':<{w}}{'fold':>7} {'seeds':>5}  {'mIoU (seed: value)':<32}{'mean':>6}{'spread':>7}  "
        f"{'steps':>11}  {'img/s':>11}  vs baseline"
    ]
    for (run, fold), same in groups.items():
        same = sorted(same, key=lambda r: (r.seed, bool(r.repeat)))
        values = ", ".join(f"{seed_label(r)}: {r.miou:.2f}" for r in same)
        seeds = per_seed[(run, fold)]
        spread = f"{max(seeds) - min(seeds):.2f}" if len(seeds) > 1 else "-"
        steps = sorted(r.steps for r in same)
        ips = sorted(r.images_per_s for r in same)
        vs = ""
        if baseline is not None and (baseline, fold) in means and run != baseline:
            vs = f"{means[(run, fold)] - means[(baseline, fold)]:+.2f}"
        lines.append(
            f"{run:<{w}}{fold:>7} {len(seeds):>5}  {values:<32}{means[(run, fold)]:>6.2f}{spread:>7}  "
            f"{f'{steps[0]}-{steps[-1]}':>11}  {f'{ips[0]:.1f}-{ips[-1]:.1f}':>11}  {vs}"
        )
    return lines


def merge_commands(commands: list[str]) -> list[str]:
    """``camvid_budget.py`` commands of one fold that differ only in their ``--seeds`` and ``--tta`` values, merged
    into one command each (the script takes several of each), in their first order."""
    merged: dict[str, dict[str, list[str]]] = {}
    for command in commands:
        command, _, comment = command.partition("   #")
        values: dict[str, list[str]] = {"--fold": [], "--seeds": [], "--tta": []}
        rest: list[str] = []
        words = iter(command.split(" "))
        word = next(words, None)
        while word is not None:
            if word in values:  # an option whose values run to the next option
                option, word = word, next(words, None)
                while word is not None and not word.startswith("--"):
                    values[option].append(word)
                    word = next(words, None)
            else:
                rest.append(word)
                word = next(words, None)
        folds = values.pop("--fold")
        key = " ".join(rest + (["--fold", *folds] if folds else [])) + (f"   #{comment}" if comment else "")
        into = merged.setdefault(key, {"--seeds": [], "--tta": []})
        for option, got in values.items():
            into[option] += [v for v in got if v not in into[option]]
    lines = []
    for key, values in merged.items():
        command, _, comment = key.partition("   #")
        options = " ".join(f"{o} {' '.join(v)}" for o, v in values.items() if v)
        lines.append(f"{command} {options}".strip() + (f"   #{comment}" if comment else ""))
    return lines


def small_classes_mean(row: Row) -> float:
    """Mean IoU of the classes in ``SMALL`` (those the row reports)."""
    values = [row.iou[c] for c in SMALL if c in row.iou]
    return sum(values) / len(values)


def ablation_lines(rows: list[Row], baseline: str = "fcnkit") -> list[str]:
    """Each change against the ``baseline`` run of the same seed and fold (default the plain recipe): what it cost or
    gave. A change is a tagged fcnkit run whose overrides include all of the baseline's (``--baseline``)."""
    base, changed = _pairs(rows, baseline)
    if not changed:
        return []
    lines = [f"{'run':<38}{'fold':>8}{'seed':>5}{'mIoU':>7}{'delta':>7}{'small':>7}{'delta':>7}{'img/s':>7}  overrides"]
    for r in [base[k] for k in sorted(base)] + changed:
        b = base[_seed_fold(r)]
        lines.append(
            f"{r.run:<38}{r.fold:>8}{r.seed:>5}{r.miou:>7.2f}{r.miou - b.miou:>+7.2f}"
            f"{small_classes_mean(r):>7.2f}{small_classes_mean(r) - small_classes_mean(b):>+7.2f}"
            f"{r.images_per_s:>7.2f}  {' '.join(r.settings)}"
        )
    return lines + ablation_summary(rows, baseline)


def _seed_fold(row: Row) -> tuple[int, str]:
    return row.seed, row.fold


def _pairs(rows: list[Row], baseline: str) -> tuple[dict[tuple[int, str], Row], list[Row]]:
    """The baseline's rows by (seed, fold), and the rows that change it (a superset of its overrides) and have a
    baseline row of their seed and fold."""
    base = {_seed_fold(r): r for r in rows if r.run == baseline}
    kept = {s for b in base.values() for s in b.settings}
    changed = [
        r
        for r in rows
        if r.run.startswith("fcnkit") and r.run != baseline and _seed_fold(r) in base and kept <= set(r.settings)
    ]
    return base, changed


def ablation_summary(rows: list[Row], baseline: str = "fcnkit") -> list[str]:
    """Per change and fold: the mean mIoU delta over the seeds both runs have, against the baseline's seed spread.

    A change counts as a gain or a loss only when its mean delta exceeds the spread (max - min) of the baseline's
    own seeds on that fold; otherwise it is noise. With one seed of the baseline there is no spread to judge by.
    """
    lines = []
    base, changed = _pairs(rows, baseline)
    whose = "the recipe's" if baseline == "fcnkit" else f"{baseline}'s"
    for kind, fold in dict.fromkeys((r.run, r.fold) for r in changed):
        pairs = [(r, base[(r.seed, fold)]) for r in changed if r.run == kind and r.fold == fold]
        deltas = [r.miou - b.miou for r, b in pairs]
        mean = sum(deltas) / len(deltas)
        own = [b.miou for (s, f), b in base.items() if f == fold]
        spread = max(own) - min(own) if len(own) > 1 else None
        if spread is None:
            verdict = f"one seed of {baseline}: no spread to judge by"
        elif abs(mean) <= spread:
            verdict = f"within {whose} seed spread ({spread:.2f}): noise"
        else:
            verdict = f"{'gain' if mean > 0 else 'loss'} beyond {whose} seed spread ({spread:.2f})"
        lines.append(
            f"{kind} on {fold}: mean delta {mean:+.2f} over {len(deltas)} seed(s) "
            f"({', '.join(f'{d:+.2f}' for d in deltas)}); {verdict}"
        )
    return lines


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    colors: dict[str, str] = {}  # one colour per run, one line style per seed
    for r in rows:
        if r.curve:
            xs, ys = zip(*r.curve, strict=True)
            ax.plot(
                xs,
                ys,
                marker="o",
                ms=3,
                color=colors.setdefault(r.run, f"C{len(colors)}"),
                linestyle=("-", "--", ":", "-.")[r.seed % 4],
                label=f"{r.run} seed {r.seed}" + (f" ({r.fold} held out)" if r.fold != "val" else ""),
            )
    ax.set_xlabel("training minutes (evaluation excluded)")
    ax.set_ylabel("CamVid mIoU (%), 360x480: val, or the held-out drive")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


#: the test-time inference of ``--tta``: name -> InferenceConfig fields
TTA = {
    "flip": {"flip": True},
    "flip_ms": {"flip": True, "scales": [0.75, 1.0, 1.25]},
    # the training crops are drawn at scales 0.75-1.5: these reach its upper end too (ten and six passes)
    "flip_ms5": {"flip": True, "scales": [0.5, 0.75, 1.0, 1.25, 1.5]},
    "flip_ms_up": {"flip": True, "scales": [1.0, 1.25, 1.5]},
    # one scale further up: the small classes (poles, signs, pedestrians) are a few pixels wide at scale 1
    "flip_ms_up4": {"flip": True, "scales": [1.0, 1.25, 1.5, 1.75]},
    # up to twice the frame's size, with and without the frame's own scale
    "flip_ms_up5": {"flip": True, "scales": [1.0, 1.25, 1.5, 1.75, 2.0]},
    "flip_ms_hi": {"flip": True, "scales": [1.25, 1.5, 1.75, 2.0]},
    # one pass at 1.25: the crops' mean training scale is 1.125 (0.75-1.5), so objects look larger in training
    # than in a frame at scale 1 (the train/test resolution discrepancy of FixRes, Touvron et al. 2019)
    "s1.25": {"scales": [1.25]},
    "flip_s1.25": {"flip": True, "scales": [1.25]},
}


def tta_row(args: argparse.Namespace, recipe_row: Row, name: str, run_dir: Path) -> Row:
    """The fcnkit run of ``run_dir`` (its final EMA weights, those its last evaluation scored) evaluated again
    on its fold with the test-time inference ``TTA[name]``: an ablation row that needs no training, named after the
    run (``fcnkit tta_flip``, ``fcnkit no_class_weights tta_flip``)."""
    from fcnkit.checkpoint import load_checkpoint
    from fcnkit.config import InferenceConfig
    from fcnkit.data import build_dataset
    from fcnkit.engine.evaluate import evaluate

    split = fold_data(recipe_row.fold)
    options = split["val_options"] if split["val_options"] is not None else split["options"]
    val_set = build_dataset("camvid", args.data, split["val_split"], **options)
    model = load_checkpoint(run_dir / "last.pth")  # the EMA weights when the run kept them (weights="auto")
    metrics = evaluate(model, val_set, inference=InferenceConfig(**TTA[name]))
    row = _record(
        f"{recipe_row.run} tta_{name}",
        recipe_row.seed,
        metrics.as_dict(),
        list(val_set.classes),
        recipe_row.steps,
        recipe_row.images_per_s,
        recipe_row.train_minutes,
        [],
        recipe_row.fold,
    )
    row.repeat = recipe_row.repeat
    row.settings = list(recipe_row.settings) + [f"test.{key}={json.dumps(value)}" for key, value in TTA[name].items()]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="the CamVid folder (train/, trainannot/, val/, valannot/)")
    parser.add_argument(
        "--report",
        nargs="+",
        type=Path,
        metavar="JSON",
        help="train nothing: summarise these results files (summary.json or benchmarks/results/camvid_*.json) per "
        "run and fold, against --baseline when it is one of their runs",
    )
    parser.add_argument(
        "--show",
        choices=["summary", "runs", "ablation", "commands"],
        default="summary",
        help="with --report: one line per run and fold (summary), per row with every class (runs), each change "
        "against --baseline (ablation), or the commands that recorded the rows (commands)",
    )
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--runs", nargs="+", default=["fcnkit", "peer"], choices=["fcnkit", "peer"])
    parser.add_argument(
        "--fold",
        nargs="+",
        default=["val"],
        metavar="DRIVE",
        help="val (SegNet's split), or a drive to hold out of train + val and evaluate on (0006R0, 0001TP)",
    )
    parser.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of the fcnkit recipe")
    parser.add_argument("--tag", default="", help="suffix of the fcnkit run's name (ablations)")
    parser.add_argument(
        "--baseline",
        default="fcnkit",
        metavar="RUN",
        help="the run the ablation table compares changes with (default the recipe; e.g. 'fcnkit no_class_weights' "
        "to screen changes made on top of it, each run with its overrides too)",
    )
    parser.add_argument(
        "--tta",
        nargs="+",
        default=[],
        choices=sorted(TTA),
        help="also evaluate the fcnkit runs with test-time inference: "
        + "; ".join(f"{name} = {', '.join(f'{k} {v}' for k, v in cfg.items())}" for name, cfg in TTA.items()),
    )
    parser.add_argument(
        "--repeat",
        metavar="REASON",
        help="a seed measured again (another machine, another day): keep the earlier row beside the new one, which "
        "records REASON; the report shows it as 0r and counts the seed once",
    )
    parser.add_argument("--eval-every", type=float, default=5.0, help="minutes between the peer's evaluations")
    parser.add_argument("--workers", type=int, default=2, help="the peer's data-loading processes")
    parser.add_argument("--out", type=Path, default=Path("runs/camvid_budget"))
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="retrain fcnkit runs from scratch (default: resume an interrupted run in --out, or reuse a finished one)",
    )
    args = parser.parse_args(argv)
    if args.report:
        rows = [row for path in args.report for row in load_rows(path)]
        show = {"summary": lambda: report(rows, args.baseline), "runs": lambda: run_lines(rows)}
        show["ablation"] = lambda: ablation_lines(rows, args.baseline)
        show["commands"] = lambda: merge_commands([r.command or f"# {r.run}: no command recorded" for r in rows])
        for line in show[args.show]():
            print(line)
        return 0
    if args.data is None:
        parser.error("--data is required (unless --report)")
    args.out.mkdir(parents=True, exist_ok=True)
    summary_path = args.out / "summary.json"
    rows = load_rows(summary_path) if summary_path.exists() else []
    for fold in args.fold:
        for seed in args.seeds:
            for kind in args.runs:
                tag = "_" + args.tag if args.tag and kind == "fcnkit" else ""
                name = f"{kind}{tag}_seed{seed}" + (f"_heldout_{fold}" if fold != "val" else "")
                print(f"== {name}: {args.minutes:g} min of training", flush=True)
                row = (run_fcnkit if kind == "fcnkit" else run_peer)(args, seed, args.out / name, fold)
                if kind == "fcnkit" and args.tag:
                    row.run = f"fcnkit {args.tag}"
                row.settings = args.set if kind == "fcnkit" else []
                row.repeat = args.repeat
                # a run measured again replaces its row, unless --repeat keeps both
                rows = [r for r in rows if r.key != row.key] + [row]
                save_rows(summary_path, rows)
                if kind == "fcnkit":
                    for tta in args.tta:
                        extra = tta_row(args, row, tta, args.out / name)
                        rows = [r for r in rows if r.key != extra.key] + [extra]
                        save_rows(summary_path, rows)
    for line in run_lines(rows) + ablation_lines(rows, args.baseline):
        print(line)
    plot(rows, args.out / "miou_vs_minutes.png")
    print(f"wrote {summary_path} and {args.out / 'miou_vs_minutes.png'}")
    print(
        f"protocol: CamVid train 367 images -> val 101 images, or train + val without a drive -> that drive "
        f"({', '.join(args.fold)}), at 360x480, void 11 ignored, {args.minutes:g} min of "
        f"training wall-clock per run (evaluation excluded), from scratch, {platform.machine()}, "
        f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
