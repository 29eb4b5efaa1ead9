"""Runs never overwrite or mix, and a bad recipe fails when it is read."""

import json
import math

import pytest
import yaml

from fcnkit.cli import main
from fcnkit.config import ConfigError, load_config
from fcnkit.engine.run import config_differences
from fcnkit.engine.train import train
from synthetic_data import make_folder_dataset
from test_train import tiny_config, tiny_overrides


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_folder_dataset(tmp_path_factory.mktemp("runs_data"), n_train=8, n_val=2)


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resuming_with_changed_settings_names_them_and_touches_nothing(data, tmp_path, capsys, caplog):
    out = tmp_path / "run"
    train(tiny_config(data, out, "schedule.epochs=1", "pictures=0"))
    before = _files(out)
    # the same command with two settings changed: refused, the keys and values named, exit 2
    args = [
        "train",
        str(_empty(tmp_path)),
        *tiny_overrides(data, out, "schedule.epochs=2", "pictures=0", "optim.lr=0.5"),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "optim.lr: 0.003 -> 0.5" in err and "schedule.epochs: 1 -> 2" in err and "resume=false" in err
    assert str(out.with_name("run-2")) in err
    assert _files(out) == before and not out.with_name("run-2").exists()
    # what a resumed run may change (workers, logging, max_steps) is not a difference
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (
        config_differences(saved, {**saved, "log_every": 5, "max_steps": 9, "data": {**saved["data"], "workers": 3}})
        == []
    )
    # an identical config resumes in place (the run was complete: nothing more to train)
    caplog.clear()
    result = train(tiny_config(data, out, "schedule.epochs=1", "pictures=0"))
    assert result.run_dir == out and "resumed from" in caplog.text
    # resume=false goes to run-2, then run-3; nothing of the earlier runs changes
    first = train(tiny_config(data, out, "schedule.epochs=1", "pictures=0", "resume=false", "optim.lr=0.5"))
    second = train(tiny_config(data, out, "schedule.epochs=1", "pictures=0", "resume=false"))
    assert (first.run_dir.name, second.run_dir.name) == ("run-2", "run-3")
    assert _files(out) == before


def test_a_config_saved_by_an_older_version_compares_by_defaults():
    new = {"optim": {"lr": 0.01, "name": "sgd"}, "data": {"gamma_jitter": 0.0}}
    assert config_differences({"optim": {"lr": 0.01, "name": "sgd"}}, new) == []  # missing key = its default
    assert config_differences({"optim": {"lr": 0.01, "name": "sgd"}}, {**new, "data": {"gamma_jitter": 0.5}}) == [
        ("data.gamma_jitter", 0.0, 0.5)
    ]
    # options mappings compare key by key
    changed = config_differences({"model": {"options": {"backbone": "a"}}}, {"model": {"options": {"backbone": "b"}}})
    assert changed == [("model.options.backbone", "a", "b")]


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("data.hflip=1.5", "data.hflip"),
        ("data.gamma_jitter=-1", "data.gamma_jitter"),
        ("data.scale_range=[2.0, 0.5]", "data.scale_range"),
        ("data.mosaic=1.7", "data.mosaic"),
        ("loss.dice_weight=-1", "loss term weights"),
        ("loss.label_smoothing=1.0", "loss.label_smoothing"),
        ("optim.lr=0", "optim.lr"),
        ("optim.betas=[0.9, 1.5]", "optim.betas"),
        ("schedule.name=step", "step_size"),
        ("schedule.warmup_start_factor=0", "warmup_start_factor"),
        ("ema_decay=1.0", "ema_decay"),
    ],
)
def test_a_bad_value_fails_when_the_recipe_is_read(tmp_path, capsys, override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(None, [override])
    if override.startswith("data.mosaic"):  # and the three mixing probabilities together
        with pytest.raises(ConfigError, match="must not exceed 1"):
            load_config(None, ["data.mosaic=0.7", "data.mixup=0.7"])
    # `fcnkit train` names it before any data is looked at: the root does not even exist
    assert main(["train", str(_empty(tmp_path)), f"data.root={tmp_path / 'nowhere'}", override]) == 2
    err = capsys.readouterr().err
    assert named in err and "nowhere" not in err


def _empty(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("{}\n")
    return path


def test_print_config_shows_the_resolved_chain_and_overrides(tmp_path, capsys):
    (tmp_path / "base.yaml").write_text("optim: {lr: 0.02, name: adamw}\ndata: {batch_size: 4}\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\noptim: {lr: 0.05}\n")
    assert main(["train", str(tmp_path / "child.yaml"), "data.batch_size=6", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optim"]["lr"] == 0.05 and printed["optim"]["name"] == "adamw"
    assert printed["data"]["batch_size"] == 6 and printed["schedule"]["name"] == "poly"  # defaults filled in
    assert not (tmp_path / "runs").exists()


def test_tensorboard_gets_validation_metrics_per_class_iou_and_the_picture_grid(data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    train(tiny_config(data, out, "tensorboard=true", "pictures=2", "schedule.epochs=2"))
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"val"' in line]
    miou = events.Scalars("val/miou")
    assert [e.step for e in miou] == [r["step"] for r in logged]
    assert [e.value for e in miou] == pytest.approx([r["val"]["miou"] for r in logged], abs=1e-6)
    for name, iou in zip(["background", "box", "disc"], logged[-1]["val"]["iou"], strict=True):
        value = events.Scalars(f"val_iou/{name}")[-1].value
        assert value == pytest.approx(iou, abs=1e-6) or (math.isnan(iou) and math.isnan(value))
    images = events.Images("val/pictures")
    assert len(images) == 2 and images[-1].width > 3 * 48  # three columns of validation images
    assert events.Scalars("train/loss_total")  # the training scalars are still there
