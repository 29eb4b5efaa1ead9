"""PASCAL Context, ADE20K and Cityscapes adapters, each on a tiny copy of its on-disk layout written here.

The expected train labels are computed in this file from tables typed in independently of the adapters
(the official Cityscapes id -> train id list, "minus one" for ADE20K and Context-59).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fcnkit.data import DataError, build_dataset, check_dataset, list_datasets

H, W = 16, 24


# --- fixture writers ---------------------------------------------------------------------------------


def write_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)).save(path)


def write_gray(path: Path, values: np.ndarray) -> None:
    """An 8-bit grayscale PNG, as all three datasets store their label maps."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint8), mode="L").save(path)


def label_covering(seed: int, high: int) -> np.ndarray:
    """H x W values in 0..high, every one of them present (shuffled), so each mapping entry is exercised."""
    assert high + 1 <= H * W
    rng = np.random.default_rng(seed)
    values = np.concatenate([np.arange(high + 1), rng.integers(0, high + 1, H * W - high - 1)])
    return rng.permutation(values).reshape(H, W)


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def loaded(ds, index: int) -> np.ndarray:
    sample = ds[index]
    assert sample["image"].dtype == torch.uint8 and tuple(sample["image"].shape) == (3, H, W)
    assert sample["label"].dtype == torch.int64
    return sample["label"].numpy()


# --- PASCAL Context ----------------------------------------------------------------------------------

CONTEXT_TRAIN, CONTEXT_VAL = ["2008_000002", "2008_000003", "2010_000001"], ["2008_000009", "2010_000005"]


@pytest.fixture
def context(tmp_path):
    """``tmp_path/VOCdevkit/VOC2010`` in the converter's layout; returns (tmp_path, raw labels by id)."""
    voc = tmp_path / "VOCdevkit" / "VOC2010"
    raw = {}
    for n, i in enumerate(CONTEXT_TRAIN + CONTEXT_VAL):
        write_image(voc / "JPEGImages" / f"{i}.jpg", n)
        raw[i] = label_covering(n, 59)
        write_gray(voc / "SegmentationClassContext" / f"{i}.png", raw[i])
    write_lines(voc / "ImageSets" / "SegmentationContext" / "train.txt", CONTEXT_TRAIN)
    write_lines(voc / "ImageSets" / "SegmentationContext" / "val.txt", CONTEXT_VAL)
    return tmp_path, raw


@pytest.mark.parametrize("level", ["top", "devkit", "voc2010"])
def test_context59_drops_background_and_shifts_classes(context, level):
    top, raw = context
    root = {"top": top, "devkit": top / "VOCdevkit", "voc2010": top / "VOCdevkit" / "VOC2010"}[level]
    ds = build_dataset("pascal_context", root, "train")
    assert len(ds) == 3 and len(build_dataset("pascal_context", root, "val")) == 2
    assert ds.num_classes == 59 and ds.ignore_index == 255
    assert ds.classes[:4] == ["aeroplane", "bag", "bed", "bedclothes"]
    assert ds.classes[-4:] == ["wall", "water", "window", "wood"]
    assert ds.classes[36] == "person" and ds.classes[39] == "pottedplant"
    for index, i in enumerate(CONTEXT_TRAIN):
        assert ds[index]["name"] == i
        expected = np.where(raw[i] == 0, 255, raw[i] - 1)
        label = loaded(ds, index)
        assert np.array_equal(label, expected)
        assert (label[raw[i] == 1] == 0).all() and (label[raw[i] == 59] == 58).all()


def test_context60_keeps_background_as_class_zero(context):
    top, raw = context
    ds = build_dataset("pascal_context", top, "val", num_classes=60)
    assert ds.num_classes == 60 and ds.classes[:3] == ["background", "aeroplane", "bag"] and ds.classes[-1] == "wood"
    for index, i in enumerate(CONTEXT_VAL):
        assert np.array_equal(loaded(ds, index), raw[i])
    with pytest.raises(ValueError, match="59 or 60"):
        build_dataset("pascal_context", top, "val", num_classes=21)


@pytest.mark.parametrize("num_classes", [59, 60])
@pytest.mark.parametrize("bad", [60, 255])
def test_context_value_above_59_names_the_file(context, num_classes, bad):
    top, raw = context
    path = top / "VOCdevkit" / "VOC2010" / "SegmentationClassContext" / f"{CONTEXT_TRAIN[1]}.png"
    label = raw[CONTEXT_TRAIN[1]].copy()
    label[3, 5] = bad
    write_gray(path, label)
    ds = build_dataset("pascal_context", top, "train", num_classes=num_classes)
    with pytest.raises(DataError, match=re.escape(str(path))):
        ds[1]
    report = check_dataset(ds)
    assert report.num_errors == 1 and str(path) in report.errors[0] and str(bad) in report.errors[0]


