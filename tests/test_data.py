"""Datasets and file reading, on tiny fixtures written to tmp_path in every on-disk layout."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image, ImageFile
from PIL.PngImagePlugin import PngInfo

from fcnkit.data import (
    DATASETS,
    DataError,
    SampleFiles,
    SegmentationDataset,
    build_dataset,
    check_dataset,
    io,
    list_datasets,
    read_image,
    read_label,
    voc_palette,
)

# --- helpers that write files ------------------------------------------------------------------------


def rng_image(seed: int, h: int, w: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def voc_label(seed: int, h: int, w: int) -> np.ndarray:
    """Random classes 0-20 inside a 1-pixel void (255) border, like VOC's object outlines."""
    label = np.random.default_rng(seed).integers(0, 21, (h, w)).astype(np.uint8)
    label[0, :] = label[-1, :] = label[:, 0] = label[:, -1] = 255
    return label


def save_palette_png(path: Path, label: np.ndarray) -> None:
    img = Image.frombytes("P", (label.shape[1], label.shape[0]), label.tobytes())
    img.putpalette([v for rgb in voc_palette(256) for v in rgb])
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def save_rgb(path: Path, pixels: np.ndarray, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **kwargs)


def save_sbd_mat(path: Path, label: np.ndarray) -> None:
    """A .mat shaped like SBD's cls files: struct GTcls with Segmentation, Boundaries, CategoriesPresent."""
    boundaries = np.empty((20, 1), dtype=object)
    for k in range(20):
        boundaries[k, 0] = np.zeros(label.shape, dtype=np.uint8)
    present = np.unique(label[label > 0]).reshape(-1, 1).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"GTcls": {"Segmentation": label, "Boundaries": boundaries, "CategoriesPresent": present}})


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


# --- VOC / SBD fixtures ------------------------------------------------------------------------------

VOC_TRAIN, VOC_VAL = ["2007_000001", "2007_000002", "2008_000003"], ["2007_000010", "2008_000011"]
SBD_TRAIN, SBD_VAL = ["2007_000010", "2009_000100", "2009_000101"], ["2007_000002", "2009_000200"]


@pytest.fixture
def voc_sbd(tmp_path):
    """``tmp_path`` holding VOCdevkit/VOC2012 and benchmark_RELEASE/dataset; returns (root, labels)."""
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    sbd = tmp_path / "benchmark_RELEASE" / "dataset"
    labels: dict[tuple[str, str], np.ndarray] = {}
    for n, i in enumerate(VOC_TRAIN + VOC_VAL):
        h, w = 10 + n, 14 - n
        save_rgb(voc / "JPEGImages" / f"{i}.jpg", rng_image(n, h, w))
        labels["voc", i] = voc_label(n, h, w)
        save_palette_png(voc / "SegmentationClass" / f"{i}.png", labels["voc", i])
    seg = voc / "ImageSets" / "Segmentation"
    write_lines(seg / "train.txt", VOC_TRAIN)
    write_lines(seg / "val.txt", VOC_VAL)
    write_lines(seg / "trainval.txt", VOC_TRAIN + VOC_VAL)
    for n, i in enumerate(SBD_TRAIN + SBD_VAL):
        h, w = 9 + n, 11
        save_rgb(sbd / "img" / f"{i}.jpg", rng_image(100 + n, h, w))
        labels["sbd", i] = np.random.default_rng(100 + n).integers(0, 21, (h, w)).astype(np.uint8)
        save_sbd_mat(sbd / "cls" / f"{i}.mat", labels["sbd", i])
    write_lines(sbd / "train.txt", SBD_TRAIN)
    write_lines(sbd / "val.txt", SBD_VAL)
    return tmp_path, labels


# --- reading images ----------------------------------------------------------------------------------


def test_read_image_rgb_png_exact(tmp_path):
    pixels = rng_image(0, 5, 7)
    save_rgb(tmp_path / "x.png", pixels)
    img = read_image(tmp_path / "x.png")
    assert img.dtype == torch.uint8 and img.shape == (3, 5, 7)
    assert np.array_equal(img.permute(1, 2, 0).numpy(), pixels)


