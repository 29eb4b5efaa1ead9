"""fcnkit.visualize: exact pixels for the PIL pictures, sensible PNG files for the matplotlib charts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fcnkit import visualize as vis
from fcnkit.data.base import voc_palette
from fcnkit.engine.runlog import read_run_log

PALETTE = voc_palette(21)
CLASSES = [f"class{i}" for i in range(21)]


def _label(h: int = 12, w: int = 17, seed: int = 0) -> np.ndarray:
    """Random classes 0..20 with both ends of the range present and a few void (255) pixels."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 21, (h, w))
    label[0, 0], label[0, 1], label[-1, -1] = 0, 20, 255
    return label


def _image(h: int = 12, w: int = 17, seed: int = 1) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (3, h, w), dtype=np.uint8))


# --- label pictures ----------------------------------------------------------------------------------


def test_palette_png_round_trip_keeps_class_indices(tmp_path: Path) -> None:
    label = _label()
    path = tmp_path / "label.png"
    img = vis.label_to_palette_png(torch.from_numpy(label), PALETTE, ignore_index=255)
    assert img.mode == "P" and img.size == (17, 12)
    img.save(path)

    with Image.open(path) as back:
        assert back.mode == "P"
        np.testing.assert_array_equal(np.array(back), label)  # 0, 20 (max class) and 255 all survive
        palette = back.getpalette()
    assert len(palette) == 256 * 3
    assert palette[: 21 * 3] == [v for rgb in PALETTE for v in rgb]
    assert tuple(palette[255 * 3 : 256 * 3]) == vis.IGNORE_COLOUR
    assert palette[21 * 3 : 22 * 3] == [0, 0, 0]  # the padding


def test_palette_png_refuses_values_a_byte_cannot_hold() -> None:
    with pytest.raises(ValueError, match=r"0\.\.255"):
        vis.label_to_palette_png(np.array([[0, 300]]), PALETTE)
    with pytest.raises(ValueError, match="256"):
        vis.label_to_palette_png(np.zeros((2, 2), dtype=np.int64), [(0, 0, 0)] * 257)


def test_colorize_paints_palette_colours_and_grey_for_void() -> None:
    label = np.array([[0, 1, 2], [20, 255, 1]])
    img = vis.colorize(torch.from_numpy(label), PALETTE, ignore_index=255)
    assert img.mode == "RGB" and img.size == (3, 2)
    assert img.getpixel((0, 0)) == PALETTE[0] == (0, 0, 0)
    assert img.getpixel((1, 0)) == PALETTE[1] == (128, 0, 0)
    assert img.getpixel((2, 0)) == PALETTE[2]
    assert img.getpixel((0, 1)) == PALETTE[20]
    assert img.getpixel((1, 1)) == vis.IGNORE_COLOUR
    assert img.getpixel((2, 1)) == PALETTE[1]


def test_colorize_refuses_what_it_cannot_draw_honestly() -> None:
    with pytest.raises(ValueError, match="ignore_index"):
        vis.colorize(np.array([[0, 255]]), PALETTE)  # a void value without ignore_index
    with pytest.raises(TypeError, match="argmax"):
        vis.colorize(np.zeros((2, 2), dtype=np.float32), PALETTE)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        vis.colorize(np.zeros((1, 2, 2), dtype=np.int64), PALETTE)


def test_overlay_alpha_extremes_and_void_pixels() -> None:
    image, label = _image(), _label()
    photo = image.permute(1, 2, 0).numpy()
    colours = np.array(vis.colorize(label, PALETTE, ignore_index=255))
    void = label == 255

    plain = np.array(vis.overlay(image, label, PALETTE, alpha=0.0, ignore_index=255))
    np.testing.assert_array_equal(plain, photo)

    solid = np.array(vis.overlay(image, label, PALETTE, alpha=1.0, ignore_index=255))
    np.testing.assert_array_equal(solid[~void], colours[~void])
    np.testing.assert_array_equal(solid[void], photo[void])  # void keeps the photo even at alpha=1

    half = np.array(vis.overlay(image, label, PALETTE, alpha=0.5, ignore_index=255)).astype(int)
    expected = (photo.astype(int) + colours.astype(int)) / 2
    assert np.abs(half[~void] - expected[~void]).max() <= 0.5
    np.testing.assert_array_equal(half[void], photo[void])


