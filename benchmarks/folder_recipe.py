"""The folder CPU recipe on CamVid converted to the folder format, against the CamVid recipe's held-out-drive figure.

A user's own images reach fcnkit in the folder format (``classes.yaml``, ``images/``, ``masks/``). This converts
CamVid (SegNet's train + val, 468 frames of three drives) to that format without copying a pixel (symbolic links
to the PNGs, a ``classes.yaml`` with CamVid's classes, colours and void value 11, ``groups.txt`` naming each
frame's drive, and ``splits/train.txt`` / ``val.txt`` holding out one whole drive), then runs exactly what the
walkthrough (docs/own-data.md) tells a user to run:

    fcnkit train configs/folder/cpu_budget30_fcn4s_regnetx008.yaml data.root=FOLDER seed=S output_dir=RUN
    fcnkit eval RUN/last.pth --json ...               # the model as shipped: EMA weights, the recipe's passes
    fcnkit eval RUN/last.pth --tta none --json ...    # one pass

and compares the held-out drive's mIoU with the CamVid recipe's (``benchmarks/results/camvid_x008.json``: the same
settings trained through the ``camvid`` dataset by ``benchmarks/camvid_budget.py``, 0006R0 46.05 with the passes
over two seeds, 47.01 / 45.08). The figures are those of the run's end (``last.pth``), not of its best epoch,
which would be chosen on the held-out drive.

    python benchmarks/folder_recipe.py --data ../shared/data/camvid --out runs/folder_recipe --fold 0006R0 --seeds 1
    python benchmarks/folder_recipe.py --report benchmarks/results/folder_recipe.json \
        --pair benchmarks/results/folder_recipe_camvid_pair.json

Writes one row per seed to ``--results`` (default ``benchmarks/results/folder_recipe.json``), with the command,
the commit, the machine and the date. Training is timed by its own clock; nothing else should use the CPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "folder" / "cpu_budget30_fcn4s_regnetx008.yaml"
CAMVID_RESULTS = REPO / "benchmarks" / "results" / "camvid_x008.json"
CAMVID_RUN = "fcnkit nw+regnetx_008+image_norm+bf16+enet+fcn4s+gamma0.5"


def convert(camvid: Path, out: Path, fold: str) -> Path:
    """CamVid (SegNet layout) as a folder dataset holding out drive ``fold``; returns the folder."""
    from fcnkit.data import build_dataset
    from fcnkit.data.camvid import CAMVID_IGNORE_INDEX, drive_of

    dataset = build_dataset("camvid", str(camvid), "train+val")
    for sub in ("images", "masks", "splits"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    train, held = [], []
    for files in dataset.samples:
        for folder, source in (("images", files.image), ("masks", files.label)):
            link = out / folder / Path(source).name
            if not link.is_symlink():
                link.symlink_to(Path(source).resolve())
        (held if drive_of(files.name) == fold else train).append(files.name)
    if not held:
        raise SystemExit(f"no frame of drive {fold!r} in {camvid}")
    (out / "splits" / "train.txt").write_text("".join(f"{s}\n" for s in train))
    (out / "splits" / "val.txt").write_text("".join(f"{s}\n" for s in held))
    (out / "groups.txt").write_text("".join(f"{s.name} {drive_of(s.name)}\n" for s in dataset.samples))
    colours = ", ".join(f"[{r}, {g}, {b}]" for r, g, b in dataset.palette)
    (out / "classes.yaml").write_text(
        f"classes: [{', '.join(dataset.classes)}]\n"
        f"colors: [{colours}]  # for drawing: the masks are index PNGs\n"
        f"ignore_index: {CAMVID_IGNORE_INDEX}\n"
    )
    return out


def fcnkit(*args: str) -> None:
    command = [sys.executable, "-m", "fcnkit", *args]
    print("$ " + " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True, cwd=REPO)


def run_seed(args: argparse.Namespace, folder: Path, seed: int) -> dict:
    from fcnkit.apps.benchmark import provenance

    run = args.out / f"{args.fold}_seed{seed}"
    train_args = [str(RECIPE), f"data.root={folder}", f"seed={seed}", f"output_dir={run}", *args.set]
    fcnkit("train", *train_args)
    figures = {}
    for name, extra in (("passes", []), ("one_pass", ["--tta", "none"])):
        path = run / f"eval_{name}.json"
        fcnkit("eval", str(run / "last.pth"), "--workers", "0", "--json", str(path), *extra)
        figures[name] = json.loads(path.read_text())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    last = [r for r in records if "loss_total" in r][-1]
    from fcnkit.data import build_dataset

    classes = build_dataset("folder", str(folder), "val").classes
    return {
        "run": "folder cpu_budget30_fcn4s_regnetx008",
        "fold": args.fold,
        "seed": seed,
        "miou": figures["passes"]["miou"] * 100,
        "miou_one_pass": figures["one_pass"]["miou"] * 100,
        "iou": {c: float(v) * 100 for c, v in zip(classes, figures["passes"]["iou"], strict=True)},
        "steps": last["step"],
        "images_per_s": last["images_per_s"],
        "train_minutes": last["train_minutes"],
        "train_command": "fcnkit train " + " ".join(train_args),
        **provenance("python benchmarks/folder_recipe.py " + " ".join(sys.argv[1:])),
    }


def camvid_reference(fold: str) -> dict[str, list[float]]:
    """The CamVid recipe's seeds on ``fold``: mIoU with the passes and with one pass."""
    rows = json.loads(CAMVID_RESULTS.read_text())
    same = [r for r in rows if r.get("fold") == fold]
    return {
        "passes": [r["miou"] for r in same if r["run"] == f"{CAMVID_RUN} tta_flip_ms_up"],
        "one_pass": [r["miou"] for r in same if r["run"] == CAMVID_RUN],
    }