def photo_like(seed: int, h: int, w: int) -> np.ndarray:
    """Smooth gradients with noise on top, so that every PNG row filter has something to predict."""
    y, x = np.mgrid[0:h, 0:w]
    smooth = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) * 127 // max(h + w - 2, 1)], 2)
    noise = np.random.default_rng(seed).integers(-12, 13, (h, w, 3))
    return np.clip(smooth + noise, 0, 255).astype(np.uint8)


def ffmpeg_png(av, path: Path, pixels: np.ndarray, pred: str) -> None:
    """``pixels`` as an RGB PNG written by FFmpeg's encoder with row filter ``pred``."""
    encoder = av.CodecContext.create("png", "w")
    encoder.height, encoder.width = pixels.shape[:2]
    encoder.pix_fmt = "rgb24"
    encoder.options = {"pred": pred}
    packets = encoder.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")) + encoder.encode(None)
    path.write_bytes(b"".join(bytes(packet) for packet in packets))


@pytest.mark.parametrize("pred", ["none", "sub", "up", "avg", "paeth", "mixed"])
def test_rgb_png_decoded_by_ffmpeg_has_pils_pixels(tmp_path, pred):
    """8-bit RGB PNGs go through FFmpeg's decoder (faster); PNG is lossless, so PIL's pixels, for every row
    filter, in files written by FFmpeg and by PIL."""
    av = pytest.importorskip("av")
    pixels = photo_like(int.from_bytes(pred.encode(), "big") % 1000, 37, 53)
    ffmpeg_png(av, tmp_path / "ffmpeg.png", pixels, pred)
    save_rgb(tmp_path / "pil.png", pixels)
    for name in ("ffmpeg.png", "pil.png"):
        path = tmp_path / name
        assert np.array_equal(np.asarray(Image.open(path)), pixels)  # the file is what it claims to be
        assert io._read_png_rgb24(path) is not None  # ... and takes the FFmpeg path
        out = read_image(path)
        assert out.dtype == torch.uint8 and out.shape == (3, 37, 53) and out.is_contiguous()
        assert np.array_equal(out.permute(1, 2, 0).numpy(), pixels)


def test_pngs_ffmpeg_does_not_decode_exactly_as_pil_go_to_pil(tmp_path, monkeypatch):
    """Text chunks (which may hold an orientation), eXIf, a missing end, other colour types, an error inside the
    data and a missing PyAV all send the file to PIL, with PIL's result or error."""
    av = pytest.importorskip("av")
    pixels = photo_like(5, 8, 16)
    info = PngInfo()
    info.add_text("Comment", "a text chunk")
    save_rgb(tmp_path / "text.png", pixels, pnginfo=info)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    save_rgb(tmp_path / "exif.png", pixels, exif=exif.tobytes())
    ffmpeg_png(av, tmp_path / "whole.png", pixels, "paeth")
    whole = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "no_end.png").write_bytes(whole[:-12])  # IEND cut off: PIL reads it all the same
    Image.fromarray(pixels[..., 0]).save(tmp_path / "gray.png")
    for name in ("text.png", "exif.png", "no_end.png", "gray.png"):
        assert io._read_png_rgb24(tmp_path / name) is None, name
    assert np.array_equal(read_image(tmp_path / "text.png").permute(1, 2, 0).numpy(), pixels)
    assert np.array_equal(read_image(tmp_path / "exif.png").permute(1, 2, 0).numpy(), np.rot90(pixels, k=-1))
    assert np.array_equal(read_image(tmp_path / "no_end.png").permute(1, 2, 0).numpy(), pixels)

    # zeroed compressed data, whole file structure intact: FFmpeg refuses it, then PIL names the file
    start = whole.index(b"IDAT") + 4
    broken = whole[:start] + bytes(40) + whole[start + 40 :]
    (tmp_path / "broken.png").write_bytes(broken)
    assert io._plain_rgb_png(broken) and io._read_png_rgb24(tmp_path / "broken.png") is None
    with pytest.raises(DataError, match=re.escape("broken.png")):
        read_image(tmp_path / "broken.png")

    monkeypatch.setitem(sys.modules, "av", None)  # PyAV not installed: PIL decodes every file
    assert io._read_png_rgb24(tmp_path / "whole.png") is None
    assert np.array_equal(read_image(tmp_path / "whole.png").permute(1, 2, 0).numpy(), pixels)


