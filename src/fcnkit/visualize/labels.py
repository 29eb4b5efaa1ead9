"""Label pictures built with PIL and numpy: colour maps, palette PNGs, overlays, legends, comparison grids.

Conventions shared by every function here and in :mod:`fcnkit.visualize.figures`:

* a label map is an integer ``(H, W)`` numpy array or tensor of class indices;
* an image is a ``uint8`` ``(3, H, W)`` tensor (what the datasets return), a ``uint8`` ``(H, W, 3)`` array,
  or a PIL image;
* a palette is a sequence of ``(r, g, b)`` tuples in 0..255, one per class (``SegmentationDataset.palette``);
* pixels equal to ``ignore_index`` are drawn in :data:`IGNORE_COLOUR`, a dark neutral grey ``(96, 96, 96)``.
  Black would be mistaken for VOC's background class and mid grey ``(128, 128, 128)`` for CamVid's sky;
  ``(96, 96, 96)`` is in neither palette nor in the 256-entry VOC colour map.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

__all__ = [
    "GRID_GAP",
    "GRID_TITLE_HEIGHT",
    "IGNORE_COLOUR",
    "LABEL_PNG_COMPRESSION",
    "Blender",
    "YuvBlender",
    "colorize",
    "comparison_grid",
    "label_to_palette_png",
    "legend",
    "overlay",
]

RGB = tuple[int, int, int]
PathLike = str | os.PathLike[str]
LabelLike = np.ndarray | Tensor
ImageLike = np.ndarray | Tensor | Image.Image
Font = ImageFont.ImageFont | ImageFont.FreeTypeFont

#: Colour of ``ignore_index`` pixels in every picture (see the module docstring for why this grey).
IGNORE_COLOUR: RGB = (96, 96, 96)
#: White space (px) around and between the cells of :func:`comparison_grid`.
GRID_GAP = 4
#: Height (px) of the column-title strip at the top of :func:`comparison_grid`.
GRID_TITLE_HEIGHT = 24

#: zlib level of the label PNGs fcnkit writes: 1 is several times faster than Pillow's default 6 on label maps,
#: whose long runs of one value compress well at any level; the pixel values are the same at every level.
LABEL_PNG_COMPRESSION = 1

_WHITE: RGB = (255, 255, 255)
_TEXT: RGB = (20, 20, 20)
_OUTLINE: RGB = (60, 60, 60)


# --- input normalisation -----------------------------------------------------------------------------


def _as_label(label: LabelLike, what: str = "label") -> np.ndarray:
    """Any integer ``(H, W)`` array or tensor -> int64 numpy ``(H, W)``; anything else is refused."""
    arr = label.detach().cpu().numpy() if isinstance(label, Tensor) else np.asarray(label)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be (H, W), got shape {tuple(arr.shape)}")
    # Rounding float scores or logits into "classes" would draw nonsense without complaint.
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise TypeError(f"{what} must hold integer class indices, got {arr.dtype} (use logits.argmax(0) first)")
    return arr.astype(np.int64, copy=False)


def _as_image(image: ImageLike) -> np.ndarray:
    """A photo as ``uint8`` ``(H, W, 3)``: from a ``(3, H, W)`` uint8 tensor, an ``(H, W, 3)`` array or PIL."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"an image tensor must be (3, H, W), got {tuple(image.shape)}")
        if image.dtype != torch.uint8:
            # Normalised network inputs are floats around 0; drawing them as pixels gives a black square.
            raise TypeError(
                f"an image tensor must be uint8 RGB, got {image.dtype}; undo the normalisation first, e.g. "
                "preprocessing.invert(x).round().clamp(0, 255).to(torch.uint8)"
            )
        return np.ascontiguousarray(image.detach().cpu().permute(1, 2, 0).numpy())
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"an image array must be (H, W, 3), got shape {tuple(arr.shape)}")
    if arr.dtype != np.uint8:
        raise TypeError(f"an image array must be uint8, got {arr.dtype}")
    return arr