def test_overlay_accepts_arrays_and_pil_images_alike() -> None:
    image, label = _image(), _label()
    photo = image.permute(1, 2, 0).numpy()
    reference = np.array(vis.overlay(image, label, PALETTE, 0.3, 255))
    np.testing.assert_array_equal(np.array(vis.overlay(photo, label, PALETTE, 0.3, 255)), reference)
    np.testing.assert_array_equal(np.array(vis.overlay(Image.fromarray(photo), label, PALETTE, 0.3, 255)), reference)
    with pytest.raises(TypeError, match="uint8"):
        vis.overlay(image.float(), label, PALETTE)
    with pytest.raises(ValueError, match="label"):
        vis.overlay(image, label[:-1], PALETTE, ignore_index=255)


# --- legend and grid ---------------------------------------------------------------------------------


def _has_colour(img: Image.Image, colour: tuple[int, int, int]) -> bool:
    return bool(np.all(np.array(img) == colour, axis=-1).any())


def test_blender_gives_the_bytes_of_the_float_blend() -> None:
    """The lookup tables hold, for every class and pixel value, what overlay's float32 blend gives: same bytes."""
    rng = np.random.default_rng(0)
    palette = voc_palette(256)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    label = rng.integers(0, 256, (37, 53)).astype(np.uint8)
    for alpha in (0.0, 0.3, 0.5, 0.77, 1.0):
        expected = np.asarray(vis.overlay(image, label, palette, alpha=alpha))
        assert np.array_equal(vis.Blender(palette, alpha)(image, label), expected), alpha
    # a frame given as a strided view (a (3, H, W) tensor permuted) and int64 labels give the same
    chw = torch.from_numpy(image).permute(2, 0, 1).contiguous()
    blender = vis.Blender(palette, 0.5)
    assert np.array_equal(blender(chw.permute(1, 2, 0).numpy(), label.astype(np.int64)), blender(image, label))
    # as a PIL image: planes merged by PIL for the planar view, interleaved pixels as they are: the same picture
    for frame in (chw.permute(1, 2, 0).numpy(), image):
        picture = blender.picture(frame, label)
        assert picture.mode == "RGB" and picture.size == (53, 37)
        assert np.array_equal(np.asarray(picture), np.asarray(vis.overlay(image, label, palette, alpha=0.5)))
    # by hand: pixel 100 under colour (200, 0, 255) at alpha 0.5 -> 150, 50, 177.5 rounds to even 178
    one = vis.Blender([(200, 0, 255)], 0.5)(np.full((1, 1, 3), 100, np.uint8), np.zeros((1, 1), np.uint8))
    assert one[0, 0].tolist() == [150, 50, 178]


def test_blender_refuses_classes_without_a_colour() -> None:
    blender = vis.Blender([(0, 0, 0), (255, 0, 0)], 0.5)
    with pytest.raises(ValueError, match=r"class\(es\) 2, but the palette has 2"):
        blender(np.zeros((2, 2, 3), np.uint8), np.array([[0, 1], [2, 0]], np.uint8))
    with pytest.raises(ValueError, match="palette has 2"):
        blender(np.zeros((1, 2, 3), np.uint8), np.array([[0, -1]]))
    with pytest.raises(ValueError, match=r"image is \(1, 2\)"):
        blender(np.zeros((1, 2, 3), np.uint8), np.zeros((2, 2), np.uint8))


