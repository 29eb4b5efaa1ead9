"""Configs, the training loop end to end, SIGKILL + resume, NaN handling, torchrun, and `fcnkit eval`."""

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

import fcnkit
from fcnkit.cli import main
from fcnkit.config import ConfigError, load_config
from fcnkit.data import build_dataset
from fcnkit.engine.evaluate import evaluate
from fcnkit.engine.train import train
from fcnkit.errors import TrainingDiverged
from synthetic_data import make_folder_dataset

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "configs").rglob("*.yaml"))


def tiny_config(root: Path, out: Path, *extra: str):
    overrides = [
        "model.name=fcn8s_timm", "model.options={backbone: resnet18, upsample: bilinear}",
        "data.name=folder", f"data.root={root}", "data.crop_size=[32, 32]", "data.batch_size=4", "data.workers=0",
        "optim.name=adamw", "optim.lr=0.003", "optim.weight_decay=0.0", "schedule.name=cosine", "schedule.epochs=2",
        f"output_dir={out}", "log_every=1", "seed=3", *extra,
    ]  # fmt: skip
    return load_config(None, overrides)


@pytest.fixture(scope="module")
def folder_data(tmp_path_factory):
    return make_folder_dataset(tmp_path_factory.mktemp("synthetic"))


# ------------------------------------------------------------------------------------------------ configs