def _palette_array(palette: Sequence[RGB]) -> np.ndarray:
    """Palette -> ``uint8`` ``(K, 3)``, checking that every entry is an RGB triple in 0..255."""
    pal = np.asarray(palette, dtype=np.int64)
    if pal.ndim != 2 or pal.shape[1] != 3 or len(pal) == 0:
        raise ValueError(f"palette must be a non-empty list of (r, g, b) triples, got shape {tuple(pal.shape)}")
    if pal.min() < 0 or pal.max() > 255:
        raise ValueError("palette colours must lie in 0..255")
    return pal.astype(np.uint8)


def _describe(values: np.ndarray, limit: int = 8) -> str:
    """A short list of the distinct offending values for an error message."""
    unique = np.unique(values)
    shown = ", ".join(str(v) for v in unique[:limit])
    return shown + (f", ... ({len(unique)} distinct)" if len(unique) > limit else "")


# --- label maps as images ----------------------------------------------------------------------------


def _colour_array(lab: np.ndarray, pal: np.ndarray, ignore_index: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``(H, W)`` int64 labels -> ``(H, W, 3)`` uint8 colours and the ``(H, W)`` bool ignore mask."""
    ignored = lab == ignore_index if ignore_index is not None else np.zeros(lab.shape, dtype=bool)
    outside = ((lab < 0) | (lab >= len(pal))) & ~ignored
    if outside.any():
        hint = "" if ignore_index is not None else " (pass ignore_index for a void value such as 255)"
        raise ValueError(
            f"label holds value(s) {_describe(lab[outside])} with no palette colour; "
            f"the palette covers 0..{len(pal) - 1}{hint}"
        )
    rgb = pal[np.where(ignored, 0, lab)]  # index 0 is a placeholder; those pixels are overwritten next
    rgb[ignored] = IGNORE_COLOUR
    return rgb, ignored


def colorize(label: LabelLike, palette: Sequence[RGB], ignore_index: int | None = None) -> Image.Image:
    """Draw a label map in its class colours.

    Args:
        label: ``(H, W)`` integer class indices (numpy array or tensor).
        palette: one ``(r, g, b)`` per class; ``label`` values must index into it.
        ignore_index: value drawn in :data:`IGNORE_COLOUR` (dark grey) instead of a class colour.

    Returns:
        An RGB image of size ``(W, H)``.

    Raises:
        ValueError: a value other than ``ignore_index`` has no palette entry (a silent colour would hide a
            wrong class mapping).
    """
    rgb, _ = _colour_array(_as_label(label), _palette_array(palette), ignore_index)
    return Image.fromarray(np.ascontiguousarray(rgb))


def label_to_palette_png(label: LabelLike, palette: Sequence[RGB], *, ignore_index: int | None = None) -> Image.Image:
    """A mode ``"P"`` image whose pixel values are the class indices, with the palette attached.

    This is the VOC label format: viewers show colours, while ``np.array(Image.open(path))`` gives back
    ``label`` exactly. Save it as PNG (lossless); JPEG would destroy the indices.

    Args:
        label: ``(H, W)`` integer class indices in 0..255 (a palette image stores one byte per pixel).
        palette: up to 256 ``(r, g, b)`` colours; padded with black to the full 256 entries.
        ignore_index: if given and beyond the palette (e.g. 255), that entry is set to :data:`IGNORE_COLOUR`
            so void pixels show grey rather than padding black.

    Returns:
        A ``"P"`` image of size ``(W, H)`` with a 256-entry palette.
    """
    raw = label.detach().cpu().numpy() if isinstance(label, Tensor) else np.asarray(label)
    # uint8 labels (what the predictors give) are stored as they are; others are checked and narrowed
    lab = raw if raw.dtype == np.uint8 and raw.ndim == 2 else _as_label(label)
    pal = _palette_array(palette)
    if len(pal) > 256:
        raise ValueError(f"a palette image holds at most 256 colours, got {len(pal)}")
    outside = (lab < 0) | (lab > 255) if lab.dtype != np.uint8 else None
    if outside is not None and outside.any():
        raise ValueError(f"a palette image stores values 0..255 only; label holds {_describe(lab[outside])}")
    full = np.zeros((256, 3), dtype=np.uint8)
    full[: len(pal)] = pal
    if ignore_index is not None and len(pal) <= ignore_index <= 255:
        full[ignore_index] = IGNORE_COLOUR
    height, width = lab.shape
    # frombytes keeps the raw bytes as indices; going through an "L" image and convert("P") would quantise.
    img = Image.frombytes("P", (width, height), np.ascontiguousarray(lab.astype(np.uint8)).tobytes())
    img.putpalette(full.reshape(-1).tolist())
    return img


def overlay(
    image: ImageLike,
    label: LabelLike,
    palette: Sequence[RGB],
    alpha: float = 0.5,
    ignore_index: int | None = None,
) -> Image.Image:
    """Blend the class colours over a photo: ``out = (1 - alpha) * image + alpha * colour``.

    Args:
        image: ``uint8`` ``(3, H, W)`` tensor, ``uint8`` ``(H, W, 3)`` array or PIL image.
        label: ``(H, W)`` integer class indices, same size as ``image``.
        palette: one ``(r, g, b)`` per class.
        alpha: colour weight in 0..1 (0 gives the photo back, 1 the plain colours).
        ignore_index: pixels with this value keep the photo untouched, so void regions stay readable.

    Returns:
        An RGB image of size ``(W, H)``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    img = _as_image(image)
    lab = _as_label(label)
    if img.shape[:2] != lab.shape:
        raise ValueError(f"image is {img.shape[:2]} (H, W) but label is {lab.shape}")
    colours, ignored = _colour_array(lab, _palette_array(palette), ignore_index)
    # float32 blend then round: alpha=0 and alpha=1 reproduce their input exactly.
    blend = img.astype(np.float32) * (1.0 - alpha) + colours.astype(np.float32) * alpha
    out = np.clip(np.rint(blend), 0, 255).astype(np.uint8)
    out[ignored] = img[ignored]
    return Image.fromarray(out)


def _blend_table(colours: np.ndarray, alpha: float) -> np.ndarray:
    """``uint8`` ``(K * 256,)``: for class ``k`` (colour value ``colours[k]``, float32) and pixel value ``v``, at
    ``k * 256 + v``, the byte :func:`overlay` computes: ``rint((1 - alpha) * v + alpha * colour)`` in float32."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    values = np.arange(256, dtype=np.float32)
    table = values[None, :] * (1.0 - alpha) + colours[:, None] * alpha
    return np.clip(np.rint(table), 0, 255).astype(np.uint8).reshape(-1)


def _table_index(label: np.ndarray, classes: int) -> np.ndarray:
    """``label * 256`` as lookup-table indices (uint16 up to 256 classes), after checking every value has a colour."""
    if label.size and (int(label.max()) >= classes or int(label.min()) < 0):
        bad = label[(label < 0) | (label >= classes)]
        raise ValueError(f"label holds class(es) {_describe(bad)}, but the palette has {classes} colours")
    return label.astype(np.uint16 if classes <= 256 else np.int64) << 8


class Blender:
    """:func:`overlay` for many frames of one palette and ``alpha``, through lookup tables.

    For every class and channel value the blended byte is computed once, exactly as :func:`overlay` computes it
    (``rint((1 - alpha) * pixel + alpha * colour)`` in float32), so a frame costs one table lookup per channel
    instead of float passes over it, with the same bytes as :func:`overlay` (no ``ignore_index``).

    Args:
        palette: one ``(r, g, b)`` per class.
        alpha: colour weight in 0..1.
    """

    def __init__(self, palette: Sequence[RGB], alpha: float = 0.5) -> None:
        pal = _palette_array(palette)
        # (3, K * 256): row c holds, for class k and pixel value v, the blended byte at k * 256 + v
        self.table = np.stack([_blend_table(channel, alpha) for channel in pal.T.astype(np.float32)])
        self.classes = len(pal)

    def __call__(self, image: np.ndarray, label: np.ndarray) -> np.ndarray:
        """``image``: ``uint8`` ``(H, W, 3)``; ``label``: ``(H, W)`` class indices below the palette's length.
        Returns the blended ``uint8`` ``(H, W, 3)`` frame."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {tuple(image.shape)}")
        if label.shape != image.shape[:2]:
            raise ValueError(f"image is {image.shape[:2]} (H, W) but label is {label.shape}")
        base = _table_index(label, self.classes)
        out = np.empty_like(image)
        index = np.empty(label.shape, dtype=base.dtype)
        for channel in range(3):
            np.add(base, image[..., channel], out=index, casting="unsafe")
            np.take(self.table[channel], index, out=out[..., channel], mode="clip")
        return out

    def picture(self, image: np.ndarray, label: np.ndarray) -> Image.Image:
        """The blend as an RGB PIL image (the same pixels as :meth:`__call__`). For ``image`` a view of planar
        pixels (``rgb.permute(1, 2, 0).numpy()`` of a ``(3, H, W)`` tensor) the blend is planar too, and PIL merges
        its three planes, instead of gathering every third byte to interleave the channels: 0.1 against 0.65 ms
        for 480x360."""
        out = self(image, label)
        planes = [out[..., channel] for channel in range(3)]
        if all(plane.flags.c_contiguous for plane in planes):
            return Image.merge("RGB", [Image.fromarray(plane) for plane in planes])
        return Image.fromarray(out)


