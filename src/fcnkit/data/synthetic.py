"""A generated dataset for the demo and for trying things out without a download: shapes on textured ground.

Each image shows three to six filled shapes (circle, square, triangle) of random size, rotation and colour on
a background made of a colour gradient, stripes and noise. Each class has its own range of hues (circles
reddish, squares greenish, triangles bluish, each +-40 degrees with random saturation and brightness) but the
background takes any colour, so a pixel's colour alone does not tell its class: a model has to use the
region around it (a flat shape against a striped, graded ground, and its outline). Shapes may overlap (the later one on top) and may run off the image edge. Pixels on a shape's
boundary are marked ``ignore_index`` (255), as VOC does for object outlines.

The files are written in the :mod:`fcnkit.data.folder` format (``images/<split>``, ``masks/<split>``,
``classes.yaml``), so the result is read with ``build_dataset("folder", root, split)`` and also serves as an
example of that format. Generation is deterministic in ``seed`` and independent per split.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from fcnkit.data.io import PathLike

SHAPE_CLASSES = ("background", "circle", "square", "triangle")
SHAPE_COLORS = ((0, 0, 0), (230, 25, 75), (60, 180, 75), (0, 130, 200))
IGNORE_INDEX = 255
#: centre hue (degrees) of each shape class's colours; index 0 (background) unused
SHAPE_HUES = (0, 0, 120, 240)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A colour gradient with faint stripes and noise, float32 (h, w, 3) in 0-255."""
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, math.pi)
    t = (np.cos(angle) * xx + np.sin(angle) * yy) / max(h, w)
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    ground = a * (1 - t[..., None]) + b * t[..., None]
    period, phase = rng.uniform(6, 20), rng.uniform(0, math.pi)
    stripes = np.sin((np.cos(phase) * xx + np.sin(phase) * yy) * 2 * math.pi / period)
    ground += rng.uniform(5, 25) * stripes[..., None]
    return ground + rng.normal(0, 8, (h, w, 3))


def _outline(kind: int, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]] | None:
    """Polygon of a square (kind 2) or triangle (kind 3) of circumradius r; None for a circle."""
    if kind == 1:
        return None
    corners = 4 if kind == 2 else 3
    return [
        (cx + r * math.cos(angle + 2 * math.pi * k / corners), cy + r * math.sin(angle + 2 * math.pi * k / corners))
        for k in range(corners)
    ]


def _shape_colour(rng: np.random.Generator, kind: int) -> np.ndarray:
    """A colour whose hue lies within 40 degrees of the class's hue (red, green, blue); RGB floats 0-255."""
    hue = (SHAPE_HUES[kind] + rng.uniform(-40, 40)) % 360 / 60
    sat, val = rng.uniform(0.55, 1.0), rng.uniform(0.6, 1.0)
    chroma = val * sat
    x = chroma * (1 - abs(hue % 2 - 1))
    rgb = [(chroma, x, 0), (x, chroma, 0), (0, chroma, x), (0, x, chroma), (x, 0, chroma), (chroma, 0, x)][int(hue) % 6]
    return (np.array(rgb) + (val - chroma)) * 255


def draw_sample(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One (image uint8 (H, W, 3), label uint8 (H, W)) pair."""
    h, w = size
    image = _background(rng, h, w)
    label = np.zeros((h, w), np.uint8)
    boundary = np.zeros((h, w), bool)
    scale = min(h, w)
    for _ in range(int(rng.integers(3, 7))):
        kind = int(rng.integers(1, len(SHAPE_CLASSES)))
        r = rng.uniform(0.1, 0.26) * scale
        cx, cy = rng.uniform(-0.05 * w, 1.05 * w), rng.uniform(-0.05 * h, 1.05 * h)
        poly = _outline(kind, cx, cy, r * (1.25 if kind == 3 else 1.0), rng.uniform(0, 2 * math.pi))
        mask_img = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(mask_img)
        if poly is None:
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        else:
            draw.polygon(poly, fill=255)
        inside = np.asarray(mask_img) > 127
        if not inside.any():
            continue
        edge = np.asarray(mask_img.filter(ImageFilter.MaxFilter(3))) != np.asarray(
            mask_img.filter(ImageFilter.MinFilter(3))
        )
        colour = _shape_colour(rng, kind)
        shading = rng.normal(0, 10, (h, w, 1)) + rng.uniform(-20, 20) * (np.arange(w) / w)[None, :, None]
        image = np.where(inside[..., None], colour + shading, image)
        label[inside] = kind
        boundary = (boundary & ~inside) | edge
    label[boundary] = IGNORE_INDEX
    return np.clip(image, 0, 255).astype(np.uint8), label


def make_shapes_dataset(
    root: PathLike,
    splits: dict[str, int] | None = None,
    size: tuple[int, int] = (128, 128),
    seed: int = 0,
) -> Path:
    """Write the shapes dataset in the folder format under ``root`` and return ``root``.

    ``splits`` maps split names to image counts (default: 320 train, 32 val, 64 test). Existing files are
    overwritten, so calling twice with the same arguments gives the same dataset.
    """
    root = Path(root)
    splits = splits if splits is not None else {"train": 320, "val": 32, "test": 64}
    for split_index, (split, count) in enumerate(splits.items()):
        images, masks = root / "images" / split, root / "masks" / split
        images.mkdir(parents=True, exist_ok=True)
        masks.mkdir(parents=True, exist_ok=True)
        # One generator per split, seeded by (seed, split position): a split does not change with the others' sizes.
        rng = np.random.default_rng([seed, split_index])
        for i in range(count):
            image, label = draw_sample(rng, size)
            Image.fromarray(image).save(images / f"{split}_{i:04d}.png")
            Image.fromarray(label).save(masks / f"{split}_{i:04d}.png")
    colours = ", ".join(f"[{r}, {g}, {b}]" for r, g, b in SHAPE_COLORS)
    (root / "classes.yaml").write_text(
        "# generated by fcnkit.data.synthetic.make_shapes_dataset\n"
        f"classes: [{', '.join(SHAPE_CLASSES)}]\n"
        f"colors: [{colours}]\n"
        f"ignore_index: {IGNORE_INDEX}\n"
    )
    return root
