"""The own-data walkthrough (docs/own-data.md), run as written on generated data.

The commands are read from the page, between its ``walkthrough:start`` and ``walkthrough:end`` markers, and its
``classes.yaml`` from the block after ``walkthrough:classes``: the page cannot drift from what works. Only what a
test cannot afford changes: the recipe trains for two short epochs of a smaller backbone instead of 30 minutes,
and ``fcnkit serve`` runs as a process on a free port, asked once over HTTP, then stopped.
"""

import io
import re
import shlex
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

from fcnkit.apps.serve import serve_process
from fcnkit.cli import main

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "own-data.md"
FAST = [
    "schedule.budget_minutes=null",
    "schedule.epochs=2",
    "schedule.warmup_steps=0",
    "model.options={backbone: regnetx_002, upsample: bilinear, input_norm: image}",
    "data.crop_size=[32, 32]",
    "data.batch_size=4",
    "amp=none",
    "eval_every=1",
    "checkpoint_every=0",
    "pictures=2",
]


def page_commands() -> list[list[str]]:
    text = PAGE.read_text()
    block = text.split("<!-- walkthrough:start -->", 1)[1].split("<!-- walkthrough:end -->", 1)[0]
    return [shlex.split(line)[1:] for line in block.splitlines() if line.startswith("fcnkit ")]


def page_classes() -> dict:
    block = PAGE.read_text().split("<!-- walkthrough:classes -->", 1)[1]
    return yaml.safe_load(re.search(r"```yaml\n(.*?)```", block, re.S).group(1))


def make_scenes(root: Path, scenes: int = 5, frames: int = 4, size=(40, 48)) -> None:
    """Frames of a few scenes with a crack-like bright band; masks saved as 0/255."""
    rng = np.random.default_rng(0)
    h, w = size
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for scene in range(scenes):
        for frame in range(frames):
            mask = np.zeros((h, w), np.uint8)
            y = rng.integers(8, h - 8)
            mask[y : y + 4, rng.integers(0, w // 2) :] = 255
            image = np.where(mask[..., None] > 0, 210, 60) + rng.integers(-30, 30, (h, w, 3))
            stem = f"scene{scene}_{frame:06d}"
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / "images" / f"{stem}.jpg", quality=95)
            Image.fromarray(mask).save(root / "masks" / f"{stem}.png")


def _serve(args: list[str], tmp_path: Path, photo: Path, monkeypatch) -> None:
    """The page's ``fcnkit serve`` line as a process on a free port (instead of 8000), asked over HTTP."""
    model, options = args[1], [a for a in args[2:] if a != "--port" and not a.isdigit()]
    monkeypatch.setenv("FCNKIT_BACKEND", "torch")
    with serve_process(model, *options, cwd=tmp_path) as url, httpx.Client(base_url=url, timeout=60) as client:
        info = client.get("/api/info").json()
        assert info["classes"] == ["background", "crack"] and "flip" in info["passes"]
        r = client.post("/api/predict", files={"image": (photo.name, photo.read_bytes(), "image/jpeg")})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        label = np.asarray(Image.open(io.BytesIO(r.content)))
    # the served label map is the one `fcnkit predict` writes for the same file
    assert np.array_equal(label, np.asarray(Image.open(tmp_path / "predictions" / f"{photo.stem}.png")))


@pytest.mark.slow
def test_the_walkthrough_runs_as_written(tmp_path, monkeypatch, capsys):
    data = tmp_path / "my_data"
    make_scenes(data)
    (data / "classes.yaml").write_text(yaml.safe_dump(page_classes()))
    photos = tmp_path / "new_photos"
    photos.mkdir()
    for src in sorted((data / "images").glob("scene0_*"))[:2]:
        (photos / src.name).write_bytes(src.read_bytes())
    monkeypatch.chdir(tmp_path)
    commands = page_commands()
    assert [c[0] for c in commands] == ["data", "data", "train", "eval", "predict", "serve", "export", "predict"]
    for args in commands:
        args = [str(REPO / a) if a.startswith("configs/") else a for a in args]
        if args[0] == "train":
            args = [*args, *FAST]
        if args[0] == "serve":
            _serve(args, tmp_path, sorted(photos.iterdir())[0], monkeypatch)
            continue
        capsys.readouterr()
        assert main(args) == 0, (args, capsys.readouterr())
        captured = capsys.readouterr()
        if args[:2] == ["data", "split"]:
            train = set((data / "splits" / "train.txt").read_text().split())
            val = set((data / "splits" / "val.txt").read_text().split())
            assert {s.split("_")[0] for s in train}.isdisjoint({s.split("_")[0] for s in val})
        if args[0] == "eval":
            assert "crack" in captured.out and "weights ema" in captured.err.splitlines()[0]
    run = tmp_path / "runs" / "my_data_cpu_budget30_fcn4s_regnetx008"
    assert (run / "best.pth").is_file() and not (tmp_path / "runs" / "camvid").exists()
    for folder in ("predictions", "predictions_onnx"):
        labels = sorted((tmp_path / folder).glob("scene0_*.png"))
        labels = [p for p in labels if "overlay" not in p.name]
        assert len(labels) == 2
    # the ONNX file's predictions are the checkpoint's (the same passes, read from its metadata)
    for a in (tmp_path / "predictions").glob("scene0_*[0-9].png"):
        b = tmp_path / "predictions_onnx" / a.name
        assert (np.asarray(Image.open(a)) == np.asarray(Image.open(b))).mean() > 0.999
