"""Configs, the training loop end to end, SIGKILL + resume, NaN handling, torchrun, and `fcnkit eval`."""

import contextlib
import json
import logging
import math
import os
import re
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
from fcnkit.engine.runlog import read_run_log
from fcnkit.engine.train import train
from fcnkit.errors import DataError, TrainingDiverged
from synthetic_data import make_folder_dataset

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "configs").rglob("*.yaml"))


def tiny_overrides(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "model.name=fcn8s_timm",
        "model.options={backbone: regnetx_002, upsample: bilinear}",
        "data.name=folder",
        f"data.root={root}",
        "data.crop_size=[32, 32]",
        "data.batch_size=4",
        "data.workers=0",
        "optim.name=adamw",
        "optim.lr=0.003",
        "optim.weight_decay=0.0",
        "schedule.name=cosine",
        "schedule.epochs=2",
        f"output_dir={out}",
        "log_every=1",
        "seed=3",
        *extra,
    ]


def tiny_config(root: Path, out: Path, *extra: str):
    return load_config(None, tiny_overrides(root, out, *extra))


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
    with pytest.raises(ConfigError, match=r"data\.on_error must be one of raise, skip; got 'ignore'"):
        load_config(None, ["data.on_error=ignore"])
    with pytest.raises(ConfigError, match=r"loss\.class_weights: 'median' is not a list of float, 'median_frequency'"):
        load_config(None, ["loss.class_weights=median"])


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