def report(rows: list[dict]) -> list[str]:
    lines = []
    for fold in dict.fromkeys(r["fold"] for r in rows):
        ours = [r for r in rows if r["fold"] == fold]
        ref = camvid_reference(fold)
        for key, label in (("miou", "passes"), ("miou_one_pass", "one_pass")):
            mine = [r[key] for r in ours]
            theirs = ref[label]
            spread = max(theirs) - min(theirs) if len(theirs) > 1 else float("nan")
            mean_ref = sum(theirs) / len(theirs) if theirs else float("nan")
            mean = sum(mine) / len(mine)
            lines.append(
                f"{fold} {label:<8} folder recipe {', '.join(f'{v:.2f}' for v in mine)} (mean {mean:.2f}); CamVid "
                f"recipe {', '.join(f'{v:.2f}' for v in theirs)} (mean {mean_ref:.2f}, seed spread {spread:.2f}); "
                f"difference {mean - mean_ref:+.2f}: "
                + ("within the seed spread" if abs(mean - mean_ref) <= spread else "outside the seed spread")
            )
        speeds = ", ".join(f"{r['images_per_s']:.1f}" for r in ours)
        steps = ", ".join(str(r["steps"]) for r in ours)
        lines.append(f"{fold} steps {steps} at {speeds} images/s on {ours[0]['machine']}")
    return lines


def paired(rows: list[dict], pair: list[dict]) -> list[str]:
    """Each folder-recipe seed against the CamVid-format run of the same seed and fold from ``pair`` (a
    ``benchmarks/camvid_budget.py`` summary made on the same machine: the comparison that machine speed, which sets
    the steps 30 minutes buy, does not bias)."""
    lines = []
    for r in rows:
        same = {p["run"]: p for p in pair if p.get("fold") == r["fold"] and p.get("seed") == r["seed"]}
        if "fcnkit" not in same:
            continue
        one, passes = same["fcnkit"], same.get("fcnkit tta_flip_ms_up")
        text = f"{r['fold']} seed {r['seed']} same machine: folder recipe {r['miou']:.2f} / {r['miou_one_pass']:.2f}"
        if passes is not None:
            text += f", CamVid format {passes['miou']:.2f} / {one['miou']:.2f} (passes / one pass)"
            text += f"; difference {r['miou'] - passes['miou']:+.2f} / {r['miou_one_pass'] - one['miou']:+.2f}"
        lines.append(text + f"; steps {r['steps']} / {one['steps']}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="CamVid in SegNet's layout (train/, trainannot/, ...)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "folder_recipe")
    parser.add_argument("--fold", default="0006R0", help="the drive held out (default 0006R0)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--set", nargs="*", default=[], help="extra overrides for fcnkit train")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "folder_recipe.json")
    parser.add_argument("--report", type=Path, help="print the comparison of a results file and exit")
    parser.add_argument(
        "--pair",
        type=Path,
        help="with --report: a camvid_budget.py summary.json of the same machine to pair seeds with",
    )
    args = parser.parse_args()
    if args.report:
        rows = json.loads(args.report.read_text())
        print("\n".join(report(rows)))
        if args.pair:
            print("\n".join(paired(rows, json.loads(args.pair.read_text()))))
        return
    if args.data is None:
        parser.error("--data is required to run")
    args.out = args.out.resolve()
    folder = convert(args.data.resolve(), args.out / f"camvid_folder_{args.fold}", args.fold)
    rows = json.loads(args.results.read_text()) if args.results.exists() else []
    for seed in args.seeds:
        rows.append(run_seed(args, folder, seed))
        args.results.write_text(json.dumps(rows, indent=1) + "\n")
    print("\n".join(report(rows)))


if __name__ == "__main__":
    main()