def test_context_split_and_root_errors(context, tmp_path):
    with pytest.raises(ValueError, match="Did you mean: train"):
        build_dataset("pascal_context", context[0], "trian")
    with pytest.raises(DataError, match="SegmentationContext"):
        build_dataset("pascal_context", tmp_path / "nowhere", "train")


def test_context_check_dataset_clean(context):
    ds = build_dataset("pascal_context", context[0], "train")
    report = check_dataset(ds)
    assert report.num_errors == 0 and report.num_checked == 3
    assert report.label_values == [*range(59), 255]


# --- ADE20K ------------------------------------------------------------------------------------------

ADE_TRAIN = ["ADE_train_00000001", "ADE_train_00000002", "ADE_train_00000003"]
ADE_VAL = ["ADE_val_00000001", "ADE_val_00000002"]


@pytest.fixture
def ade(tmp_path):
    """``tmp_path/ADEChallengeData2016`` with 3 training and 2 validation pairs; returns (root, raw labels)."""
    root = tmp_path / "ADEChallengeData2016"
    raw = {}
    for n, (folder, name) in enumerate([("training", i) for i in ADE_TRAIN] + [("validation", i) for i in ADE_VAL]):
        write_image(root / "images" / folder / f"{name}.jpg", 10 + n)
        raw[name] = label_covering(10 + n, 150)
        write_gray(root / "annotations" / folder / f"{name}.png", raw[name])
    return root, raw


def test_ade20k_minus_one_with_zero_ignored(ade):
    root, raw = ade
    ds = build_dataset("ade20k", root, "train")
    assert len(ds) == 3 and [s.name for s in ds.samples] == ADE_TRAIN
    assert ds.num_classes == 150 and ds.ignore_index == 255
    assert ds.classes[:5] == ["wall", "building", "sky", "floor", "tree"]
    assert ds.classes[-3:] == ["glass", "clock", "flag"]
    for index, name in enumerate(ADE_TRAIN):
        label = loaded(ds, index)
        assert np.array_equal(label, np.where(raw[name] == 0, 255, raw[name] - 1))
        assert (label[raw[name] == 0] == 255).all()
        assert (label[raw[name] == 1] == 0).all() and (label[raw[name] == 150] == 149).all()


def test_ade20k_split_aliases_and_parent_root(ade):
    root, _ = ade
    for split, names in [("train", ADE_TRAIN), ("training", ADE_TRAIN), ("val", ADE_VAL), ("validation", ADE_VAL)]:
        ds = build_dataset("ade20k", root.parent, split)
        assert [s.name for s in ds.samples] == names
    with pytest.raises(ValueError, match=r"Did you mean: .*val"):
        build_dataset("ade20k", root, "valid")


def test_ade20k_bad_value_and_missing_annotation_name_the_file(ade):
    root, raw = ade
    bad_path = root / "annotations" / "training" / f"{ADE_TRAIN[0]}.png"
    label = raw[ADE_TRAIN[0]].copy()
    label[0, 0] = 151
    write_gray(bad_path, label)
    missing = root / "annotations" / "training" / f"{ADE_TRAIN[2]}.png"
    missing.unlink()
    ds = build_dataset("ade20k", root, "train")
    assert len(ds) == 3  # the image without an annotation is listed, and reported when loaded
    with pytest.raises(DataError, match=re.escape(str(bad_path))):
        ds[0]
    with pytest.raises(DataError, match=re.escape(str(missing))):
        ds[2]
    report = check_dataset(ds)
    assert report.num_errors == 2 and report.num_checked == 3


def test_ade20k_check_dataset_clean(ade):
    report = check_dataset(build_dataset("ade20k", ade[0], "val"))
    assert report.num_errors == 0 and report.num_checked == 2
    assert report.label_values == [*range(150), 255]


# --- Cityscapes --------------------------------------------------------------------------------------

#: cityscapesScripts labels.py, typed in: label id -> train id for the 19 evaluated classes.
OFFICIAL_TRAIN_IDS = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
CITY_FRAMES = {
    "train": [
        ("aachen", "aachen_000000_000019"),
        ("aachen", "aachen_000001_000019"),
        ("bochum", "bochum_000000_000313"),
    ],
    "val": [("frankfurt", "frankfurt_000000_000294"), ("lindau", "lindau_000000_000019")],
    "test": [("berlin", "berlin_000000_000019")],
}