def test_eval_ema_scores_the_weights_the_final_validation_scored(folder_data, tmp_path, capsys):
    out = tmp_path / "ema"
    train(tiny_config(folder_data, out, "ema_decay=0.9", "pictures=0", "schedule.epochs=1"))
    final = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"val"' in line][-1]
    assert main(["eval", str(out / "last.pth"), "--ema", "--workers", "0", "--json", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["miou"] == pytest.approx(final["val"]["miou"], abs=1e-12)
    ckpt = torch.load(out / "last.pth", weights_only=True)  # the EMA really is other weights than the raw ones
    assert any(not torch.equal(v, ckpt["ema"]["module"][k]) for k, v in ckpt["state_dict"].items())
    plain = tmp_path / "plain"
    train(tiny_config(folder_data, plain, "pictures=0", "schedule.epochs=1"))
    capsys.readouterr()
    assert main(["eval", str(plain / "last.pth"), "--ema", "--workers", "0"]) == 2
    assert "holds no EMA weights" in capsys.readouterr().err


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
    # a fresh (not resumed) run where a run lives goes to a new folder; the earlier run's files stay as they were
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    again = train(tiny_config(folder_data, out, "resume=false", "schedule.epochs=1", "pictures=0"))
    assert again.run_dir == out.with_name("run-2")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    records = [json.loads(line) for line in (again.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss_total" in r] == list(range(1, again.steps + 1))
    assert yaml.safe_load((again.run_dir / "config.yaml").read_text())["output_dir"] == str(again.run_dir)


def test_nan_loss_stops_names_step_and_keeps_last_good_checkpoint(folder_data, tmp_path):
    out = tmp_path / "nan"
    # the warm-up makes step 1 a good one (lr 1e30 * 1e-33 = 1e-3), checkpointed; step 2 (lr ~5e29) diverges
    cfg = tiny_config(
        folder_data,
        out,
        "optim.name=sgd",
        "optim.lr=1e30",
        "checkpoint_every=1",
        "schedule.warmup_steps=2",
        "schedule.warmup_start_factor=1e-33",
    )
    with pytest.raises(TrainingDiverged, match=r"(at|after) step \d+ \(epoch 1, ") as info:
        train(cfg)
    message = str(info.value)
    assert f"the last good checkpoint {out / 'last.pth'} was kept" in message
    ckpt = torch.load(out / "last.pth", weights_only=True)
    # a loss at step n or the weights after step n: either way the kept checkpoint is that of step n - 1
    (diverged,) = re.findall(r"(?:at|after) step (\d+)", message)
    assert ckpt["progress"]["step"] == int(diverged) - 1 >= 1
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    # a NaN loss before any checkpoint (a NaN class weight: the first loss is NaN) says so instead of naming a file
    with pytest.raises(ConfigError, match="class_weights must be finite"):  # a recipe is refused when read
        tiny_config(folder_data, tmp_path / "nan_fresh", "loss.class_weights=[.nan, 1.0, 1.0]")
    fresh = tiny_config(folder_data, tmp_path / "nan_fresh")
    fresh.loss.class_weights = [math.nan, 1.0, 1.0]  # library use past the loader: the loop still stops
    with pytest.raises(
        TrainingDiverged,
        match=r"loss became nan at step 1 \(epoch 1, batch 1\); training stopped "
        r"and no checkpoint was written yet",
    ):
        train(fresh)
    assert not (tmp_path / "nan_fresh" / "last.pth").exists()


def test_finish_switches_to_whole_images_for_the_last_part_of_the_run(folder_data, tmp_path, monkeypatch):
    """12 images in batches of 4 over 4 epochs are 12 steps; finish_fraction 0.5 starts the finish at the first
    epoch boundary at or past step 6: epoch 3. From there batches are whole 40x48 images at scale 1."""
    import fcnkit.engine.train as loop

    shapes: dict[int, set] = {}
    original = loop.forward_backward

    def spy(run, state, batch):
        shapes.setdefault(state.epoch, set()).add(tuple(batch["image"].shape[-2:]))
        return original(run, state, batch)

    monkeypatch.setattr(loop, "forward_backward", spy)
    extra = ("schedule.epochs=4", "eval_every=0", "pictures=0", "data.finish_fraction=0.5",
             "data.finish_crop_size=null", "data.finish_scale_range=[1.0, 1.0]")  # fmt: skip
    result = train(tiny_config(folder_data, tmp_path / "run", *extra))
    assert result.steps == 12
    assert shapes == {0: {(32, 32)}, 1: {(32, 32)}, 2: {(40, 48)}, 3: {(40, 48)}}
    progress = torch.load(tmp_path / "run" / "last.pth", weights_only=True)["progress"]
    assert progress["finish_epoch"] == 2
    with pytest.raises(ConfigError, match=r"data\.finish_fraction.*\[0, 1\)"):
        tiny_config(folder_data, tmp_path / "bad", "data.finish_fraction=1.0")


@pytest.mark.slow
def test_a_run_resumed_before_or_inside_the_finish_ends_with_the_same_weights(folder_data, tmp_path):
    common = ("schedule.epochs=4", "eval_every=0", "pictures=0", "deterministic=true", "checkpoint_every=1",
              "data.finish_fraction=0.5", "data.finish_crop_size=[40, 40]")  # fmt: skip
    assert train(tiny_config(folder_data, tmp_path / "whole", *common)).steps == 12
    for stop in (4, 8):  # before the finish (epoch 2 of 4), inside it (epoch 3)
        out = tmp_path / f"split{stop}"
        assert train(tiny_config(folder_data, out, *common, f"max_steps={stop}")).steps == stop
        assert train(tiny_config(folder_data, out, *common)).steps == 12
        a = torch.load(tmp_path / "whole" / "last.pth", weights_only=True)
        b = torch.load(out / "last.pth", weights_only=True)
        assert a["progress"]["finish_epoch"] == b["progress"]["finish_epoch"] == 2
        for name, tensor in a["state_dict"].items():
            assert torch.equal(tensor, b["state_dict"][name]), (stop, name)


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "fcnkit", *args], env=env, cwd=REPO, **kwargs)


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_run(folder_data, tmp_path):
    common = ["model.name=fcn8s_timm", "model.options={backbone: regnetx_002, upsample: bilinear}", "data.name=folder",
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
    victim.wait(60)
    killed_at = torch.load(last, weights_only=True)["progress"]
    assert 4 <= killed_at["step"] < 18  # 12 images / batch 2 x 3 epochs = 18 steps
    assert _cli("train", str(cfg_file), *common, f"output_dir={tmp_path / 'killed'}").wait(240) == 0
    assert ref.wait(240) == 0
    a = torch.load(tmp_path / "ref" / "last.pth", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert a["progress"]["step"] == b["progress"]["step"] == 18
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name
    assert a["ema"]["updates"] == b["ema"]["updates"] == 18
    for name, tensor in a["ema"]["module"].items():
        assert torch.equal(tensor, b["ema"]["module"][name]), name


@pytest.mark.slow
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
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "samples: 12 checked of 12, 0 with errors"  # make_folder_dataset's 12 training images
    assert "image size (HxW): height 40..40, width 48..48" in lines
    assert [line.split()[1] for line in lines if re.match(r"\s+[0-2]\s", line)] == ["background", "box", "disc"]
    broken = tmp_path / "broken"
    make_folder_dataset(broken, n_train=3, n_val=1)
    (broken / "images" / "train" / "s001.png").write_bytes(b"not a png")
    assert main(["data", "check", "folder", "--root", str(broken), "--split", "train"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "samples: 3 checked of 3, 1 with errors"
    errors = lines[lines.index("errors (1):") + 1 :]
    assert len(errors) == 1 and f"cannot read image {broken / 'images' / 'train' / 's001.png'}" in errors[0]


def test_summed_loss_with_mean_sized_lr_warns(folder_data, tmp_path, caplog):
    cfg = tiny_config(folder_data, tmp_path / "warn", "loss.reduction=sum", "optim.lr=0.01", "max_steps=1")
    with contextlib.suppress(TrainingDiverged):  # a summed loss at lr 0.01 may well blow up
        train(cfg)
    (warning,) = [r for r in caplog.records if r.name == "fcnkit.train" and r.levelno == logging.WARNING]
    assert "a summed loss needs an lr near 1e-10" in warning.getMessage()


def test_median_frequency_weights_from_the_training_labels(folder_data, tmp_path):
    import numpy as np

    from fcnkit.engine.run import resolve_class_weights

    cfg = tiny_config(folder_data, tmp_path / "mf", "loss.class_weights=median_frequency")
    counts = np.zeros(3)
    for mask in sorted((folder_data / "masks" / "train").glob("*.png")):
        label = np.array(Image.open(mask))
        counts += np.bincount(label[label != 255].ravel(), minlength=3)[:3]
    freq = counts / counts.sum()
    expected = np.median(freq) / freq  # SegNet's median frequency balancing
    got = resolve_class_weights(cfg, build_dataset("folder", str(folder_data), "train"))
    assert np.allclose(got, expected, rtol=1e-6)


@pytest.mark.slow
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


# -------------------------------------------------------------------------------------------- the logs


def test_piped_log_shows_the_first_loss_line_while_training_runs(folder_data, tmp_path):
    """stdout and stderr to a file, as under nohup or CI: the step lines are there as they happen."""
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text("{}\n")
    log_file = tmp_path / "train.log"
    args = tiny_overrides(folder_data, tmp_path / "run", "schedule.epochs=3", "pictures=0", "device=cpu")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # the flushing is fcnkit's to do
    env["OMP_NUM_THREADS"] = "1"
    line = re.compile(
        r"^step 1/9  epoch 1/3  loss \d\.\d+  lr [\d.e-]+  images/s [\d.]+  elapsed \d\d:\d\d  eta \d\d:\d\d$",
        re.MULTILINE,
    )
    start = time.monotonic()
    with open(log_file, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fcnkit", "train", str(cfg_file), *args],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
    try:
        seen_after = None
        while proc.poll() is None and time.monotonic() - start < 90:
            if line.search(log_file.read_text()):
                seen_after = time.monotonic() - start
                break
            time.sleep(0.1)
        running = proc.poll() is None
    finally:
        proc.kill()
        proc.wait(60)
    text = log_file.read_text()
    assert seen_after is not None and running, f"no step line while the process ran; the log:\n{text[-3000:]}"
    assert seen_after < 60, (seen_after, text[-3000:])


def test_progress_lines_without_a_terminal(caplog):
    from fcnkit.progress import Progress, get_logger

    caplog.set_level(logging.INFO, logger="fcnkit")
    # a resumed loop: 2 of 10 updates done in 30 s before; a line at once, every 4 updates and at the last one
    with Progress(10, "step", logger=get_logger("test"), log_every=4, initial=2, elapsed=30.0, bar=False) as p:
        for i in range(8):
            p.update(1, {"loss": 0.5, "lr": 0.001}, elapsed=31.0 + i)
    assert [r.getMessage() for r in caplog.records if r.name == "fcnkit.test"] == [
        "step 3/10  loss 0.5  lr 0.001  elapsed 00:31  eta 00:07",
        "step 4/10  loss 0.5  lr 0.001  elapsed 00:32  eta 00:06",
        "step 8/10  loss 0.5  lr 0.001  elapsed 00:36  eta 00:02",
        "step 10/10  loss 0.5  lr 0.001  elapsed 00:38  eta 00:00",
    ]


def test_progress_lines_keep_a_minimum_interval(caplog):
    from fcnkit.progress import Progress, get_logger

    caplog.set_level(logging.INFO, logger="fcnkit")
    # a fast loop of 50 updates with a line due at every one: only the first and the last are written
    with Progress(50, "predict", logger=get_logger("quick"), log_every=1, min_interval=3600, bar=False) as p:
        for _ in range(50):
            p.update()
    lines = [r.getMessage() for r in caplog.records if r.name == "fcnkit.quick"]
    assert [line.split("  ")[0] for line in lines] == ["predict 1/50", "predict 50/50"]


def test_fcnkit_logs_reach_stderr_when_logging_is_not_set_up(capsys):
    from fcnkit.progress import ensure_handler, get_logger

    root, logger = logging.getLogger(), get_logger()
    saved = root.handlers[:], logger.handlers[:], logger.level
    root.handlers.clear()  # as in a script that never configured logging
    logger.handlers.clear()
    logger.setLevel(logging.NOTSET)
    try:
        ensure_handler()
        ensure_handler()  # once only
        get_logger("train").info("step 1/6  loss 1.1")
        assert capsys.readouterr().err == "step 1/6  loss 1.1\n" and len(logger.handlers) == 1
        root.addHandler(logging.NullHandler())  # an application that configured logging keeps its choice
        logger.handlers.clear()
        ensure_handler()
        assert logger.handlers == []
    finally:
        root.handlers[:], logger.handlers[:] = saved[0], saved[1]
        logger.setLevel(saved[2])


# ------------------------------------------------------------------------------------- unreadable files


@pytest.fixture(scope="module")
def data_with_bad_image(tmp_path_factory):
    root = make_folder_dataset(tmp_path_factory.mktemp("bad_image"))
    bad = root / "images" / "train" / "s005.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage, not an image")
    return root, bad


def test_unreadable_image_raises_naming_the_file_and_the_check_command(data_with_bad_image, tmp_path):
    root, bad = data_with_bad_image
    cfg = tiny_config(root, tmp_path / "raise", "schedule.epochs=1", "pictures=0", "eval_every=0")
    assert cfg.data.on_error == "raise"  # the default
    with pytest.raises(DataError) as info:
        train(cfg)
    assert str(bad) in str(info.value)
    assert f"fcnkit data check folder --root {root} --split train" in str(info.value)
    # the same from a loader worker process
    cfg = tiny_config(root, tmp_path / "raise_workers", "schedule.epochs=1", "pictures=0", "data.workers=1")
    with pytest.raises(DataError, match=re.escape(str(bad))) as info:
        train(cfg)
    assert "fcnkit data check folder" in str(info.value)


@pytest.mark.slow
def test_unreadable_image_is_skipped_named_and_resume_stays_exact(data_with_bad_image, tmp_path, caplog):
    root, bad = data_with_bad_image
    caplog.set_level(logging.INFO, logger="fcnkit")
    common = ("data.on_error=skip", "data.workers=2", "pictures=0", "eval_every=0", "deterministic=true")
    out = tmp_path / "skip"
    result = train(tiny_config(root, out, *common))
    assert result.steps == 6  # 3 batches of 4 per epoch, the batch with the bad file trained on the other 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([w for w in warnings if str(bad) in w]) == 1  # once per file, not once per epoch
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    skipped = [r for r in records if "skipped_samples" in r]
    assert [(r["epoch"], r["skipped_samples"]) for r in skipped] == [(1, [str(bad)]), (2, [str(bad)])]
    train_records, val_records = read_run_log(out / "metrics.jsonl")  # the reader takes the new record kind
    assert [r["step"] for r in train_records] == list(range(1, 7)) and len(val_records) == 1
    ckpt = torch.load(out / "last.pth", weights_only=True)
    assert ckpt["progress"]["images_seen"] == 2 * (12 - 1)
    # stopped after step 2 (mid-epoch, worker processes) and resumed: the same weights as without a stop
    split = tmp_path / "split"
    assert train(tiny_config(root, split, *common, "max_steps=2")).steps == 2
    assert train(tiny_config(root, split, *common)).steps == 6
    resumed = torch.load(split / "last.pth", weights_only=True)
    assert resumed["progress"]["images_seen"] == ckpt["progress"]["images_seen"]
    for name, tensor in ckpt["state_dict"].items():
        assert torch.equal(tensor, resumed["state_dict"][name]), name


@pytest.mark.slow
def test_a_batch_of_unreadable_samples_only_is_left_out(tmp_path):
    root = make_folder_dataset(tmp_path / "data", n_train=4, n_val=1)
    (root / "images" / "train" / "s001.png").write_bytes(b"not a png")
    # batches of one sample (64 x 64 crops, so that BatchNorm still sees 2 x 2 values at stride 32)
    cfg = tiny_config(
        root,
        tmp_path / "run",
        "data.on_error=skip",
        "data.batch_size=1",
        "data.crop_size=[64, 64]",
        "schedule.epochs=1",
        "pictures=0",
        "eval_every=0",
    )
    result = train(cfg)
    assert result.steps == 3  # 4 batches of one sample, one of them unreadable: 3 optimiser steps
    assert torch.load(tmp_path / "run" / "last.pth", weights_only=True)["progress"]["images_seen"] == 3