def test_yuv_blend_is_the_rgb_blend_in_the_codec_s_planes() -> None:
    """Blending Y, U and V with the class colour's own Y, U and V gives the yuv420p of the RGB blend (FFmpeg's
    BT.601 conversion): luma within 1, chroma within 1 inside a class's regions (blocks of one class)."""
    av = pytest.importorskip("av")
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    label = np.zeros((48, 64), np.uint8)
    label[8:32, 16:48] = 2  # whole 2x2 blocks: every chroma sample has one class
    label[:, 56:] = 1
    palette = [(0, 0, 0), (255, 40, 40), (30, 200, 90)]

    def to_yuv(rgb: np.ndarray) -> np.ndarray:
        return av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p").to_ndarray()

    got = vis.YuvBlender(palette, 0.5)(to_yuv(image), label)
    expected = to_yuv(vis.Blender(palette, 0.5)(image, label))
    assert got.shape == expected.shape == (72, 64)
    assert np.abs(got[:48].astype(int) - expected[:48]).max() <= 1
    # chroma: FFmpeg's downsampling filter reaches into neighbouring blocks, so compare where a chroma sample and
    # its neighbours all lie in one class
    sub = label[::2, ::2].astype(int)
    padded = np.pad(sub, 1, mode="edge")
    same = np.ones_like(sub, dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            same &= padded[1 + dy : 25 + dy, 1 + dx : 33 + dx] == sub
    for start in (48, 60):  # U, then V: 24 x 32 samples stored as 12 rows of 64
        g = got[start : start + 12].reshape(24, 32).astype(int)
        e = expected[start : start + 12].reshape(24, 32).astype(int)
        assert same.sum() > 400 and np.abs(g - e)[same].max() <= 1
    assert not vis.YuvBlender.fits(50, 64) and vis.YuvBlender.fits(48, 64)
    with pytest.raises(ValueError, match="palette has 3"):
        vis.YuvBlender(palette)(to_yuv(image), np.full((48, 64), 3, np.uint8))
    with pytest.raises(ValueError, match="palette has 3"):
        vis.YuvBlender(palette)(to_yuv(image), np.full((48, 64), -1))
    # beyond 256 classes the table indices need more than 16 bits: class 299 gets its own colour, by hand
    many = [(0, 0, 0)] * 299 + [(255, 255, 255)]
    flat = to_yuv(np.full((48, 64, 3), 100, np.uint8))
    white = vis.YuvBlender(many, 1.0)(flat, np.full((48, 64), 299))
    assert white[:48].min() == white[:48].max() == 235  # BT.601 white: Y 235, U = V = 128
    assert np.all(white[48:] == 128)


def test_fast_label_png_holds_the_same_values(tmp_path: Path) -> None:
    """uint8 labels take the short path and the fast zlib level; the file decodes to the same indices as the
    int64 path saved at Pillow's default level."""
    rng = np.random.default_rng(1)
    label = rng.integers(0, 11, (60, 80)).astype(np.uint8)
    label[:30] = 3  # long runs, as in real label maps
    palette = voc_palette(11)
    vis.label_to_palette_png(label, palette).save(tmp_path / "fast.png", compress_level=vis.LABEL_PNG_COMPRESSION)
    vis.label_to_palette_png(label.astype(np.int64), palette).save(tmp_path / "default.png")
    fast, default = Image.open(tmp_path / "fast.png"), Image.open(tmp_path / "default.png")
    assert np.array_equal(np.array(fast), label) and np.array_equal(np.array(default), label)
    assert fast.getpalette() == default.getpalette()


def test_legend_shows_every_class_colour_and_wraps_into_columns() -> None:
    names = CLASSES[:8]
    tall = vis.legend(names, PALETTE)
    wide = vis.legend(names, PALETTE, max_width=600)
    assert tall.mode == "RGB"
    assert wide.width <= 600 and wide.height < tall.height and wide.width > tall.width
    for colour in PALETTE[1:8]:  # class 0 is black, like the text
        assert _has_colour(tall, colour) and _has_colour(wide, colour)
    assert not _has_colour(tall, vis.IGNORE_COLOUR)
    assert _has_colour(vis.legend(names, PALETTE, ignore_label="void"), vis.IGNORE_COLOUR)


def test_comparison_grid_size_follows_the_cell_layout() -> None:
    # Two landscape samples (64x96 -> 160x240 cells) and one square one (80x80 -> 160x160 cells).
    sizes = [(64, 96), (64, 96), (80, 80)]
    images = [_image(h, w, seed=i) for i, (h, w) in enumerate(sizes)]
    labels = [torch.from_numpy(_label(h, w, seed=i)) for i, (h, w) in enumerate(sizes)]
    preds = [torch.from_numpy(_label(h, w, seed=10 + i) % 21) for i, (h, w) in enumerate(sizes)]

    cell_h, cell_w, gap, title = 160, 240, vis.GRID_GAP, vis.GRID_TITLE_HEIGHT
    grid_w = 3 * cell_w + 4 * gap
    grid_h = title + 3 * (cell_h + gap)

    bare = vis.comparison_grid(images, labels, preds, PALETTE, None, 255, cell_height=cell_h)
    assert bare.size == (grid_w, grid_h) == (736, 516)

    full = vis.comparison_grid(images, labels, preds, PALETTE, CLASSES, 255, cell_height=cell_h)
    key = vis.legend(CLASSES, PALETTE, max_width=grid_w, ignore_label="ignored")
    assert full.size == (max(grid_w, key.width), grid_h + key.height)
    assert full.crop((0, grid_h, key.width, grid_h + key.height)).tobytes() == key.tobytes()

    # Nearest-neighbour scaling keeps the corner classes exact: the top-left ground-truth pixel of row 0
    # and the prediction pixel of the (centred, 160 px wide) square sample in row 2.
    gt_x = gap + (cell_w + gap)
    assert full.getpixel((gt_x, title)) == PALETTE[int(labels[0][0, 0])]
    pred_x = gap + 2 * (cell_w + gap) + (cell_w - 160) // 2
    row2_y = title + 2 * (cell_h + gap)
    assert full.getpixel((pred_x, row2_y)) == PALETTE[int(preds[2][0, 0])]
    assert full.getpixel((gt_x + cell_w - 1, title + cell_h - 1)) == vis.IGNORE_COLOUR  # the void corner


def test_comparison_grid_checks_its_inputs() -> None:
    image, label = _image(), torch.from_numpy(_label())
    with pytest.raises(ValueError, match="2 labels"):
        vis.comparison_grid([image], [label, label], [label], PALETTE, CLASSES, 255)
    with pytest.raises(ValueError, match="differ"):
        vis.comparison_grid([image], [label], [label[:, :-1]], PALETTE, CLASSES, 255)


# --- charts ------------------------------------------------------------------------------------------


def _write_log(path: Path, with_val: bool = True) -> Path:
    lines = []
    for step in range(10, 210, 10):
        lines.append(
            {
                "step": step,
                "epoch": step // 100 + 1,
                "lr": 0.01 * (1 - step / 200) ** 0.9,
                "loss_total": 2.0 * math.exp(-step / 80) + 0.5,
                "loss_main": 1.6 * math.exp(-step / 80) + 0.4,
                "loss_aux": 0.4 * math.exp(-step / 80) + 0.1,
                "images_per_s": 12.5,
            }
        )
        if with_val and step % 100 == 0:
            val = {"miou": 0.2 + step / 1000, "pixel_acc": 0.8, "mean_acc": 0.5, "fwiou": 0.6}
            lines.append({"step": step, "epoch": step // 100, "val": {**val, "iou": [0.5, float("nan"), 0.1]}})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size


def _curves(log: Path, out: Path) -> Path:
    return vis.plot_learning_curves(*read_run_log(log), out)


@pytest.mark.slow
def test_learning_curves_with_and_without_evaluation(tmp_path: Path) -> None:
    out = _curves(_write_log(tmp_path / "run" / "metrics.jsonl"), tmp_path / "a" / "curves.png")
    assert out == tmp_path / "a" / "curves.png"
    assert _png_size(out) == (1500, 400)  # figsize (15, 4) at 100 dpi, as documented

    no_val = _curves(_write_log(tmp_path / "early.jsonl", with_val=False), tmp_path / "b.png")
    assert _png_size(no_val) == (1500, 400)


def test_learning_curves_log_problems(tmp_path: Path) -> None:
    log = _write_log(tmp_path / "metrics.jsonl")
    with open(log, "a") as f:
        f.write('{"step": 210, "ep')  # a run still writing its last line
    with pytest.warns(UserWarning, match="incomplete last line"):
        _curves(log, tmp_path / "ok.png")

    broken = tmp_path / "broken.jsonl"
    broken.write_text(
        '{"step": 1, "lr": 0.1, "loss_total": 1.0}\nnot json\n{"step": 2, "lr": 0.1, "loss_total": 1.0}\n'
    )
    with pytest.raises(ValueError, match=r"broken\.jsonl:2"):
        _curves(broken, tmp_path / "x.png")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="no training or evaluation records"):
        _curves(tmp_path / "empty.jsonl", tmp_path / "y.png")


def test_confusion_matrix_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    matrix = torch.from_numpy(rng.integers(0, 50, (5, 5)) + np.diag(rng.integers(500, 5000, 5)))
    matrix[3] = 0  # a class with no ground-truth pixels: its row has nothing to normalise
    names = CLASSES[:5]
    for normalize in ("true", None):
        width, height = _png_size(vis.plot_confusion_matrix(matrix, names, tmp_path / f"cm_{normalize}.png", normalize))
        assert width > 300 and height > 200
    with pytest.raises(ValueError, match="class names"):
        vis.plot_confusion_matrix(matrix, names[:4], tmp_path / "bad.png")


def test_per_class_iou_png(tmp_path: Path) -> None:
    iou = torch.tensor([0.9, float("nan"), 0.35, 0.0, 0.62], dtype=torch.float64)
    width, height = _png_size(vis.plot_per_class_iou(iou, CLASSES[:5], tmp_path / "iou.png", palette=PALETTE))
    assert width > 300 and height > 200
    width, height = _png_size(vis.plot_per_class_iou(iou.numpy(), CLASSES[:5], tmp_path / "plain.png"))
    assert width > 300 and height > 200