def to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    out = np.full(label_ids.shape, 255, dtype=np.int64)
    for label_id, train_id in OFFICIAL_TRAIN_IDS.items():
        out[label_ids == label_id] = train_id
    return out


@pytest.fixture
def city(tmp_path):
    """A Cityscapes root with leftImg8bit + gtFine (labelIds and labelTrainIds); returns (root, raw ids)."""
    raw = {}
    n = 0
    for split, frames in CITY_FRAMES.items():
        for town, stem in frames:
            write_image(tmp_path / "leftImg8bit" / split / town / f"{stem}_leftImg8bit.png", 20 + n)
            raw[stem] = label_covering(20 + n, 33)
            gt = tmp_path / "gtFine" / split / town
            write_gray(gt / f"{stem}_gtFine_labelIds.png", raw[stem])
            write_gray(gt / f"{stem}_gtFine_labelTrainIds.png", to_train_ids(raw[stem]))
            n += 1
    # Files the adapter must skip: an instance map next to the labels and a stray non-image file.
    write_gray(
        tmp_path / "gtFine" / "train" / "aachen" / "aachen_000000_000019_gtFine_instanceIds.png",
        raw["aachen_000000_000019"],
    )
    (tmp_path / "leftImg8bit" / "train" / "aachen" / "notes.txt").write_text("not an image")
    return tmp_path, raw


@pytest.mark.parametrize("label_type", ["labelIds", "trainIds"])
def test_cityscapes_every_label_id_maps_to_the_official_train_id(city, label_type):
    root, raw = city
    ds = build_dataset("cityscapes", root, "train", label_type=label_type)
    assert [s.name for s in ds.samples] == [stem for _, stem in CITY_FRAMES["train"]]
    assert ds.num_classes == 19 and ds.ignore_index == 255
    assert ds.classes[:3] == ["road", "sidewalk", "building"] and ds.classes[-3:] == ["train", "motorcycle", "bicycle"]
    assert ds.palette[0] == (128, 64, 128) and ds.palette[10] == (70, 130, 180) and ds.palette[18] == (119, 11, 32)
    for index, (_, stem) in enumerate(CITY_FRAMES["train"]):
        label = loaded(ds, index)
        for label_id in range(34):
            assert (label[raw[stem] == label_id] == OFFICIAL_TRAIN_IDS.get(label_id, 255)).all(), label_id


def test_cityscapes_split_counts_and_names(city):
    root, _ = city
    for split, frames in CITY_FRAMES.items():
        assert len(build_dataset("cityscapes", root, split)) == len(frames)
    with pytest.raises(ValueError, match="Did you mean: val"):
        build_dataset("cityscapes", root, "valid")
    with pytest.raises(ValueError, match="Did you mean: trainIds"):
        build_dataset("cityscapes", root, "train", label_type="trainId")
    with pytest.raises(DataError, match="leftImg8bit"):
        build_dataset("cityscapes", root / "gtFine", "train")


def test_cityscapes_bad_values_and_missing_label_name_the_file(city):
    root, raw = city
    town, stem = CITY_FRAMES["val"][0]
    ids_path = root / "gtFine" / "val" / town / f"{stem}_gtFine_labelIds.png"
    label = raw[stem].copy()
    label[2, 2] = 34
    write_gray(ids_path, label)
    with pytest.raises(DataError, match=re.escape(str(ids_path))):
        build_dataset("cityscapes", root, "val")[0]
    train_ids_path = root / "gtFine" / "val" / town / f"{stem}_gtFine_labelTrainIds.png"
    write_gray(train_ids_path, np.full((H, W), 19))
    with pytest.raises(DataError, match=re.escape(str(train_ids_path))):
        build_dataset("cityscapes", root, "val", label_type="trainIds")[0]
    town, stem = CITY_FRAMES["val"][1]
    missing = root / "gtFine" / "val" / town / f"{stem}_gtFine_labelIds.png"
    missing.unlink()
    with pytest.raises(DataError, match=re.escape(str(missing))):
        build_dataset("cityscapes", root, "val")[1]


def test_cityscapes_check_dataset_clean(city):
    report = check_dataset(build_dataset("cityscapes", city[0], "train"))
    assert report.num_errors == 0 and report.num_checked == 3
    assert report.label_values == [*range(19), 255]


def test_all_three_are_registered():
    assert {"pascal_context", "ade20k", "cityscapes"} <= set(list_datasets())