def test_read_image_grayscale_rgba_palette_16bit_cmyk(tmp_path):
    gray = np.arange(30, dtype=np.uint8).reshape(5, 6) * 8
    Image.fromarray(gray).save(tmp_path / "gray.png")
    out = read_image(tmp_path / "gray.png")
    assert out.shape == (3, 5, 6) and out.dtype == torch.uint8
    for c in range(3):
        assert np.array_equal(out[c].numpy(), gray)

    rgba = rng_image(1, 4, 5)
    alpha = np.full((4, 5, 1), 7, dtype=np.uint8)  # nearly transparent: the colour must survive anyway
    Image.fromarray(np.concatenate([rgba, alpha], axis=2), mode="RGBA").save(tmp_path / "rgba.png")
    assert np.array_equal(read_image(tmp_path / "rgba.png").permute(1, 2, 0).numpy(), rgba)

    indices = np.array([[0, 1], [2, 15]], dtype=np.uint8)
    save_palette_png(tmp_path / "pal.png", indices)
    pal = np.array(voc_palette(256), dtype=np.uint8)
    assert np.array_equal(read_image(tmp_path / "pal.png").permute(1, 2, 0).numpy(), pal[indices])

    sixteen = np.array([[0, 257, 65535], [1000, 30000, 65280]], dtype=np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode in ("I;16", "I")
    expected = np.clip(np.rint(sixteen / 257.0), 0, 255).astype(np.uint8)  # [[0, 1, 255], [4, 117, 254]]
    out = read_image(tmp_path / "deep.png")
    assert out.shape == (3, 2, 3) and out.dtype == torch.uint8
    assert np.array_equal(out[1].numpy(), expected)

    Image.new("CMYK", (3, 2), (0, 255, 255, 0)).save(tmp_path / "cmyk.tif")  # pure red in CMYK
    out = read_image(tmp_path / "cmyk.tif")
    assert out.shape == (3, 2, 3)
    assert out[:, 0, 0].tolist() == [255, 0, 0]


def exif_rotated_jpeg(path: Path) -> np.ndarray:
    """Write a 8x16 (HxW) JPEG whose EXIF says 'rotate 90 degrees clockwise to display' (tag 6).

    Returns the upright picture a viewer shows, (16, 8, 3): red top half, blue bottom half.
    """
    raw = np.zeros((8, 16, 3), dtype=np.uint8)
    raw[:, :8] = (255, 0, 0)  # stored left half red ...
    raw[:, 8:] = (0, 0, 255)  # ... right half blue
    exif = Image.Exif()
    exif[0x0112] = 6
    save_rgb(path, raw, exif=exif.tobytes(), quality=95, subsampling=0)
    return np.rot90(raw, k=-1).copy()  # turned clockwise, the stored left edge becomes the top


def test_exif_rotated_jpeg_comes_out_upright(tmp_path):
    upright = exif_rotated_jpeg(tmp_path / "rot.jpg")
    img = read_image(tmp_path / "rot.jpg")
    assert img.shape == (3, 16, 8)
    diff = np.abs(img.permute(1, 2, 0).numpy().astype(int) - upright.astype(int))
    assert diff[np.r_[0:6, 10:16]].max() < 40  # away from the edge, where JPEG rings
    assert img[0, 2, 4] > 200 and img[2, 2, 4] < 50  # top is red
    assert img[2, 13, 4] > 200 and img[0, 13, 4] < 50  # bottom is blue


def test_exif_rotated_image_matches_upright_label(tmp_path):
    root = tmp_path / "data"
    write_classes(root, {"classes": ["blue", "red"]})
    exif_rotated_jpeg(root / "images" / "train" / "a.jpg")
    label = np.zeros((16, 8), dtype=np.uint8)
    label[:8] = 1  # red on top, as displayed
    save_rgb(root / "masks" / "train" / "a.png", label)
    sample = build_dataset("folder", root, "train")[0]
    red = sample["image"][0] > 128
    assert torch.equal(red, sample["label"] == 1)

    # A mask drawn on the stored (un-rotated) pixels no longer fits: the error says why.
    save_rgb(root / "masks" / "train" / "a.png", np.zeros((8, 16), dtype=np.uint8))
    with pytest.raises(DataError, match="EXIF") as info:
        build_dataset("folder", root, "train")[0]
    assert "a.jpg" in str(info.value) and "a.png" in str(info.value)


def png_bytes(tmp_path: Path) -> bytes:
    save_rgb(tmp_path / "valid.png", rng_image(3, 32, 32))
    return (tmp_path / "valid.png").read_bytes()


def test_corrupt_and_truncated_files_raise_dataerror_naming_the_file(tmp_path, monkeypatch):
    (tmp_path / "corrupt.png").write_bytes(b"not an image at all" * 10)
    data = png_bytes(tmp_path)
    (tmp_path / "half.png").write_bytes(data[: len(data) // 2])
    save_rgb(tmp_path / "valid.jpg", rng_image(4, 32, 32))
    jpg = (tmp_path / "valid.jpg").read_bytes()
    (tmp_path / "half.jpg").write_bytes(jpg[: len(jpg) // 2])
    for name in ("corrupt.png", "half.png", "half.jpg"):
        with pytest.raises(DataError, match=re.escape(name)):
            read_image(tmp_path / name)
    with pytest.raises(DataError, match=re.escape("half.png")):
        read_label(tmp_path / "half.png")
    with pytest.raises(DataError, match=re.escape("missing.png")):
        read_image(tmp_path / "missing.png")

    # Even when some other code switched PIL to tolerate truncation, the read stays strict ...
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(DataError, match=re.escape("half.jpg")):
        read_image(tmp_path / "half.jpg")
    # ... and the global switch is given back as it was.
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


# --- reading labels ----------------------------------------------------------------------------------


def test_read_label_palette_png_gives_indices_not_colours(tmp_path):
    label = voc_label(0, 6, 9)
    save_palette_png(tmp_path / "l.png", label)
    out = read_label(tmp_path / "l.png")
    assert out.dtype == torch.int64 and out.shape == (6, 9)
    assert np.array_equal(out.numpy(), label)


def test_read_label_gray_and_16bit(tmp_path):
    gray = np.array([[0, 3], [11, 255]], dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    assert read_label(tmp_path / "g.png").tolist() == gray.tolist()
    deep = np.array([[0, 300], [1000, 65535]], dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "d.png")
    assert read_label(tmp_path / "d.png").tolist() == deep.tolist()


def test_read_label_rgb_needs_a_colour_map(tmp_path):
    mask = np.zeros((2, 3, 3), dtype=np.uint8)
    mask[0, 1] = (255, 0, 0)
    save_rgb(tmp_path / "rgb.png", mask)
    with pytest.raises(DataError, match=re.escape("rgb.png")):
        read_label(tmp_path / "rgb.png")
    out = read_label(tmp_path / "rgb.png", colors={(0, 0, 0): 0, (255, 0, 0): 4})
    assert out.tolist() == [[0, 4, 0], [0, 0, 0]]


def test_read_label_sbd_mat(tmp_path):
    label = np.random.default_rng(0).integers(0, 21, (7, 5)).astype(np.uint8)
    save_sbd_mat(tmp_path / "x.mat", label)
    assert np.array_equal(read_label(tmp_path / "x.mat").numpy(), label)
    scipy.io.savemat(tmp_path / "inst.mat", {"GTinst": {"Segmentation": label}})
    with pytest.raises(DataError, match=r"inst\.mat.*GTcls"):
        read_label(tmp_path / "inst.mat")


# --- registry ----------------------------------------------------------------------------------------


def test_registry_names_and_errors(tmp_path):
    assert set(list_datasets()) == {
        "voc2012", "sbd", "voc_trainaug", "seg11valid", "camvid", "folder", "pascal_context", "ade20k", "cityscapes",
    }  # fmt: skip
    assert list_datasets() == DATASETS.names()
    with pytest.raises(KeyError, match="camvid"):
        build_dataset("camvd", tmp_path, "train")
    with pytest.raises(TypeError, match="transform"):
        build_dataset("camvid", tmp_path, "train", transfrom=None)


# --- VOC, SBD and compositions -----------------------------------------------------------------------


@pytest.mark.parametrize("level", ["top", "devkit", "voc2012"])
def test_voc2012_reads_palette_labels_from_any_root_level(voc_sbd, level):
    root, labels = voc_sbd
    given = {"top": root, "devkit": root / "VOCdevkit", "voc2012": root / "VOCdevkit" / "VOC2012"}[level]
    ds = build_dataset("voc2012", given, "train")
    assert len(ds) == 3 and ds.num_classes == 21 and ds.ignore_index == 255
    assert ds.classes[0] == "background" and ds.classes[20] == "tvmonitor"
    assert ds.palette[1] == (128, 0, 0) and ds.palette[20] == (0, 64, 128)
    for i, voc_id in enumerate(VOC_TRAIN):
        sample = ds[i]
        assert sample["name"] == voc_id
        assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, *labels["voc", voc_id].shape)
        assert np.array_equal(sample["label"].numpy(), labels["voc", voc_id])
    assert [s.name for s in build_dataset("voc2012", root, "trainval").samples] == VOC_TRAIN + VOC_VAL


def test_unknown_split_suggests(voc_sbd):
    with pytest.raises(ValueError, match="Did you mean: train"):
        build_dataset("voc2012", voc_sbd[0], "trian")


def test_voc_root_not_found(tmp_path):
    with pytest.raises(DataError, match="VOCdevkit"):
        build_dataset("voc2012", tmp_path, "train")


def test_sbd_reads_mat_labels(voc_sbd):
    root, labels = voc_sbd
    for given in (root, root / "benchmark_RELEASE", root / "benchmark_RELEASE" / "dataset"):
        ds = build_dataset("sbd", given, "val")
        assert [s.name for s in ds.samples] == SBD_VAL
    ds = build_dataset("sbd", root, "train")
    for i, sbd_id in enumerate(SBD_TRAIN):
        assert np.array_equal(ds[i]["label"].numpy(), labels["sbd", sbd_id])


def test_voc_trainaug_composition(voc_sbd):
    root, labels = voc_sbd
    ds = build_dataset("voc_trainaug", root, "train")
    expected = sorted((set(SBD_TRAIN) | set(SBD_VAL) | set(VOC_TRAIN)) - set(VOC_VAL))
    assert [s.name for s in ds.samples] == expected
    for i, files in enumerate(ds.samples):
        source = "sbd" if files.name in SBD_TRAIN + SBD_VAL else "voc"
        assert files.label.suffix == (".mat" if source == "sbd" else ".png")
        assert np.array_equal(ds[i]["label"].numpy(), labels[source, files.name])
    val = build_dataset("voc_trainaug", None, "val", voc_root=root / "VOCdevkit")
    assert [s.name for s in val.samples] == VOC_VAL
    split = build_dataset("voc_trainaug", None, "train", voc_root=root, sbd_root=root / "benchmark_RELEASE")
    assert [s.name for s in split.samples] == expected


def test_seg11valid_computed_and_listed(voc_sbd):
    root, _ = voc_sbd
    ds = build_dataset("seg11valid", root, "val")
    assert [s.name for s in ds.samples] == [i for i in VOC_VAL if i not in SBD_TRAIN]  # ["2008_000011"]
    assert all(s.image.parent.name == "JPEGImages" for s in ds.samples)

    listed = root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "seg11valid.txt"
    write_lines(listed, ["2007_000010", "2008_000011"])
    ds = build_dataset("seg11valid", root / "VOCdevkit" / "VOC2012", "val")  # no SBD needed now
    assert [s.name for s in ds.samples] == ["2007_000010", "2008_000011"]


def test_seg11valid_without_list_or_sbd_explains(voc_sbd):
    root, _ = voc_sbd
    with pytest.raises(DataError, match=re.escape("seg11valid.txt")):
        build_dataset("seg11valid", root / "VOCdevkit", "val")


# --- CamVid ------------------------------------------------------------------------------------------


@pytest.fixture
def camvid_root(tmp_path):
    root = tmp_path / "CamVid"
    labels = {}
    for split, names in (("train", ["0001TP_000010", "0001TP_000020"]), ("val", ["0016E5_00001"])):
        lines = []
        for n, name in enumerate(names):
            save_rgb(root / split / f"{name}.png", rng_image(n, 6, 8))
            labels[name] = np.random.default_rng(n).integers(0, 12, (6, 8)).astype(np.uint8)
            save_rgb(root / f"{split}annot" / f"{name}.png", labels[name])
            if split == "train":  # SegNet's own files name absolute paths on its authors' machine
                lines.append(f"/SegNet/CamVid/{split}/{name}.png /SegNet/CamVid/{split}annot/{name}.png")
            else:
                lines.append(f"{split}/{name}.png {split}annot/{name}.png")
        write_lines(root / f"{split}.txt", lines)
    return root, labels


def test_camvid_absolute_and_relative_lists(camvid_root):
    root, labels = camvid_root
    ds = build_dataset("camvid", root, "train")
    assert ds.num_classes == 11 and ds.ignore_index == 11 and len(ds.palette) == 11
    assert ds.samples[0].image == root / "train" / "0001TP_000010.png"
    for i, files in enumerate(ds.samples):
        assert np.array_equal(ds[i]["label"].numpy(), labels[files.name])
    val = build_dataset("camvid", root, "val")
    assert np.array_equal(val[0]["label"].numpy(), labels["0016E5_00001"])
    with pytest.raises(DataError, match=r"test\.txt"):
        build_dataset("camvid", root, "test")


#: how each of SegNet's four CamVid drives names its frames
SEGNET_FRAME_NAMES = {"0001TP": "0001TP_{:06d}", "0006R0": "0006R0_f{:05d}", "0016E5": "0016E5_{:05d}",
                      "Seq05VD": "Seq05VD_f{:05d}"}  # fmt: skip


@pytest.fixture
def segnet_camvid(tmp_path):
    """SegNet's ``CamVid/`` training split in its real shape: 367 frames of 360x480 from the four drives, listed in
    ``train.txt`` by absolute paths of SegNet's authors' machine. The first three frames hold their own random
    pixels and labels (classes 0-10 and void 11), returned for comparison; the other 364 are copies of one
    uniform frame, which costs little to write."""
    root = tmp_path / "CamVid"
    patterns = list(SEGNET_FRAME_NAMES.values())
    names = [patterns[i % 4].format(30 * i) for i in range(367)]
    save_rgb(root / "train" / "uniform.png", np.zeros((360, 480, 3), np.uint8))
    save_rgb(root / "trainannot" / "uniform.png", np.full((360, 480), 3, np.uint8))
    frames = {}
    for i, name in enumerate(names):
        if i < 3:
            frames[name] = rng_image(i, 360, 480), np.random.default_rng(i).integers(0, 12, (360, 480), np.uint8)
            save_rgb(root / "train" / f"{name}.png", frames[name][0])
            save_rgb(root / "trainannot" / f"{name}.png", frames[name][1])
        else:
            for folder in ("train", "trainannot"):
                shutil.copyfile(root / folder / "uniform.png", root / folder / f"{name}.png")
    write_lines(root / "train.txt", [f"/SegNet/CamVid/train/{n}.png /SegNet/CamVid/trainannot/{n}.png" for n in names])
    return root, frames


def test_segnet_camvid_at_full_size(segnet_camvid):
    root, frames = segnet_camvid
    ds = build_dataset("camvid", root, "train")
    assert len(ds) == 367
    # every absolute SegNet path re-rooted at root, every frame's drive read from its name
    assert all(s.image.is_file() and s.label.is_file() and s.image.parent == root / "train" for s in ds.samples)
    assert sorted({s.group for s in ds.samples}) == sorted(SEGNET_FRAME_NAMES)
    for i, (name, (image, label)) in enumerate(frames.items()):
        sample = ds[i]
        assert ds.samples[i].name == name
        assert sample["image"].shape == (3, 360, 480) and sample["image"].dtype == torch.uint8
        assert np.array_equal(sample["image"].permute(1, 2, 0).numpy(), image)
        assert sample["label"].shape == (360, 480)
        assert np.array_equal(sample["label"].numpy(), label)
        assert int(sample["label"].min()) >= 0 and int(sample["label"].max()) <= 11
    assert ds[366]["label"].unique().tolist() == [3]  # a copied frame reads like any other


# --- folder format -----------------------------------------------------------------------------------

COLORS = [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]]


def write_classes(root: Path, spec: dict, name: str = "classes.yaml") -> None:
    root.mkdir(parents=True, exist_ok=True)
    if name.endswith(".json"):
        (root / name).write_text(json.dumps(spec))
    else:
        import yaml

        (root / name).write_text(yaml.safe_dump(spec))


def test_folder_rgb_masks_convert_through_colours(tmp_path):
    root = tmp_path / "data"
    write_classes(root, {"classes": ["bg", "a", "b", "c", "d"], "colors": COLORS, "ignore_colors": [[255, 255, 255]]})
    expected = np.array([[0, 1, 2], [3, 4, 255]])
    colour_of = {i: tuple(c) for i, c in enumerate(COLORS)} | {255: (255, 255, 255)}
    mask = np.array([[colour_of[v] for v in row] for row in expected], dtype=np.uint8)
    save_rgb(root / "images" / "train" / "x.jpg", rng_image(0, 2, 3))
    save_rgb(root / "masks" / "train" / "x.png", mask)
    ds = build_dataset("folder", root, "train")
    assert ds.classes == ["bg", "a", "b", "c", "d"] and ds.palette[1] == (255, 0, 0)
    assert ds[0]["label"].tolist() == expected.tolist()

    mask[0, 0] = (9, 9, 9)
    save_rgb(root / "masks" / "train" / "x.png", mask)
    with pytest.raises(DataError, match=r"\(9, 9, 9\)") as info:
        ds[0]
    assert str(root / "masks" / "train" / "x.png") in str(info.value)


def test_folder_index_masks_with_split_lists(tmp_path):
    root = tmp_path / "data"
    write_classes(root, {"classes": ["bg", "fg"], "ignore_index": 9}, "classes.json")
    masks = {}
    for n, stem in enumerate(["p", "q", "r"]):
        save_rgb(root / "images" / f"{stem}.png", rng_image(n, 4, 4))
        masks[stem] = np.random.default_rng(n).choice([0, 1, 9], (4, 4)).astype(np.uint8)
        save_palette_png(root / "masks" / f"{stem}.png", masks[stem])
    write_lines(root / "splits" / "val.txt", ["r", "p"])
    ds = build_dataset("folder", root, "val")
    assert ds.ignore_index == 9 and [s.name for s in ds.samples] == ["r", "p"]
    assert np.array_equal(ds[0]["label"].numpy(), masks["r"])


def test_folder_without_masks_is_unlabelled(tmp_path):
    root = tmp_path / "data"
    write_classes(root, {"classes": ["bg", "fg"]})
    save_rgb(root / "images" / "test" / "a.png", rng_image(0, 3, 3))
    sample = build_dataset("folder", root, "test")[0]
    assert "label" not in sample and sample["image"].shape == (3, 3, 3)


def test_folder_class_file_errors(tmp_path):
    root = tmp_path / "data"
    save_rgb(root / "images" / "train" / "a.png", rng_image(0, 3, 3))
    with pytest.raises(DataError, match=re.escape("classes.yaml")):
        build_dataset("folder", root, "train")
    write_classes(root, {"classes": ["a", "b"], "colours": COLORS[:2]})
    with pytest.raises(DataError, match="Did you mean: colors"):
        build_dataset("folder", root, "train")
    write_classes(root, {"classes": ["a", "b"], "colors": COLORS})
    with pytest.raises(DataError, match="5 entries for 2 classes"):
        build_dataset("folder", root, "train")


# --- bad input -> DataError naming the file ----------------------------------------------------------


def five_class_folder(tmp_path: Path, n: int = 3) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path / "five"
    write_classes(root, {"classes": ["c0", "c1", "c2", "c3", "c4"]})
    masks = {}
    for i in range(n):
        stem = f"s{i}"
        save_rgb(root / "images" / "train" / f"{stem}.png", rng_image(i, 5 + i, 6))
        masks[stem] = np.random.default_rng(i).choice([0, 1, 2, 3, 4, 255], (5 + i, 6)).astype(np.uint8)
        save_rgb(root / "masks" / "train" / f"{stem}.png", masks[stem])
    return root, masks


def test_missing_label_file(voc_sbd):
    root, _ = voc_sbd
    missing = root / "VOCdevkit" / "VOC2012" / "SegmentationClass" / f"{VOC_TRAIN[1]}.png"
    missing.unlink()
    ds = build_dataset("voc2012", root, "train")
    with pytest.raises(DataError, match="missing") as info:
        ds[1]
    assert str(missing) in str(info.value)


def test_size_mismatch(tmp_path):
    root, _ = five_class_folder(tmp_path)
    save_rgb(root / "masks" / "train" / "s1.png", np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(DataError, match="sizes differ") as info:
        build_dataset("folder", root, "train")[1]
    assert "s1.png" in str(info.value) and "4x4" in str(info.value)


def test_label_value_outside_classes(tmp_path):
    root, masks = five_class_folder(tmp_path)
    bad = masks["s2"].copy()
    bad[0, 0], bad[1, 1] = 7, 5
    save_rgb(root / "masks" / "train" / "s2.png", bad)
    with pytest.raises(DataError, match=r"\[5, 7\]") as info:
        build_dataset("folder", root, "train")[2]
    assert "s2.png" in str(info.value)


def test_empty_split_names_the_source(tmp_path, voc_sbd):
    root, _ = voc_sbd
    train = root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "train.txt"
    train.write_text("\n")
    with pytest.raises(DataError, match="empty") as info:
        build_dataset("voc2012", root, "train")
    assert str(train) in str(info.value)

    folder_root = tmp_path / "f"
    write_classes(folder_root, {"classes": ["a", "b"]})
    (folder_root / "images" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="empty") as info:
        build_dataset("folder", folder_root, "train")
    assert str(folder_root / "images" / "train") in str(info.value)


def test_label_map_and_transform(tmp_path):
    # ADE20K-style: raw 0 is "other" (ignored), raw k is class k - 1.
    Image.fromarray(np.array([[0, 1], [2, 3]], dtype=np.uint8)).save(tmp_path / "l.png")
    save_rgb(tmp_path / "i.png", rng_image(0, 2, 2))
    samples = [SampleFiles(tmp_path / "i.png", tmp_path / "l.png", "x")]
    ds = SegmentationDataset(samples, ["a", "b", "c"], label_map=[255, 0, 1, 2], transform=lambda s: {**s, "seen": 1})
    sample = ds[0]
    assert sample["label"].tolist() == [[255, 0], [1, 2]] and sample["seen"] == 1
    assert "seen" not in ds.load(0)

    short = SegmentationDataset(samples, ["a", "b", "c"], label_map=[255, 0, 1])
    with pytest.raises(DataError, match=r"l\.png.*\[3\]"):
        short[0]
    with pytest.raises(ValueError, match="ignore_index"):
        SegmentationDataset(samples, ["a", "b", "c"], ignore_index=1)


# --- check_dataset -----------------------------------------------------------------------------------


def test_check_dataset_counts_errors_and_frequencies(tmp_path):
    root, masks = five_class_folder(tmp_path, n=5)
    (root / "images" / "train" / "s1.png").write_bytes(b"garbage")
    bad = masks["s3"].copy()
    bad[0, 0] = 7
    save_rgb(root / "masks" / "train" / "s3.png", bad)
    ds = build_dataset("folder", root, "train", transform=lambda s: 1 / 0)  # the check must not transform
    report = check_dataset(ds)

    assert report.num_samples == 5 and report.num_checked == 5 and report.num_errors == 2
    assert any("s1.png" in e for e in report.errors) and any("s3.png" in e for e in report.errors)
    good = np.concatenate([masks[s].ravel() for s in ("s0", "s2", "s4")])
    counts = np.array([(good == c).sum() for c in range(5)])
    assert report.class_pixels == counts.tolist()
    assert report.ignored_pixels == int((good == 255).sum())
    np.testing.assert_allclose(report.class_frequency, 100 * counts / counts.sum())
    np.testing.assert_allclose(report.ignored_percent, 100 * (good == 255).mean())
    assert report.label_values == sorted(np.unique(good).tolist())
    assert report.min_hw == (5, 6) and report.max_hw == (9, 6)

    text = report.format(ds.classes)
    assert "2 with errors" in text and "c4" in text and "s1.png" in text
    assert check_dataset(ds, max_samples=1).num_checked == 1
