"""Reading images and label maps from disk, strictly, with errors that name the file.

* Images come back as ``uint8`` RGB ``(3, H, W)`` the way an image viewer shows them: the EXIF orientation
  is applied, grayscale / palette / RGBA / CMYK are converted to RGB and 16-bit data is scaled to 8 bits.
* Label maps come back as ``int64`` ``(H, W)`` holding the stored *values*: for a palette PNG (VOC) those
  are the palette indices, never the colours. RGB colour masks are only accepted through an explicit
  colour -> value map, because guessing a colour table silently produces wrong classes.
* SBD's MATLAB files (``cls/<id>.mat``, struct ``GTcls`` with field ``Segmentation``) are read as labels too.
* A corrupt or truncated file raises :class:`DataError`; PIL's ``LOAD_TRUNCATED_IMAGES`` switch, which
  would otherwise turn a half-written file into a silently grey-padded image, is off while we decode.
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from torch import Tensor

from fcnkit.errors import DataError, ImageTooLargeError

PathLike = str | os.PathLike[str]
RGB = tuple[int, int, int]

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_INDEX_LABEL_MODES = ("P", "L", "1", *_SIXTEEN_BIT_MODES)


# --- strict decoding ---------------------------------------------------------------------------------

_strict_lock = threading.Lock()
_strict_depth = 0
_saved_truncated_flag = False


@contextmanager
def _strict_decoding() -> Iterator[None]:
    """Turn PIL's global ``LOAD_TRUNCATED_IMAGES`` off for the duration of a read.

    Another library in the same process may have switched it on; a truncated file would then decode
    without error, grey-padded. The depth counter keeps concurrent readers from restoring the flag
    while another thread is still decoding.
    """
    global _strict_depth, _saved_truncated_flag
    with _strict_lock:
        if _strict_depth == 0:
            _saved_truncated_flag = ImageFile.LOAD_TRUNCATED_IMAGES
            ImageFile.LOAD_TRUNCATED_IMAGES = False
        _strict_depth += 1
    try:
        yield
    finally:
        with _strict_lock:
            _strict_depth -= 1
            if _strict_depth == 0:
                ImageFile.LOAD_TRUNCATED_IMAGES = _saved_truncated_flag


def _open_upright(path: Path, what: str) -> Image.Image:
    """Open, fully decode and EXIF-orient one file; every failure becomes a DataError naming it."""
    if not path.is_file():
        raise DataError(f"{what} file not found: {path}")
    return _decode_upright(path, f"{what} {path}")


def _decode_upright(
    source: Path | BinaryIO,
    name: str,
    max_pixels: int | None = None,
    formats: Sequence[str] | None = None,
    check_size: Callable[[int, int], None] | None = None,
) -> Image.Image:
    """Decode ``source`` (a path or a binary stream) fully and EXIF-orient it; ``name`` goes into errors."""
    with _strict_decoding():
        try:
            with Image.open(source, formats=formats) as img:
                if check_size is not None:
                    check_size(img.width, img.height)  # on the header, before the pixels are decoded
                if max_pixels is not None and img.width * img.height > max_pixels:
                    # checked on the header, before a byte of pixel data is decoded (a decompression bomb
                    # is a small file declaring a huge image)
                    raise ImageTooLargeError(
                        f"{name} is {img.width} x {img.height} = {img.width * img.height:,} pixels, "
                        f"over the limit of {max_pixels:,}"
                    )
                # Image.open only reads the header; load() decodes everything so that a truncated or
                # corrupt body fails here, with the file name, not later inside a DataLoader worker.
                img.load()
                return _exif_upright(img, name)
        except DataError:
            raise
        except Image.DecompressionBombError as exc:
            raise ImageTooLargeError(f"{name}: {exc}") from exc
        except UnidentifiedImageError as exc:
            what = f"an image in an accepted format ({', '.join(formats)})" if formats else "an image PIL can read"
            raise DataError(f"cannot read {name}: not {what}") from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"cannot read {name}: {exc} (corrupt or truncated file?)") from exc


def _exif_upright(img: Image.Image, name: str) -> Image.Image:
    try:
        upright = ImageOps.exif_transpose(img)
    except Exception as exc:  # a malformed EXIF block should not cost the whole image
        warnings.warn(f"{name}: ignoring unreadable EXIF orientation ({exc})", stacklevel=3)
        return img.copy()
    return upright if upright is not None else img.copy()


# --- images ------------------------------------------------------------------------------------------


def read_image(path: PathLike) -> Tensor:
    """Read an image file as RGB pixels: ``uint8`` tensor ``(3, H, W)``, upright per its EXIF orientation.

    Grayscale, palette, RGBA/LA (alpha dropped), CMYK and YCbCr images are converted to RGB; 16-bit
    grayscale (PIL modes ``I;16`` and ``I``, as 16-bit PNG/TIFF open) is scaled to 0-255 by ``v / 257``.
    Raises :class:`DataError` naming the file when it is missing, corrupt or truncated. Plain 8-bit RGB PNGs are
    decoded by FFmpeg when PyAV is installed (the same pixels, in two thirds of the time), all else by PIL.
    """
    path = Path(path)
    fast = _read_png_rgb24(path)
    if fast is not None:
        return torch.from_numpy(fast).permute(2, 0, 1).contiguous()
    return _rgb_tensor(_open_upright(path, "image"), f"image {path}")


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: chunks that change nothing in an 8-bit RGB PNG's pixels as :func:`read_image` returns them (colour-space and
#: display hints PIL ignores too); any other chunk (text, which may carry EXIF or XMP orientation, eXIf,
#: transparency, animation...) sends the file to PIL
_PLAIN_PNG_CHUNKS = frozenset(
    {b"IHDR", b"IDAT", b"IEND", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"pHYs", b"sBIT", b"tIME"}
)


def _plain_rgb_png(data: bytes) -> bool:
    """Whether ``data`` is a non-interlaced 8-bit RGB PNG (colour type 2) with only :data:`_PLAIN_PNG_CHUNKS`,
    whose chunks all lie within the file, and no more pixels than PIL decodes without a warning."""
    if len(data) < 33 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return False
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    depth, colour, interlace = data[24], data[25], data[28]
    limit = Image.MAX_IMAGE_PIXELS
    if depth != 8 or colour != 2 or interlace != 0 or (limit is not None and width * height > limit):
        return False
    at = 8
    while at + 12 <= len(data):
        size, kind = int.from_bytes(data[at : at + 4], "big"), data[at + 4 : at + 8]
        if kind not in _PLAIN_PNG_CHUNKS:
            return False
        at += 12 + size
        if kind == b"IEND":
            return at <= len(data)
    return False


def _read_png_rgb24(path: Path) -> np.ndarray | None:
    """The pixels of a plain 8-bit RGB PNG (:func:`_plain_rgb_png`) decoded by FFmpeg's PNG decoder through PyAV
    (the ``video`` extra), ``uint8`` ``(H, W, 3)``; ``None`` for any other file, without PyAV, or when FFmpeg
    reports an error, and :func:`read_image` then reads the file through PIL, which converts and orients it and
    names what is wrong.

    PNG is lossless, so the pixels are the ones PIL decodes (tested); FFmpeg takes about two thirds of PIL's time
    on a 360x480 CamVid frame (3.1 against 4.7 ms on one core), the largest cost of ``fcnkit predict`` on a
    folder of PNG frames after the model.
    """
    try:
        with open(path, "rb") as f:
            if f.read(8) != _PNG_SIGNATURE:
                return None
            data = _PNG_SIGNATURE + f.read()
    except OSError:
        return None  # PIL's path says what is wrong with the file
    if not _plain_rgb_png(data):
        return None
    try:
        import av
    except ImportError:
        return None
    try:
        decoder = av.CodecContext.create("png", "r")
        decoder.thread_count = 1  # the callers decode several files at once in their own threads
        frames = decoder.decode(av.Packet(data))
    except av.FFmpegError:
        return None
    if len(frames) != 1 or frames[0].format.name != "rgb24":
        return None
    return frames[0].to_ndarray()


def decode_image(
    data: bytes,
    name: str = "the image",
    max_pixels: int | None = None,
    formats: Sequence[str] | None = None,
    check_size: Callable[[int, int], None] | None = None,
) -> Tensor:
    """:func:`read_image` for the bytes of an image file (an upload, say): ``uint8`` ``(3, H, W)`` RGB.

    ``formats`` limits the decoders PIL tries (its format names, e.g. ``("PNG", "JPEG")``); ``check_size(width,
    height)`` is called on the header, before any pixel is decoded, and may raise to refuse the image.
    Raises :class:`DataError` naming ``name`` for an empty, corrupt, truncated or unknown-format body (its
    ``__cause__`` a ``PIL.UnidentifiedImageError`` for the last), and :class:`ImageTooLargeError` when the header
    declares more than ``max_pixels`` pixels or PIL's decompression-bomb guard trips.
    """
    if not data:
        raise DataError(f"{name} is empty (0 bytes)")
    return _rgb_tensor(_decode_upright(io.BytesIO(data), name, max_pixels, formats, check_size), name)


def _rgb_tensor(img: Image.Image, name: str) -> Tensor:
    if img.mode in _SIXTEEN_BIT_MODES:
        values = np.array(img).astype(np.float64)
        # 65535 / 257 == 255 exactly, so the full 16-bit range maps onto the full 8-bit range.
        gray = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
        rgb = np.repeat(gray[:, :, None], 3, axis=2)
    elif img.mode == "RGB":
        rgb = np.array(img)
    else:
        try:
            rgb = np.array(img.convert("RGB"))
        except (ValueError, OSError) as exc:
            raise DataError(f"cannot convert {name} (PIL mode {img.mode!r}) to RGB: {exc}") from exc
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).contiguous()


# --- labels ------------------------------------------------------------------------------------------


def read_label(path: PathLike, colors: Mapping[RGB, int] | None = None, tolerance: int = 0) -> Tensor:
    """Read a label map: ``int64`` tensor ``(H, W)`` of the stored values (class indices / ignore value).

    * palette PNG (mode ``P``, as VOC ships them): the palette *indices*, not the colours;
    * 8-bit (``L``) and 16-bit (``I;16``, ``I``) grayscale: the pixel values;
    * RGB / RGBA colour masks: only when ``colors`` maps every colour present to a value (or to within
      ``tolerance`` levels per channel, see :func:`colors_to_label`); an unmapped colour raises
      :class:`DataError` listing the colours and the file;
    * ``.mat`` files: SBD's ``GTcls.Segmentation`` (see :func:`read_sbd_label`).

    The EXIF orientation is applied like for images, so an image and its mask that carry the same tag
    stay aligned. Values are not validated here; the dataset checks them against its classes.
    """
    path = Path(path)
    if path.suffix.lower() == ".mat":
        return read_sbd_label(path)
    img = _open_upright(path, "label")
    if img.mode in _INDEX_LABEL_MODES:
        values = np.array(img)
    elif img.mode in ("LA", "PA"):
        values = np.array(img.getchannel(0))  # the alpha band carries no class information
    elif img.mode in ("RGB", "RGBA"):
        if colors is None:
            raise DataError(
                f"label {path} is an {img.mode} colour image, but no colour -> class map was given. "
                "Save masks as index PNGs (palette 'P' or grayscale 'L'), or use the 'folder' dataset "
                "with 'colors' in classes.yaml."
            )
        return colors_to_label(np.array(img.convert("RGB")), colors, path, tolerance)
    else:
        raise DataError(f"unsupported label image mode {img.mode!r} in {path}; expected an index PNG ('P' or 'L')")
    return torch.from_numpy(values.astype(np.int64))


def colors_to_label(
    rgb: np.ndarray, colors: Mapping[RGB, int], path: PathLike = "<array>", tolerance: int = 0
) -> Tensor:
    """Map an RGB mask ``(H, W, 3)`` uint8 to values ``(H, W)`` int64 through ``colors`` (colour -> value).

    A colour that is not in ``colors`` takes the value of the nearest one when no channel differs by more than
    ``tolerance`` (JPEG-compressed masks); otherwise it is an error that lists the colours, and says so when they
    are all near declared ones (what a JPEG mask looks like)."""
    # Pack each colour into one integer so the lookup is a sorted search instead of a per-pixel dict.
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2].astype(np.int64)
    known = np.array(sorted((r << 16) | (g << 8) | b for r, g, b in colors), dtype=np.int64)
    by_code = {(r << 16) | (g << 8) | b: v for (r, g, b), v in colors.items()}
    values = np.array([by_code[int(c)] for c in known], dtype=np.int64)
    pos = np.clip(np.searchsorted(known, codes), 0, max(len(known) - 1, 0))
    hit = known[pos] == codes if len(known) else np.zeros(codes.shape, dtype=bool)
    if hit.all():
        return torch.from_numpy(values[pos])
    out = values[pos]
    unknown, inverse, counts = np.unique(codes[~hit], return_inverse=True, return_counts=True)
    channels = np.stack([unknown >> 16, (unknown >> 8) & 255, unknown & 255], 1)
    declared = np.stack([known >> 16, (known >> 8) & 255, known & 255], 1)
    distance = np.abs(channels[:, None, :] - declared[None, :, :]).max(-1)  # (unknown, known): worst channel
    nearest, gap = distance.argmin(1), distance.min(1)
    if tolerance and (gap <= tolerance).all():
        out[~hit] = values[nearest][inverse]
        return torch.from_numpy(out)
    far = gap > tolerance
    listed = ", ".join(
        f"({c >> 16}, {(c >> 8) & 255}, {c & 255}) x{n}"
        for c, n in zip(unknown[far][:10].tolist(), counts[far][:10].tolist(), strict=True)
    )
    more = f" and {int(far.sum()) - 10} more" if far.sum() > 10 else ""
    hint = "Add them to 'colors' (or to 'ignore_colors' for void pixels) in classes.yaml."
    if gap.max() <= 32:
        hint = (
            f"Every one is within {int(gap.max())} levels of a declared colour, as in a mask saved as JPEG (lossy): "
            f"save masks as PNG, or add 'color_tolerance: {max(int(gap.max()), 1)}' to classes.yaml."
        )
    raise DataError(f"label {path} contains colours that are not in the colour map: {listed}{more}. {hint}")


def read_sbd_label(path: PathLike) -> Tensor:
    """Read SBD's ``cls/<id>.mat``: the ``GTcls`` struct's ``Segmentation`` field, ``int64`` ``(H, W)``."""
    from scipy.io import loadmat  # scipy is only needed by SBD users

    path = Path(path)
    if not path.is_file():
        raise DataError(f"label file not found: {path}")
    try:
        # struct_as_record=False gives attribute access; no squeeze_me, so a one-row mask stays 2-D.
        mat = loadmat(path, struct_as_record=False, variable_names=["GTcls"])
    except Exception as exc:  # scipy raises several unrelated types for damaged files
        raise DataError(f"cannot read label {path}: {exc} (corrupt or truncated .mat file?)") from exc
    if "GTcls" not in mat:
        raise DataError(f"label {path} has no 'GTcls' struct (SBD class labels live in cls/*.mat, not inst/*.mat)")
    seg = _field(_unwrap(mat["GTcls"]), "Segmentation")
    if seg is None:
        raise DataError(f"label {path}: the 'GTcls' struct has no 'Segmentation' field")
    seg = np.asarray(_unwrap(seg))
    if seg.ndim != 2:
        raise DataError(f"label {path}: GTcls.Segmentation should be a 2-D array, got shape {seg.shape}")
    return torch.from_numpy(seg.astype(np.int64))


def _unwrap(x: Any) -> Any:
    """MATLAB structs and cells arrive wrapped in 1x1 object arrays; peel those layers off."""
    while isinstance(x, np.ndarray) and x.dtype == object and x.size == 1:
        x = x.reshape(-1)[0]
    return x


def _field(struct: Any, name: str) -> Any:
    if hasattr(struct, "_fieldnames"):  # scipy's mat_struct
        return getattr(struct, name, None)
    if isinstance(struct, np.ndarray | np.void) and struct.dtype.names and name in struct.dtype.names:
        return struct[name]  # record-array form (struct_as_record=True)
    return None
