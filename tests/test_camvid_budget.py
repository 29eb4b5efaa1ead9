"""benchmarks/camvid_budget.py end to end on a tiny CamVid-layout folder, a few seconds per run."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from fcnkit import Predictor
from fcnkit.config import InferenceConfig

pytest.importorskip("segmentation_models_pytorch")
pytest.importorskip("matplotlib")

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
           "Bicyclist"]  # fmt: skip


def _script():
    spec = importlib.util.spec_from_file_location("camvid_budget", REPO / "benchmarks" / "camvid_budget.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


#: frame names of the tiny CamVid, by split: SegNet's drives in miniature (val's drive also has train frames)
FRAMES = {
    "train": [f"{drive}_{i:04d}" for drive, n in (("0001TP", 3), ("0006R0", 3), ("0016E5", 2)) for i in range(n)],
    "val": ["0016E5_1000", "0016E5_1001"],
}


def _tiny_camvid(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, names in FRAMES.items():
        lines = []
        for name in names:
            label = np.repeat(np.arange(12, dtype=np.uint8), 8)[None].repeat(40, 0)[:, :88]  # 40 x 88, all 12 values
            image = (rng.integers(0, 40, (40, 88, 3)) + label[..., None] * 18).astype(np.uint8)
            for folder, array in ((split, image), (f"{split}annot", label)):
                (root / folder).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(root / folder / f"{name}.png")
            lines.append(f"{split}/{name}.png {split}annot/{name}.png")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.slow
def test_both_runs_keep_the_budget_and_report_every_class(tmp_path, capsys):
    data = _tiny_camvid(tmp_path / "camvid")
    out = tmp_path / "out"
    minutes = 0.04  # 2.4 s of training each
    argv = ["--data", str(data), "--minutes", str(minutes), "--seeds", "0", "--out", str(out), "--eval-every", "1",
            "--workers", "0", "--set", "data.workers=0", "eval_every=1", "pictures=0", "ema_decay=null"]  # fmt: skip
    assert _script().main(argv) == 0
    rows = json.loads((out / "summary.json").read_text())
    assert [(r["run"], r["seed"]) for r in rows] == [("fcnkit", 0), ("smp FPN R18", 0)]
    for r in rows:
        assert list(r["iou"]) == CLASSES
        assert r["train_minutes"] >= minutes and r["steps"] >= 1 and r["images_per_s"] > 0
        # mIoU is the mean over the classes present (every class is in the tiny val split)
        assert r["miou"] == pytest.approx(sum(r["iou"].values()) / 11, abs=1e-6)
        assert r["curve"] and r["curve"][-1][1] == pytest.approx(r["miou"], abs=1e-6)
        assert all(not math.isnan(v) for v in r["iou"].values())
    assert (out / "miou_vs_minutes.png").stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "Pole" in printed and "mean IoU of Pole, SignSymbol, Fence, Pedestrian, Bicyclist" in printed
    # the fcnkit figures are those of the final weights (last.pth without EMA), recounted here with numpy
    predictor = Predictor(out / "fcnkit_seed0" / "last.pth", device="cpu", optimize=False)
    iou = _recounted_iou(predictor, data, "val", FRAMES["val"])
    assert rows[0]["miou"] == pytest.approx(iou.mean() * 100, abs=RECOUNT_TOLERANCE)
    assert [rows[0]["iou"][c] for c in CLASSES] == pytest.approx(list(iou * 100), abs=20 * RECOUNT_TOLERANCE)
    resolved = (out / "fcnkit_seed0" / "config.yaml").read_text()
    assert f"budget_minutes: {minutes}" in resolved and "metrics.jsonl" in {
        p.name for p in (out / "fcnkit_seed0").iterdir()
    }


#: mIoU points the recount may differ by: the benchmark's evaluate() and the Predictor normalise the image through
#: different float operations, and an almost untrained model has near-tied logits, so a few of the 7040 val pixels can
#: take the other class (a CI run saw 0.0012 points). A figure from other weights or another count is off by points.
RECOUNT_TOLERANCE = 0.05


def _recounted_iou(predictor, data: Path, split: str, names: list[str]) -> np.ndarray:
    """Per-class IoU of ``predictor`` on these frames, counted with numpy."""
    confusion = np.zeros((11, 11), dtype=np.int64)
    for name in names:
        label = np.array(Image.open(data / f"{split}annot" / f"{name}.png")).astype(np.int64)
        pred = predictor.predict(data / split / f"{name}.png").label.numpy()
        keep = label != 11
        confusion += np.bincount(label[keep] * 11 + pred[keep], minlength=121).reshape(11, 11)
    return np.diag(confusion) / (confusion.sum(0) + confusion.sum(1) - np.diag(confusion))


@pytest.mark.slow
def test_held_out_drive_fold_trains_without_it_and_scores_only_it(tmp_path, capsys):
    data = _tiny_camvid(tmp_path / "camvid")
    out = tmp_path / "out"
    argv = ["--data", str(data), "--minutes", "0.03", "--seeds", "0", "--out", str(out), "--eval-every", "1",
            "--workers", "0", "--fold", "0006R0", "--set", "data.workers=0", "pictures=0", "ema_decay=null",
            "--tag", "small", "--tta", "flip"]  # fmt: skip
    assert _script().main(argv) == 0
    rows = json.loads((out / "summary.json").read_text())
    assert [(r["run"], r["seed"], r["fold"]) for r in rows] == [
        ("fcnkit small", 0, "0006R0"),
        ("fcnkit small tta_flip", 0, "0006R0"),
        ("smp FPN R18", 0, "0006R0"),
    ]
    assert rows[1]["settings"] == ["data.workers=0", "pictures=0", "ema_decay=null", "test.flip=true"]
    run_dir = out / "fcnkit_small_seed0_heldout_0006R0"
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]
    assert resolved["train_split"] == "train+val" and resolved["options"] == {"exclude_groups": ["0006R0"]}
    assert resolved["val_options"] == {"groups": ["0006R0"]}
    # the reported figures are the final weights' IoU on the held-out drive's three frames, recounted with numpy,
    # without and with flipped inference
    held_out = [n for n in FRAMES["train"] if n.startswith("0006R0")]
    for row, inference in ((rows[0], None), (rows[1], InferenceConfig(flip=True))):
        predictor = Predictor(run_dir / "last.pth", device="cpu", optimize=False, inference=inference)
        iou = _recounted_iou(predictor, data, "train", held_out)
        assert row["miou"] == pytest.approx(np.nanmean(iou) * 100, abs=RECOUNT_TOLERANCE)
    printed = capsys.readouterr().out
    assert "fcnkit small on held-out drive 0006R0: mean mIoU over 1 seed(s)" in printed
    assert "smp FPN R18 on held-out drive 0006R0" in printed


def _row(run, seed, miou, small_iou, ips=10.0, settings=(), fold="val", steps=100, **extra):
    iou = {c: (small_iou if c in ("Pole", "SignSymbol", "Fence", "Pedestrian", "Bicyclist") else 80.0) for c in CLASSES}
    fields = {"run": run, "seed": seed, "fold": fold, "train_minutes": 1.0, "steps": steps, "images_per_s": ips}
    return {**fields, "miou": miou, "pixel_acc": 90.0, "iou": iou, "settings": list(settings), **extra}


def test_ablation_rows_are_compared_with_the_recipe_of_the_same_seed():
    script = _script()
    rows = [
        _row("fcnkit", 0, 50.0, 20.0),
        _row("smp FPN R18", 0, 39.0, 1.0),
        _row("fcnkit", 1, 48.0, 10.0),
        _row("fcnkit no_ema", 0, 45.5, 12.5, settings=["ema_decay=null"]),
        _row("fcnkit nchw", 1, 48.25, 10.0, ips=8.0, settings=["channels_last=false"]),
        _row("fcnkit other", 2, 30.0, 1.0),
    ]
    rows = [script.Row.from_dict(r) for r in rows]
    assert script.small_classes_mean(rows[3]) == 12.5
    lines = script.ablation_lines(rows)
    # header, the recipe's two seeds, two changes (seed 2 has no recipe row, the peer none), a summary per change
    assert len(lines) == 7
    assert lines[3].split() == [
        "fcnkit", "no_ema", "val", "0", "45.50", "-4.50", "12.50", "-7.50", "10.00", "ema_decay=null"
    ]  # fmt: skip
    assert " ".join(lines[4].split()) == "fcnkit nchw val 1 48.25 +0.25 10.00 +0.00 8.00 channels_last=false"
    assert lines[1].split()[:6] == ["fcnkit", "val", "0", "50.00", "+0.00", "20.00"]
    # the recipe's seeds are 2.00 apart: -4.50 is a loss beyond it, +0.25 noise
    assert lines[5] == (
        "fcnkit no_ema on val: mean delta -4.50 over 1 seed(s) (-4.50); loss beyond the recipe's seed spread (2.00)"
    )
    assert (
        lines[6]
        == "fcnkit nchw on val: mean delta +0.25 over 1 seed(s) (+0.25); within the recipe's seed spread (2.00): noise"
    )


def test_changes_on_top_of_another_run_are_compared_with_it():
    """--baseline: the table pairs each run that keeps the baseline's overrides with the baseline of its seed."""
    script = _script()
    nw = "loss.class_weights=null"
    rows = [
        _row("fcnkit", 0, 30.0, 5.0),
        _row("fcnkit", 1, 34.0, 5.0),
        _row("fcnkit nw", 0, 37.0, 7.0, settings=[nw]),
        _row("fcnkit nw", 1, 38.0, 8.0, settings=[nw]),
        _row("fcnkit nw+scale", 0, 39.5, 9.0, settings=[nw, "data.scale_range=[0.5,2.0]"]),
        _row("fcnkit nw+scale", 1, 38.5, 9.0, settings=[nw, "data.scale_range=[0.5,2.0]"]),
        _row("fcnkit jitter", 0, 31.0, 5.0, settings=["data.color_jitter=0.4"]),  # not on top of nw: left out
    ]
    rows = [script.Row.from_dict(r) for r in rows]
    lines = script.ablation_lines(rows, "fcnkit nw")
    assert [line.split()[:4] for line in lines[1:5]] == [
        ["fcnkit", "nw", "val", "0"],
        ["fcnkit", "nw", "val", "1"],
        ["fcnkit", "nw+scale", "val", "0"],
        ["fcnkit", "nw+scale", "val", "1"],
    ]
    assert lines[3].split()[4:8] == ["39.50", "+2.50", "9.00", "+2.00"]
    # deltas +2.50 and +0.50, mean +1.50, against nw's own spread 1.00 (not the recipe's 4.00)
    assert lines[5:] == [
        "fcnkit nw+scale on val: mean delta +1.50 over 2 seed(s) (+2.50, +0.50); "
        "gain beyond fcnkit nw's seed spread (1.00)"
    ]
    # against the recipe (spread 4.00) every tagged run is a change, nw+scale a gain of +7.00
    summary = script.ablation_summary(rows)
    assert summary[1] == (
        "fcnkit nw+scale on val: mean delta +7.00 over 2 seed(s) (+9.50, +4.50); "
        "gain beyond the recipe's seed spread (4.00)"
    )
    assert len(summary) == 3 and summary[2].startswith("fcnkit jitter on val: mean delta +1.00 over 1 seed(s)")


