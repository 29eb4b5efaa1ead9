"""Nothing a user does loses a file: fcnkit predict never replaces an input or a file it did not write and gives
every input its own outputs; a training run stopped by SIGTERM writes last.pth and resumes to the same weights
bit for bit; a torn metrics line survives a resume; a checkpoint from a stranger cannot switch on downloads or
declare absurd class counts."""

from __future__ import annotations

import os
import signal
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fcnkit
from fcnkit.checkpoint import MAX_CLASSES, atomic_save, checkpoint_dict
from fcnkit.cli import main
from fcnkit.engine.runlog import append_record, read_run_log
from fcnkit.engine.train import train
from fcnkit.errors import CheckpointError
from fcnkit.inference.files import output_names
from fcnkit.inference.video import video_name, video_names
from synthetic_data import make_folder_dataset
from test_train import tiny_config


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = fcnkit.create_model("fcn32s_timm", num_classes=3, backbone="test_resnet", upsample="bilinear")
    model.classes = ["a", "b", "c"]
    return fcnkit.save_checkpoint(tmp_path_factory.mktemp("ck") / "m.pth", model)


def _images(folder: Path, names: list[str], seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(seed)
    paths = []
    for name in names:
        path = folder / name
        Image.fromarray(g.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _bytes(paths):
    return {p: p.read_bytes() for p in paths}


def test_predict_refuses_to_write_over_its_inputs(ckpt, tmp_path, capsys):
    photos = _images(tmp_path / "photos", ["a.png", "b.png", "c.png"])
    before = _bytes(photos)
    assert main(["predict", str(ckpt), str(tmp_path / "photos"), "--out", str(tmp_path / "photos")]) == 2
    err = capsys.readouterr().err
    assert "would replace 3 input file(s)" in err and "a.png" in err
    assert _bytes(photos) == before and sorted(p.name for p in (tmp_path / "photos").iterdir()) == [
        "a.png",
        "b.png",
        "c.png",
    ]


def test_predict_refuses_a_file_it_did_not_write_and_replaces_its_own(ckpt, tmp_path, capsys):
    _images(tmp_path / "in", ["street.jpg"])
    out = tmp_path / "out"
    out.mkdir()
    mine = out / "street.png"
    mine.write_bytes(b"my notes, not a label map")
    assert main(["predict", str(ckpt), str(tmp_path / "in"), "--out", str(out)]) == 2
    assert "did not write" in capsys.readouterr().err and mine.read_bytes() == b"my notes, not a label map"
    mine.unlink()
    assert main(["predict", str(ckpt), str(tmp_path / "in"), "--out", str(out)]) == 0
    first = (out / "street.png").read_bytes()
    assert main(["predict", str(ckpt), str(tmp_path / "in"), "--out", str(out)]) == 0  # its own files: replaced
    assert (out / "street.png").read_bytes() == first


def test_predict_gives_every_input_its_own_outputs_when_names_collide(ckpt, tmp_path, capsys):
    a = _images(tmp_path / "a", ["img.png"], seed=1)[0]
    b = _images(tmp_path / "b", ["img.png"], seed=2)[0]
    out = tmp_path / "out"
    assert main(["predict", str(ckpt), str(a.parent), str(b.parent), "--out", str(out)]) == 0
    assert "wrote 2 of 2 predictions" in capsys.readouterr().out
    labels = {p.relative_to(out).as_posix() for p in out.rglob("*.png")}
    assert labels == {"a/img.png", "b/img.png"}
    predictor = fcnkit.Predictor(ckpt, backend="torch")
    for src in (a, b):
        written = np.asarray(Image.open(out / src.parent.name / "img.png"))
        assert np.array_equal(written, predictor.predict(src).label.numpy())


def test_output_names_keep_each_input_apart():
    assert output_names([Path("x/a.jpg"), Path("x/b.jpg")]) == [Path("a"), Path("b")]
    assert output_names([Path("/d/a/img.jpg"), Path("/d/b/img.jpg")]) == [Path("a/img"), Path("b/img")]
    assert output_names([Path("/d/img.jpg"), Path("/d/img.png")]) == [Path("img_jpg"), Path("img_png")]
    names = output_names([Path("/d/a/img.jpg"), Path("/d/a/img.png"), Path("/d/b/img.jpg")])
    assert len(set(names)) == 3


def test_streams_and_cameras_get_distinct_output_names():
    sources = ["rtsp://cam1:554/live", "rtsp://cam2:554/live", "/dev/video0", "/dev/video1", "/d/a/clip.mp4",
               "/d/b/clip.mp4"]  # fmt: skip
    names = video_names(sources)
    assert len(set(names)) == len(sources)
    assert video_name("rtsp://cam1:554/live") == "rtsp_cam1_554_live" and video_name("/dev/video0") == "video0"
    assert names[-2:] == ["a/clip", "b/clip"]


# --- training that survives the scheduler ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_folder_dataset(tmp_path_factory.mktemp("synthetic"))


COMMON = ("schedule.epochs=3", "eval_every=0", "pictures=0", "deterministic=true", "ema_decay=0.9")


def _signal_at_step(log: Path, step: int, signum: int) -> threading.Thread:
    """Send ``signum`` to this process once ``log`` records ``step``."""

    def watch():
        deadline = time.time() + 120
        while time.time() < deadline:
            if log.exists() and any(f'"step": {step},' in line for line in log.read_text().splitlines()):
                os.kill(os.getpid(), signum)
                return
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_sigterm_writes_last_pth_and_the_resumed_run_ends_bitwise_equal(data, tmp_path, caplog):
    caplog.set_level("INFO", logger="fcnkit")
    whole = train(tiny_config(data, tmp_path / "whole", *COMMON))
    assert whole.steps == 9 and whole.signal is None
    out = tmp_path / "stopped"
    watcher = _signal_at_step(out / "metrics.jsonl", 4, signal.SIGTERM)
    stopped = train(tiny_config(data, out, *COMMON))
    watcher.join()
    assert stopped.signal == signal.SIGTERM and 4 <= stopped.steps < 9
    assert "SIGTERM received" in caplog.text and "run the same command again to resume" in caplog.text
    saved = torch.load(out / "last.pth", weights_only=True)
    assert saved["progress"]["step"] == stopped.steps
    resumed = train(tiny_config(data, out, *COMMON))
    assert resumed.steps == 9 and resumed.signal is None
    a = torch.load(tmp_path / "whole" / "last.pth", weights_only=True)
    b = torch.load(out / "last.pth", weights_only=True)
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name
    for name, tensor in a["ema"]["module"].items():
        assert torch.equal(tensor, b["ema"]["module"][name]), name


def test_fcnkit_train_exits_143_on_sigterm(data, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("{}\n")
    from test_train import tiny_overrides

    watcher = _signal_at_step(out / "metrics.jsonl", 2, signal.SIGTERM)
    assert main(["train", str(cfg), *tiny_overrides(data, out, *COMMON)]) == 128 + signal.SIGTERM
    watcher.join()
    assert (out / "last.pth").exists()
    assert main(["train", str(cfg), *tiny_overrides(data, out, *COMMON)]) == 0


def test_last_pth_is_written_on_a_timer(data, tmp_path, monkeypatch):
    import fcnkit.engine.train as engine

    writes = []
    real = engine.save_checkpoint
    monkeypatch.setattr(engine, "save_checkpoint", lambda run, state, path, **kw: (writes.append((state.step, path.name)),
                                                                                   real(run, state, path, **kw)))  # fmt: skip
    train(tiny_config(data, tmp_path / "timer", "schedule.epochs=1", "eval_every=0", "pictures=0",
                      "checkpoint_minutes=0.000001"))  # fmt: skip
    mid_epoch = [step for step, name in writes if name == "last.pth"]
    assert mid_epoch[:3] == [1, 2, 3]  # every step, since the interval is a microsecond-scale
    none = tmp_path / "none"
    writes.clear()
    train(tiny_config(data, none, "schedule.epochs=1", "eval_every=0", "pictures=0", "checkpoint_minutes=0"))
    assert [name for _, name in writes if name == "last.pth"] == ["last.pth"]  # only at the epoch's end


def test_a_torn_metrics_line_survives_a_resume(tmp_path):
    log = tmp_path / "metrics.jsonl"
    append_record(log, {"step": 1, "lr": 0.1, "loss_total": 2.0})
    with open(log, "a") as f:
        f.write('{"step": 2, "lr": 0.0')  # the crash
    append_record(log, {"step": 2, "lr": 0.1, "loss_total": 1.5})  # the resumed run
    append_record(log, {"step": 3, "lr": 0.1, "loss_total": 1.0})
    lines = log.read_text().splitlines()
    assert len(lines) == 4 and lines[2].startswith('{"step": 2, "lr": 0.1')
    with pytest.warns(UserWarning, match="incomplete line"):
        train_records, _ = read_run_log(log)
    assert [r["step"] for r in train_records] == [1, 2, 3]
    log.write_text("step,loss\n1,2.0\n" + log.read_text())
    with warnings.catch_warnings(), pytest.raises(Exception, match="not a JSON record"):
        warnings.simplefilter("ignore")
        read_run_log(log)


# --- checkpoints from strangers ---------------------------------------------------------------------------------


def _forged(tmp_path: Path, name: str, **arch_changes) -> Path:
    model = fcnkit.create_model("fcn8s_timm", num_classes=3, backbone="test_resnet", upsample="bilinear")
    ckpt = checkpoint_dict(model)
    arch = ckpt["card"]["arch"]
    for key, value in arch_changes.items():
        if key == "num_classes":
            arch["num_classes"] = value
        else:
            arch["options"][key] = value
    return atomic_save(ckpt, tmp_path / name)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"backbone_kwargs": {"pretrained": True}}, "would fetch or read weights"),
        ({"backbone_kwargs": {"pretrained_cfg_overlay": {"file": "/etc/passwd"}}}, "would fetch or read weights"),
        ({"backbone_weights": "/etc/passwd"}, "would fetch or read weights"),
        ({"backbone_kwargs": {"features_only": False}}, "not among those a checkpoint may set"),
        ({"num_classes": 10**9}, f"from 1 to {MAX_CLASSES}"),
        ({"num_classes": 0}, f"from 1 to {MAX_CLASSES}"),
        ({"num_classes": "3"}, "whole number"),
    ],
)
def test_a_checkpoint_may_set_only_known_harmless_options(tmp_path, change, words, monkeypatch):
    path = _forged(tmp_path, "forged.pth", **change)
    import timm

    monkeypatch.setattr(timm, "create_model", lambda *a, **k: pytest.fail("timm was asked to build a model"))
    with pytest.raises(CheckpointError, match=words):
        fcnkit.load_checkpoint(path)
    assert main(["predict", str(path), str(tmp_path), "--out", str(tmp_path / "o")]) == 2


def test_an_honest_checkpoint_with_backbone_kwargs_still_loads(tmp_path):
    model = fcnkit.create_model(
        "fcn8s_timm",
        num_classes=3,
        backbone="test_resnet",
        upsample="bilinear",
        backbone_kwargs={"drop_path_rate": 0.1},
    )
    path = fcnkit.save_checkpoint(tmp_path / "ok.pth", model)
    again = fcnkit.load_checkpoint(path)
    assert again.arch["options"]["backbone_kwargs"] == {"drop_path_rate": 0.1}