def test_unknown_key_is_named_with_suggestion(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'optim\.lrr'.*optim\.lr"):
        load_config(None, ["optim.lrr=0.1"])
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("dta:\n  name: camvid\n")
    with pytest.raises(ConfigError, match=r"'dta'.*Did you mean: data"):
        load_config(cfg_file)


def test_overrides_are_typed_and_base_is_merged(tmp_path):
    (tmp_path / "base.yaml").write_text("optim: {lr: 0.1, momentum: 0.5}\nseed: 1\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\noptim: {lr: 0.2}\n")
    cfg = load_config(tmp_path / "child.yaml", ["seed=7", "data.crop_size=[64, 96]", "optim.weight_decay=0"])
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.seed) == (0.2, 0.5, 7)
    assert cfg.data.crop_size == [64, 96] and isinstance(cfg.optim.weight_decay, float)
    (tmp_path / "grandchild.yaml").write_text("base: child.yaml\nseed: 3\n")
    cfg = load_config(tmp_path / "grandchild.yaml")
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.seed) == (0.2, 0.5, 3)
    (tmp_path / "loop_a.yaml").write_text("base: loop_b.yaml\n")
    (tmp_path / "loop_b.yaml").write_text("base: loop_a.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(tmp_path / "loop_a.yaml")
    with pytest.raises(ConfigError, match="seed: expected an integer"):
        load_config(None, ["seed=abc"])
    with pytest.raises(ConfigError, match=r"loss\.reduction must be one of mean, sum"):
        load_config(None, ["loss.reduction=avg"])


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_loads_and_builds_its_model(recipe):
    cfg = load_config(recipe)
    options = {k: v for k, v in cfg.model.options.items() if k not in ("backbone_weights", "init_from")}
    # shapes only, on the meta device where the model allows it (the weights files are not on this machine);
    # timm's RegNets call torch.unique while building, which has no meta kernel: those are small, built on CPU
    device = "cpu" if "regnet" in str(options.get("backbone", "")) else "meta"
    with torch.device(device):
        model = fcnkit.create_model(cfg.model.name, num_classes=cfg.model.num_classes or 21, **options)
    out = model.eval()(torch.zeros(1, 3, 64, 64, device=device))["out"]
    assert out.shape == (1, model.num_classes, 64, 64)
    if cfg.loss.reduction == "sum":
        assert cfg.optim.lr <= 1e-9  # the summed-loss recipes carry their tiny learning rates
    else:
        assert cfg.optim.lr >= 1e-5


# ------------------------------------------------------------------------------------------- the loop


def test_train_writes_run_dir_and_eval_prints_metrics(folder_data, tmp_path, capsys):
    out = tmp_path / "run"
    result = train(tiny_config(folder_data, out))
    assert {"config.yaml", "metrics.jsonl", "last.pth", "best.pth", "learning_curves.png"} <= {
        p.name for p in out.iterdir()
    }
    grids = sorted((out / "pictures").glob("val_epoch*.png"))
    assert [g.name for g in grids] == ["val_epoch001.png", "val_epoch002.png"]

    width, height = Image.open(grids[0]).size
    assert width > 3 * 48 and height > 4 * 40  # three columns of 4 val images (40x48) plus titles and legend
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["data"]["root"] == str(folder_data) and resolved["optim"]["lr"] == 0.003
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss_total" in r] == list(range(1, result.steps + 1))
    val = [r for r in records if "val" in r]
    assert len(val) == 2 and result.best_miou == max(r["val"]["miou"] for r in val)
    pictures = tmp_path / "eval_pictures"
    assert main(["eval", str(out / "best.pth"), "--workers", "0", "--pictures", str(pictures),
                 "--json", str(tmp_path / "m.json")]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    for word in ("pixel acc", "mean acc", "mIoU", "fwIoU", "box", "disc"):
        assert word.lower() in printed.lower()
    for name, min_size in (("confusion_matrix.png", (400, 400)), ("per_class_iou.png", (400, 150))):
        assert str(pictures / name) in printed
        width, height = Image.open(pictures / name).size
        assert width >= min_size[0] and height >= min_size[1]
    # eval of the checkpoint equals the evaluation logged during training
    model = fcnkit.load_checkpoint(out / "best.pth")
    val_set = build_dataset("folder", str(folder_data), "val")
    metrics = evaluate(model, val_set)
    assert metrics.miou == pytest.approx(result.best_miou, abs=1e-12)
    assert json.loads((tmp_path / "m.json").read_text())["miou"] == pytest.approx(metrics.miou, abs=1e-12)
    # the matrix behind the pictures counts every labelled pixel once
    labelled = sum(int((val_set.load(i)["label"] != val_set.ignore_index).sum()) for i in range(len(val_set)))
    assert int(metrics.matrix.sum()) == labelled and metrics.matrix.shape == (3, 3)
    # a fresh (not resumed) run in the same directory starts a new log instead of appending to the old one
    again = train(tiny_config(folder_data, out, "resume=false", "schedule.epochs=1", "pictures=0"))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss_total" in r] == list(range(1, again.steps + 1))


def test_nan_loss_stops_names_step_and_keeps_last_good_checkpoint(folder_data, tmp_path):
    out = tmp_path / "nan"
    cfg = tiny_config(folder_data, out, "optim.name=sgd", "optim.lr=1e30", "checkpoint_every=1")
    with pytest.raises(TrainingDiverged, match=r"(at|after) step \d+ \(epoch 1, ") as info:
        train(cfg)
    assert "not overwritten" in str(info.value) or "last good checkpoint" in str(info.value)
    if (out / "last.pth").exists():
        state = torch.load(out / "last.pth", weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "fcnkit", *args], env=env, cwd=REPO, **kwargs)


def test_sigkill_then_resume_equals_uninterrupted_run(folder_data, tmp_path):
    common = ["model.name=fcn8s_timm", "model.options={backbone: resnet18, upsample: bilinear}", "data.name=folder",
              f"data.root={folder_data}", "data.crop_size=[32, 32]", "data.batch_size=2", "data.workers=0",
              "optim.name=sgd", "optim.lr=0.01", "schedule.name=poly", "schedule.epochs=3", "ema_decay=0.9",
              "deterministic=true", "checkpoint_every=1", "eval_every=0", "seed=5"]  # fmt: skip
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text("{}\n")
    ref = _cli("train", str(cfg_file), *common, f"output_dir={tmp_path / 'ref'}")
    victim = _cli("train", str(cfg_file), *common, f"output_dir={tmp_path / 'killed'}")
    last = tmp_path / "killed" / "last.pth"
    deadline = time.time() + 240
    while time.time() < deadline and victim.poll() is None:
        if last.exists() and torch.load(last, weights_only=True)["progress"]["step"] >= 4:
            break
        time.sleep(0.05)
    assert victim.poll() is None, "the run finished before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = torch.load(last, weights_only=True)["progress"]
    assert 4 <= killed_at["step"] < 18  # 12 images / batch 2 x 3 epochs = 18 steps
    assert _cli("train", str(cfg_file), *common, f"output_dir={tmp_path / 'killed'}").wait() == 0
    assert ref.wait() == 0
    a = torch.load(tmp_path / "ref" / "last.pth", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert a["progress"]["step"] == b["progress"]["step"] == 18
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name
    assert a["ema"]["updates"] == b["ema"]["updates"] == 18
    for name, tensor in a["ema"]["module"].items():
        assert torch.equal(tensor, b["ema"]["module"][name]), name


def test_torchrun_two_processes_evaluation_equals_single_process(folder_data, tmp_path):
    out = tmp_path / "ddp"
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text("{}\n")
    args = ["model.name=fcn_resnet18_d16", "data.name=folder", f"data.root={folder_data}", "data.crop_size=[32, 32]",
            "data.batch_size=2", "data.workers=0", "optim.lr=0.01", "schedule.epochs=1",
            f"output_dir={out}", "device=cpu"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "fcnkit", "train", str(cfg_file), *args]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    ddp_val = [r["val"] for r in logged if "val" in r][-1]
    model = fcnkit.load_checkpoint(out / "last.pth")
    single = evaluate(model, build_dataset("folder", str(folder_data), "val")).as_dict()
    for key in ("pixel_acc", "mean_acc", "miou", "fwiou"):
        assert single[key] == pytest.approx(ddp_val[key], abs=1e-12), key


def test_data_check_cli_summarises_and_flags_bad_files(folder_data, tmp_path, capsys):
    assert main(["data", "check", "folder", "--root", str(folder_data), "--split", "train"]) == 0
    out = capsys.readouterr().out
    assert "12" in out and "box" in out and "disc" in out
    broken = tmp_path / "broken"
    make_folder_dataset(broken, n_train=3, n_val=1)
    (broken / "images" / "train" / "s001.png").write_bytes(b"not a png")
    assert main(["data", "check", "folder", "--root", str(broken), "--split", "train"]) == 1
    assert "s001.png" in capsys.readouterr().out


def test_summed_loss_with_mean_sized_lr_warns(folder_data, tmp_path, capsys):
    cfg = tiny_config(folder_data, tmp_path / "warn", "loss.reduction=sum", "optim.lr=0.01", "max_steps=1")
    with contextlib.suppress(TrainingDiverged):  # a summed loss at lr 0.01 may well blow up
        train(cfg)
    assert "a summed loss needs an lr near 1e-10" in capsys.readouterr().out


def test_median_frequency_weights_from_the_training_labels(folder_data, tmp_path):
    import numpy as np

    from fcnkit.engine.train import _class_weights

    cfg = tiny_config(folder_data, tmp_path / "mf", "loss.class_weights=median_frequency")
    counts = np.zeros(3)
    for mask in sorted((folder_data / "masks" / "train").glob("*.png")):
        label = np.array(Image.open(mask))
        counts += np.bincount(label[label != 255].ravel(), minlength=3)[:3]
    freq = counts / counts.sum()
    expected = np.median(freq) / freq  # SegNet's median frequency balancing
    got = _class_weights(cfg, build_dataset("folder", str(folder_data), "train"))
    assert np.allclose(got, expected, rtol=1e-6)


def test_time_budget_ends_training_and_completes_the_cosine_schedule(folder_data, tmp_path):
    out = tmp_path / "budget"
    budget_s = 6.0
    cfg = tiny_config(folder_data, out, f"schedule.budget_minutes={budget_s / 60}", "schedule.epochs=1",
                      "eval_every=0", "pictures=0", "schedule.warmup_steps=0")  # fmt: skip
    result = train(cfg)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss_total" in r]
    # ran past schedule.epochs=1 (the budget replaces it) ...
    assert result.steps == len(steps) and steps[-1]["epoch"] > 1
    # ... and stopped at the first step that reached the budget
    spent = [r["train_minutes"] * 60 for r in steps]
    assert spent[-1] >= budget_s and spent[-2] < budget_s
    # the lr after each step is the cosine of the budget fraction spent at that step (the log's clock is read a
    # moment later than the scheduler's, hence the tolerance)
    for r, s in zip(steps, spent, strict=True):
        expected = 0.003 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / budget_s)))
        assert r["lr"] == pytest.approx(expected, abs=0.003 * 0.03)
    assert steps[-1]["lr"] == pytest.approx(0.0, abs=1e-12)
    # evaluated once, at the end, with the minutes logged; the checkpoint keeps the clock
    (val,) = [r for r in records if "val" in r]
    assert val["train_minutes"] * 60 >= budget_s and val["step"] == result.steps
    ckpt = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    assert ckpt["progress"]["train_time"] == pytest.approx(val["train_minutes"] * 60)
    # resuming a finished budget run trains no further
    assert train(cfg).steps == result.steps
    with pytest.raises(ConfigError, match="budget_minutes must be > 0"):
        tiny_config(folder_data, out, "schedule.budget_minutes=0")
