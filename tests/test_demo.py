"""The generated shapes dataset and the out-of-the-box demo, end to end on a tiny budget."""

import json

import numpy as np
import pytest
from PIL import Image

from fcnkit.cli import main
from fcnkit.data import build_dataset, check_dataset
from fcnkit.data.synthetic import SHAPE_CLASSES, make_shapes_dataset


def test_shapes_dataset_is_deterministic_folder_format(tmp_path):
    a = make_shapes_dataset(tmp_path / "a", {"train": 3, "val": 2}, size=(48, 64), seed=5)
    b = make_shapes_dataset(tmp_path / "b", {"train": 5, "val": 2}, size=(48, 64), seed=5)
    for name in ("train_0000.png", "train_0002.png"):
        assert (a / "images/train" / name).read_bytes() == (b / "images/train" / name).read_bytes()
    # a split does not depend on the size of the others
    assert (a / "masks/val/val_0001.png").read_bytes() == (b / "masks/val/val_0001.png").read_bytes()
    other = make_shapes_dataset(tmp_path / "c", {"train": 1}, size=(48, 64), seed=6)
    assert (other / "images/train/train_0000.png").read_bytes() != (a / "images/train/train_0000.png").read_bytes()

    ds = build_dataset("folder", a, "train")
    assert list(ds.classes) == list(SHAPE_CLASSES) and ds.ignore_index == 255
    report = check_dataset(ds)
    assert not report.errors
    sample = ds.load(0)
    assert tuple(sample["image"].shape) == (3, 48, 64) and tuple(sample["label"].shape) == (48, 64)
    values = set(np.unique(np.concatenate([np.array(Image.open(p)).ravel() for p in (a / "masks/train").iterdir()])))
    assert values <= {0, 1, 2, 3, 255} and {0, 255} < values


def test_shape_outlines_are_ignored_and_interiors_labelled(tmp_path):
    root = make_shapes_dataset(tmp_path, {"train": 6}, size=(96, 96), seed=1)
    for path in sorted((root / "masks/train").iterdir()):
        label = np.array(Image.open(path))
        # two neighbouring labelled pixels always have the same class: class changes only across ignored outlines
        for a, b in ((label[:, :-1], label[:, 1:]), (label[:-1], label[1:])):
            both = (a != 255) & (b != 255)
            assert both.mean() > 0.8 and np.array_equal(a[both], b[both]), path
        assert (label != 255).mean() > 0.8 and len(np.unique(label)) >= 3


def _miou_from_files(pred_dir, mask_dir, num_classes):
    matrix = np.zeros((num_classes, num_classes), np.int64)
    for mask_path in sorted(mask_dir.iterdir()):
        truth = np.array(Image.open(mask_path)).astype(np.int64)
        pred = np.array(Image.open(pred_dir / mask_path.name)).astype(np.int64)
        valid = truth != 255
        matrix += np.bincount(truth[valid] * num_classes + pred[valid], minlength=num_classes**2).reshape(
            num_classes, num_classes
        )
    tp = np.diag(matrix).astype(float)
    union = matrix.sum(0) + matrix.sum(1) - tp
    return float(np.mean(tp[union > 0] / union[union > 0]))


@pytest.mark.slow
def test_demo_writes_every_file_and_reports_the_test_miou(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--epochs", "1", "--train-images", "16", "--min-miou", "0"])
    assert code == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "eval/metrics.json").read_text())
    # the printed mIoU is the one recomputed from the written label PNGs and the ground-truth masks
    miou = _miou_from_files(out / "predict", out / "data/masks/test", len(SHAPE_CLASSES))
    assert metrics["miou"] == pytest.approx(miou, abs=1e-9)
    assert f"held-out test mIoU {miou * 100:.2f} %" in printed
    expected = {
        out / "train/best.pth": None,
        out / "train/config.yaml": None,
        out / "train/pictures/val_epoch001.png": (3 * 128, 4 * 128),  # 3 columns x 4 rows of 128 px images
        out / "train/learning_curves.png": (600, 300),
        out / "eval/confusion_matrix.png": (400, 400),
        out / "eval/per_class_iou.png": (400, 150),
        out / "predict/legend.png": (60, 4 * 12),
        out / "predict/test_0000_overlay.jpg": (128, 128),
    }
    for path, min_size in expected.items():
        assert path.is_file(), path
        if min_size is not None:
            width, height = Image.open(path).size
            assert width >= min_size[0] and height >= min_size[1], (path, width, height)
        if path.suffix == ".png" or path.name in ("best.pth", "config.yaml"):
            assert str(path) in printed, path
    assert len(list((out / "predict").glob("test_*.png"))) == 64


def test_demo_min_miou_sets_the_exit_status(monkeypatch, tmp_path, capsys):
    from fcnkit.apps.demo import DemoResult

    def fake_run_demo(out, **kwargs):
        return DemoResult(tmp_path, miou=0.79, pixel_acc=0.9, files={}, seconds=1.0)

    monkeypatch.setattr("fcnkit.cli.demo.run_demo", fake_run_demo)
    assert main(["demo", "--out", str(tmp_path), "--min-miou", "80"]) == 1
    assert "demo mIoU 79.00 is below --min-miou 80" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path), "--min-miou", "79"]) == 0