def test_a_results_row_with_a_field_no_script_writes_is_refused():
    script = _script()
    row = _row("fcnkit", 0, 50.0, 20.0, curve=[[1.0, 40.0]])
    assert script.Row.from_dict(row).to_dict() == row  # round trip
    with pytest.raises(ValueError, match=r"unknown field.*pair.*'fcnkit'"):
        script.Row.from_dict({**row, "pair": "a note written by hand"})


def test_report_averages_a_repeated_seed_before_the_mean_over_seeds(tmp_path, capsys):
    """--report: per run and fold, the seeds' values, their mean (a repeated seed counted once) and spread, and the
    difference from the baseline's mean on the same fold; nothing is trained."""
    script = _script()

    def row(run, seed, miou, fold="0006R0", steps=100, ips=10.0, **extra):
        return _row(run, seed, miou, 10.0, ips=ips, fold=fold, steps=steps, **extra)

    old = [row("fcnkit (as filed)", 0, 34.0, steps=3000, ips=13.0), row("fcnkit (as filed)", 1, 37.0, ips=14.5)]
    new = [
        row("fcnkit new", 0, 41.0, steps=3400),
        row("fcnkit new", 0, 42.0, steps=3100, repeat="again on another machine"),
        row("fcnkit new", 1, 44.0, steps=3300, ips=12.5),
        row("fcnkit new", 0, 40.0, fold="0001TP"),  # no baseline on this fold: no difference
    ]
    paths = [tmp_path / "old.json", tmp_path / "new.json"]
    for path, rows in zip(paths, (old, new), strict=True):
        path.write_text(json.dumps(rows))
    assert script.main(["--report", *map(str, paths), "--baseline", "fcnkit (as filed)"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[0].split()[:4] == ["run", "fold", "seeds", "mIoU"]
    # as filed: (34 + 37) / 2 = 35.50, spread 3.00
    assert " ".join(lines[1].split()[4:]) == "2 0: 34.00, 1: 37.00 35.50 3.00 100-3000 13.0-14.5"
    # seed 0 = (41 + 42) / 2 = 41.5, seed 1 = 44: mean 42.75, spread 2.50, +7.25 over 35.50
    assert (
        " ".join(lines[2].split()[2:]) == "0006R0 2 0: 41.00, 0r: 42.00, 1: 44.00 42.75 2.50 3100-3400 10.0-12.5 +7.25"
    )
    assert " ".join(lines[3].split()[2:]) == "0001TP 1 0: 40.00 40.00 - 100-100 10.0-10.0"
    with pytest.raises(SystemExit):
        script.main([])  # neither --data nor --report


def test_per_class_table_marks_a_repeated_seed_and_counts_it_once():
    """The per-class table shows a repeat as ``0r``; its summary line averages the repeat with its seed first."""
    script = _script()
    rows = [
        {**_row("fcnkit new", 0, 41.0, 10.0), "repeat": None},
        {**_row("fcnkit new", 0, 42.0, 10.0), "repeat": "again"},
        {**_row("fcnkit new", 1, 44.0, 10.0)},
    ]
    for r in rows:
        r.update(fold="0006R0", steps=100, train_minutes=30.0)
    lines = script.run_lines([script.Row.from_dict(r) for r in rows])
    assert [line.split()[3] for line in lines[1:4]] == ["0", "0r", "1"]
    # seeds (41 + 42) / 2 = 41.5 and 44: mean 42.75 over 2 seeds, not 42.33 over 3
    assert "mean mIoU over 2 seed(s) 42.75, seeds 41.50 .. 44.00" in lines[4]
