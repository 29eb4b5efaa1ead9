"""Data traps stopped before training, with the fix named: 0/255 masks, label_map, JPEG colour masks, group splits."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from fcnkit.cli import main
from fcnkit.data import build_dataset, check_dataset, label_traps
from fcnkit.engine.train import train
from fcnkit.errors import DataError
from test_train import tiny_config


def make_binary_masks(root, n_train=8, n_val=3, size=(40, 48), seed=0):
    """A one-class problem as users store it: masks of 0 (background) and 255 (lesion)."""
    rng = np.random.default_rng(seed)
    h, w = size
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(n):
            yy, xx = np.mgrid[:h, :w]
            cy, cx, r = rng.integers(10, h - 10), rng.integers(10, w - 10), rng.integers(6, 12)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            image = np.where(disc[..., None], 200, 40) + rng.integers(-25, 25, (h, w, 3))
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / "images" / split / f"p{i}.png")
            Image.fromarray((disc * 255).astype(np.uint8)).save(root / "masks" / split / f"p{i}.png")
    (root / "classes.yaml").write_text("classes: [background, lesion]\n")
    return root


@pytest.fixture()
def binary(tmp_path):
    return make_binary_masks(tmp_path / "lesions")


def test_binary_0_255_masks_stop_data_check_and_training_with_the_fix_named(binary, tmp_path, capsys):
    assert main(["data", "check", "folder", "--root", str(binary)]) == 1
    captured = capsys.readouterr()
    assert "lesion" in captured.out and "(absent)" in captured.out
    assert "'lesion' (index 1) has no pixel" in captured.err and "label_map: {255: 1}" in captured.err
    with pytest.raises(DataError, match=r"label_map: \{255: 1\}"):
        train(tiny_config(binary, tmp_path / "run", "pictures=0"))
    assert not (tmp_path / "run").exists()  # stopped before anything was written


def test_label_map_makes_the_same_folder_train_and_report_the_foreground(binary, tmp_path, capsys):
    (binary / "classes.yaml").write_text("classes: [background, lesion]\nlabel_map: {255: 1}\n")
    dataset = build_dataset("folder", str(binary), "train")
    raw = np.asarray(Image.open(binary / "masks" / "train" / "p0.png"))
    assert torch.equal(dataset.load(0)["label"], torch.from_numpy((raw == 255).astype(np.int64)))
    report = check_dataset(dataset)
    assert report.ignored_pixels == 0 and report.class_pixels[1] == int((raw > 0).sum()) + sum(
        int((np.asarray(Image.open(p)) > 0).sum()) for p in sorted((binary / "masks" / "train").glob("p[1-9].png"))
    )
    assert label_traps(report, "x") == []
    assert main(["data", "check", "folder", "--root", str(binary)]) == 0
    out = tmp_path / "run"
    train(tiny_config(binary, out, "pictures=0", "schedule.epochs=2"))
    val = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"val"' in line][-1]
    assert len(val["val"]["iou"]) == 2 and all(math.isfinite(v) for v in val["val"]["iou"])
    capsys.readouterr()
    assert main(["eval", str(out / "best.pth"), "--workers", "0"]) == 0
    table = capsys.readouterr().out
    assert "lesion" in table


def test_a_label_map_that_names_no_class_is_refused(binary):
    (binary / "classes.yaml").write_text("classes: [background, lesion]\nlabel_map: {255: 7}\n")
    with pytest.raises(DataError, match="label_map"):
        build_dataset("folder", str(binary), "train")


COLOURS = np.array([[0, 0, 0], [220, 30, 30], [30, 30, 220], [30, 200, 30]], np.uint8)


def _jpeg_masks(root):
    label = np.zeros((64, 96), np.uint8)
    label[13:45, 11:43], label[5:37, 53:85], label[45:64, 0:29] = 1, 2, 3
    for split in ("train",):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        Image.fromarray(COLOURS[label]).save(root / "images" / split / "a.png")
        Image.fromarray(COLOURS[label]).save(root / "masks" / split / "a.jpg", quality=95, subsampling=0)
    return label


def test_rgb_masks_saved_as_jpeg_are_named_and_a_tolerance_reads_them(tmp_path):
    root = tmp_path / "jpeg"
    truth = _jpeg_masks(root)
    colours = "colors: [[0, 0, 0], [220, 30, 30], [30, 30, 220], [30, 200, 30]]\n"
    (root / "classes.yaml").write_text("classes: [bg, red, blue, green]\n" + colours)
    jpeg = np.asarray(Image.open(root / "masks" / "train" / "a.jpg")).astype(int)
    gap = int(np.abs(jpeg[:, :, None, :] - COLOURS[None, None].astype(int)).max(-1).min(-1).max())
    assert 0 < gap <= 32  # the file really is a few levels off the declared colours
    dataset = build_dataset("folder", str(root), "train")
    with pytest.raises(DataError, match=f"as in a mask saved as JPEG.*color_tolerance: {gap}"):
        dataset.load(0)
    (root / "classes.yaml").write_text("classes: [bg, red, blue, green]\n" + colours + f"color_tolerance: {gap}\n")
    assert np.array_equal(build_dataset("folder", str(root), "train").load(0)["label"].numpy(), truth)
    # a colour far from every declared one is still an error with a tolerance
    far = COLOURS[truth].copy()
    far[0, 0] = (128, 128, 128)
    Image.fromarray(far).save(root / "masks" / "train" / "a.jpg", quality=100, subsampling=0)
    with pytest.raises(DataError, match="not in the colour map"):
        build_dataset("folder", str(root), "train").load(0)


def test_data_split_keeps_each_video_on_one_side_and_never_replaces_split_files(tmp_path, capsys):
    root = tmp_path / "videos"
    (root / "images").mkdir(parents=True)
    (root / "classes.yaml").write_text("classes: [a, b]\n")
    for video in range(6):
        for frame in range(4 + video):
            Image.new("RGB", (8, 8)).save(root / "images" / f"vid{video}_{frame:04d}.png")
    total = sum(4 + v for v in range(6))
    assert main(["data", "split", str(root), "--val", "0.25", "--group-pattern", "^[^_]+"]) == 0
    splits = {n: (root / "splits" / f"{n}.txt").read_text().split() for n in ("train", "val")}
    videos = {n: {s.split("_")[0] for s in stems} for n, stems in splits.items()}
    assert not videos["train"] & videos["val"] and videos["train"] | videos["val"] == {f"vid{v}" for v in range(6)}
    assert sorted(splits["train"] + splits["val"]) == sorted(p.stem for p in (root / "images").iterdir())
    assert len(splits["val"]) >= 0.25 * total and len(videos["val"]) >= 1
    # the folder dataset reads them, with groups from the same pattern
    val = build_dataset("folder", str(root), "val", group_pattern="^[^_]+")
    assert set(val.group_counts()) == videos["val"]
    # run again: the files exist, nothing is replaced
    before = (root / "splits" / "val.txt").read_text()
    capsys.readouterr()
    assert main(["data", "split", str(root), "--val", "0.5", "--group-pattern", "^[^_]+"]) == 2
    assert "already exist" in capsys.readouterr().err and (root / "splits" / "val.txt").read_text() == before
    # without groups it still splits, and says each image was its own group
    (root / "splits" / "train.txt").unlink()
    (root / "splits" / "val.txt").unlink()
    assert main(["data", "split", str(root)]) == 0
    assert "each image is its own group" in capsys.readouterr().err