class YuvBlender:
    """The overlay blend on a frame in planar YUV 4:2:0, the layout video codecs take, through lookup tables.

    Blending is linear and so is the RGB -> YUV transform (BT.601, limited range, as FFmpeg converts ``rgb24``
    to ``yuv420p``), so blending each plane with the class colour's Y, U and V gives the YUV of the RGB blend,
    without converting the frame to RGB and back. Each 2x2 block's chroma takes the class of its top-left pixel.

    Args:
        palette: one ``(r, g, b)`` per class.
        alpha: colour weight in 0..1.
    """

    def __init__(self, palette: Sequence[RGB], alpha: float = 0.5) -> None:
        r, g, b = _palette_array(palette).astype(np.float64).T
        planes = (
            16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255,
            128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255,
            128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255,
        )
        self.tables = [_blend_table(c.astype(np.float32), alpha) for c in planes]
        self.classes = len(r)

    @staticmethod
    def fits(height: int, width: int) -> bool:
        """Frames whose 4:2:0 planes stack into whole rows of :meth:`av.VideoFrame.to_ndarray`'s layout."""
        return height % 4 == 0 and width % 2 == 0

    def __call__(self, yuv: np.ndarray, label: np.ndarray) -> np.ndarray:
        """``yuv``: ``uint8`` ``(H * 3 / 2, W)``, the Y plane then U and V (``VideoFrame.to_ndarray`` of a
        ``yuv420p`` frame); ``label``: ``(H, W)`` class indices. Returns the blended frame in the same layout."""
        h, w = label.shape
        if yuv.shape != (h * 3 // 2, w) or not self.fits(h, w):
            raise ValueError(f"expected a yuv420p frame of {h * 3 // 2}x{w} for a {h}x{w} label, got {yuv.shape}")
        base = _table_index(label, self.classes)
        out = np.empty_like(yuv)
        np.take(self.tables[0], base + yuv[:h], out=out[:h])
        sub, quarter = base[::2, ::2], h // 4
        for i, start in enumerate((h, h + quarter)):
            plane = yuv[start : start + quarter].reshape(h // 2, w // 2)
            np.take(self.tables[i + 1], sub + plane, out=out[start : start + quarter].reshape(h // 2, w // 2))
        return out


# --- legend and grid ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _font(size: int = 13) -> Font:
    """PIL's built-in font: scalable on Pillow >= 10.1, the fixed bitmap font on older versions."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no size argument
        return ImageFont.load_default()


def _text_box(font: Font, text: str) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` of ``text`` drawn at the origin."""
    if hasattr(font, "getbbox"):
        left, top, right, bottom = font.getbbox(text)
        return int(left), int(top), int(right), int(bottom)
    width, height = font.getsize(text)  # Pillow < 9.2 bitmap fonts
    return 0, 0, int(width), int(height)


def _text_size(font: Font, text: str) -> tuple[int, int]:
    """Width and height (px) of ``text``."""
    left, top, right, bottom = _text_box(font, text)
    return right - left, bottom - top


def _draw_text(draw: ImageDraw.ImageDraw, x: float, cy: float, text: str, font: Font, centre_x: bool) -> None:
    """Draw ``text`` vertically centred on ``cy``, starting at ``x`` or centred on it.

    Done by hand rather than with ``anchor=`` because Pillow's bitmap fallback font does not support anchors.
    The vertical centre comes from "Ag" so that every line sits at the same height whatever its letters.
    """
    left, _, right, _ = _text_box(font, text)
    _, top, _, bottom = _text_box(font, "Ag")
    x0 = x - (left + right) / 2 if centre_x else x - left
    draw.text((round(x0), round(cy - (top + bottom) / 2)), text, fill=_TEXT, font=font)


def legend(
    classes: Sequence[str],
    palette: Sequence[RGB],
    *,
    max_width: int | None = None,
    ignore_label: str | None = None,
) -> Image.Image:
    """A key of colour swatches and class names on white.

    Entries run down the columns in class order. Without ``max_width`` there is one column; with it, as
    many columns as fit in that width (at least one, so a very long name can still exceed it).

    Args:
        classes: ``C`` class names.
        palette: at least ``C`` colours; entry ``i`` belongs to ``classes[i]``.
        max_width: widest the legend may be (px), to spread it under a grid.
        ignore_label: if given, one more entry with :data:`IGNORE_COLOUR` under this name.

    Returns:
        An RGB image; its size depends on the names, the font and ``max_width``.
    """
    pal = _palette_array(palette)
    if len(pal) < len(classes):
        raise ValueError(f"palette has {len(pal)} colours for {len(classes)} classes")
    entries: list[tuple[str, RGB]] = [
        (name, (int(pal[i, 0]), int(pal[i, 1]), int(pal[i, 2]))) for i, name in enumerate(classes)
    ]
    if ignore_label is not None:
        entries.append((ignore_label, IGNORE_COLOUR))
    if not entries:
        raise ValueError("legend needs at least one class")

    font = _font()
    _, line_h = _text_size(font, "Ag")  # one height for every row, whatever letters the names hold
    swatch = line_h + 2
    pad, col_gap, row_gap, text_gap = 6, 14, 4, 6
    text_w = max(_text_size(font, name)[0] for name, _ in entries)
    entry_w = swatch + text_gap + text_w
    row_h = max(swatch, line_h) + row_gap

    n = len(entries)
    columns = 1 if max_width is None else max(1, (max_width - 2 * pad + col_gap) // (entry_w + col_gap))
    rows = math.ceil(n / min(columns, n))
    columns = math.ceil(n / rows)  # filling column-major can leave trailing columns empty; drop them

    width = 2 * pad + columns * entry_w + (columns - 1) * col_gap
    height = 2 * pad + rows * row_h - row_gap
    img = Image.new("RGB", (width, height), _WHITE)
    draw = ImageDraw.Draw(img)
    for i, (name, colour) in enumerate(entries):
        x = pad + (i // rows) * (entry_w + col_gap)
        y = pad + (i % rows) * row_h
        # The outline keeps white or near-white class colours visible against the background.
        draw.rectangle([x, y, x + swatch - 1, y + swatch - 1], fill=colour, outline=_OUTLINE)
        _draw_text(draw, x + swatch + text_gap, y + swatch / 2, name, font, centre_x=False)
    return img


def comparison_grid(
    images: Sequence[ImageLike],
    labels: Sequence[LabelLike],
    preds: Sequence[LabelLike],
    palette: Sequence[RGB],
    classes: Sequence[str] | None = None,
    ignore_index: int | None = None,
    *,
    cell_height: int = 160,
) -> Image.Image:
    """One row per sample with the columns image | ground truth | prediction, then the legend below.

    Every cell is scaled to ``cell_height`` keeping the sample's aspect ratio (bilinear for the photo,
    nearest for the label maps so no in-between colours appear). Narrower samples are centred in a column
    as wide as the widest one.

    Layout, for ``N`` samples whose widest scaled cell is ``cw = round(W * cell_height / H)`` px:

    * grid width  ``3 * cw + 4 * GRID_GAP``
    * grid height ``GRID_TITLE_HEIGHT + N * (cell_height + GRID_GAP)``
    * the :func:`legend` (``max_width`` = grid width, plus an ``"ignored"`` entry when ``ignore_index`` is
      set) is pasted underneath, so the picture is ``max(grid width, legend width)`` wide and
      ``grid height + legend height`` tall. With ``classes=None`` there is no legend.

    Args:
        images: ``N`` photos, each ``uint8`` ``(3, H, W)`` (or any form :func:`overlay` takes).
        labels: ``N`` ground-truth ``(H, W)`` maps, same sizes as the images.
        preds: ``N`` predicted ``(H, W)`` maps, same sizes as the images.
        palette: one ``(r, g, b)`` per class.
        classes: class names for the legend.
        ignore_index: drawn in :data:`IGNORE_COLOUR` in both label columns.
        cell_height: height of every cell (px).

    Returns:
        An RGB image.
    """
    n = len(images)
    if n == 0:
        raise ValueError("comparison_grid needs at least one sample")
    if len(labels) != n or len(preds) != n:
        raise ValueError(f"got {n} images, {len(labels)} labels and {len(preds)} predictions")
    if cell_height < 1:
        raise ValueError(f"cell_height must be positive, got {cell_height}")
    pal = _palette_array(palette)

    rows: list[tuple[Image.Image, Image.Image, Image.Image]] = []
    for i in range(n):
        img = _as_image(images[i])
        lab = _as_label(labels[i], f"labels[{i}]")
        pred = _as_label(preds[i], f"preds[{i}]")
        if not (img.shape[:2] == lab.shape == pred.shape):
            raise ValueError(f"sample {i}: image {img.shape[:2]}, label {lab.shape} and prediction {pred.shape} differ")
        h, w = lab.shape
        size = (max(1, round(w * cell_height / h)), cell_height)
        rows.append(
            (
                Image.fromarray(img).resize(size, Image.BILINEAR),
                Image.fromarray(_colour_array(lab, pal, ignore_index)[0]).resize(size, Image.NEAREST),
                Image.fromarray(_colour_array(pred, pal, ignore_index)[0]).resize(size, Image.NEAREST),
            )
        )

    cell_w = max(cells[0].width for cells in rows)
    grid_w = 3 * cell_w + 4 * GRID_GAP
    grid_h = GRID_TITLE_HEIGHT + n * (cell_height + GRID_GAP)
    key = None
    if classes is not None:
        key = legend(classes, palette, max_width=grid_w, ignore_label="ignored" if ignore_index is not None else None)

    canvas = Image.new("RGB", (max(grid_w, key.width if key else 0), grid_h + (key.height if key else 0)), _WHITE)
    draw = ImageDraw.Draw(canvas)
    font = _font(14)
    for c, title in enumerate(("image", "ground truth", "prediction")):
        centre_x = GRID_GAP + c * (cell_w + GRID_GAP) + cell_w / 2
        _draw_text(draw, centre_x, GRID_TITLE_HEIGHT / 2, title, font, centre_x=True)
    for r, cells in enumerate(rows):
        y = GRID_TITLE_HEIGHT + r * (cell_height + GRID_GAP)
        for c, cell in enumerate(cells):
            x = GRID_GAP + c * (cell_w + GRID_GAP) + (cell_w - cell.width) // 2
            canvas.paste(cell, (x, y))
    if key is not None:
        canvas.paste(key, (0, grid_h))
    return canvas


# --- charts (matplotlib) -----------------------------------------------------------------------------
