"""Joint image + label transforms on sample dicts, and a collate function for variable-size batches.

A sample is ``{"image": uint8 (3, H, W), "label": int64 (H, W), "name": str}`` as datasets return it.
Geometry is applied to the image and the label together: bilinear for the image, nearest for the label,
and the label is padded with the ignore value so padding never counts as a class.

Randomness comes from the ``generator`` given to :class:`TrainTransform` or, by default, from torch's
global RNG, so ``torch.manual_seed`` makes a run repeatable. With DataLoader workers prefer the global
RNG: torch seeds it differently in each worker, whereas a generator object would be copied into every
worker in the same state and all workers would draw the same augmentations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import Tensor

from fcnkit.config import DataConfig, validate_augmentation
from fcnkit.errors import ConfigError, DataError
from fcnkit.preprocessing import Preprocessing
from fcnkit.utils import as_pair

Sample = dict[str, Any]


def resize_label(label: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize of an integer label ``(H, W)`` to ``size`` ``(h, w)``, any dtype.

    Each output pixel takes the input pixel whose centre is closest to its own centre (``nearest-exact``),
    the same pixel-centre alignment bilinear image resizing uses, so label and image stay registered.
    Indexing instead of ``interpolate`` keeps large or negative ignore values exact.
    """
    h_in, w_in = label.shape[-2:]
    h, w = size
    # floor((i + 0.5) * n_in / n) in integers: exact, and cheaper than float64
    rows = ((2 * torch.arange(h) + 1) * h_in).div_(2 * h, rounding_mode="floor").clamp_(max=h_in - 1)
    cols = ((2 * torch.arange(w) + 1) * w_in).div_(2 * w, rounding_mode="floor").clamp_(max=w_in - 1)
    return label[..., rows[:, None], cols[None, :]]


def _resize_label_fast(label: Tensor, size: tuple[int, int]) -> Tensor:
    """:func:`resize_label` for augmentation: uint8 labels (those of :meth:`SegmentationDataset.cache`) through
    ``interpolate(mode="nearest-exact")``, the same rule in float arithmetic: 2.5x faster, and in a random test of
    3000 sizes one row or column landed one pixel off."""
    if label.dtype != torch.uint8:
        return resize_label(label, size)
    return F.interpolate(label[None, None], size=size, mode="nearest-exact")[0, 0]


def pad_value_rgb(preprocessing: Preprocessing) -> tuple[float, float, float]:
    """The RGB pixel (in 0-255 units) that ``preprocessing`` maps to exactly zero: the mean, un-scaled."""
    mean = [m / preprocessing.scale for m in preprocessing.mean]
    if preprocessing.channel_order == "BGR":
        mean = mean[::-1]  # ``mean`` is given in the network's channel order
    return mean[0], mean[1], mean[2]


class TrainTransform:
    """Random rescale, pad, crop, horizontal flip and colour jitter, then normalisation.

    Output: ``{"image": float32 (3, h, w), "label": int64 (h, w), "name": str}`` with ``(h, w)`` equal to
    ``crop_size`` when given, else the rescaled size.

    * rescale: a factor ``s`` drawn uniformly from ``scale_range``; without ``base_size`` the image is scaled
      by ``s``, with it the longer side becomes ``base_size * s`` (sizes across a dataset then match);
    * pad: bottom and right up to ``crop_size``; the label with ``ignore_index``, the image with the
      preprocessing mean so the padding is 0 after normalisation;
    * crop: a random ``crop_size`` window (``None`` keeps the whole image, as the original FCN recipe);
    * flip: left-right with probability ``hflip``;
    * jitter: brightness, contrast and saturation factors drawn from ``[1 - color_jitter, 1 + color_jitter]``;
    * gamma: ``255 * (x / 255) ** gamma``, gamma drawn log-uniformly from ``[1 / (1 + gamma_jitter),
      1 + gamma_jitter]`` (so darkening and lightening are equally likely).
    """

    def __init__(
        self,
        preprocessing: Preprocessing,
        crop_size: int | tuple[int, int] | None,
        scale_range: tuple[float, float] | None = (0.5, 2.0),
        base_size: int | None = None,
        hflip: float = 0.5,
        color_jitter: float = 0.0,
        gamma_jitter: float = 0.0,
        ignore_index: int = 255,
        generator: torch.Generator | None = None,
    ) -> None:
        validate_augmentation(scale_range, hflip, color_jitter, gamma_jitter)
        self.preprocessing = preprocessing
        self.crop_size = None if crop_size is None else as_pair(crop_size)
        self.scale_range = scale_range
        self.base_size = base_size
        self.hflip = hflip
        self.color_jitter = color_jitter
        self.gamma_jitter = gamma_jitter
        self.ignore_index = ignore_index
        self.generator = generator

    @classmethod
    def from_config(
        cls, preprocessing: Preprocessing, data: DataConfig, ignore_index: int = 255, finish: bool = False
    ) -> TrainTransform:
        """The augmentation a ``data:`` config section describes (crop_size, scale_range, base_size, hflip,
        color_jitter, gamma_jitter), normalising with ``preprocessing``; with ``finish``, that of the run's last part
        (``finish_crop_size``, and ``finish_scale_range`` when set)."""
        key = "finish_crop_size" if finish else "crop_size"
        crop = getattr(data, key)
        scales = data.finish_scale_range if finish and data.finish_scale_range is not None else data.scale_range
        return cls(
            preprocessing,
            crop_size=None if crop is None else as_pair(crop, f"data.{key}"),
            scale_range=tuple(scales),
            base_size=data.base_size,
            hflip=data.hflip,
            color_jitter=data.color_jitter,
            gamma_jitter=data.gamma_jitter,
            ignore_index=ignore_index,
        )

    def _uniform(self, low: float, high: float) -> float:
        return low + (high - low) * torch.rand((), generator=self.generator).item()

    def _randint(self, high: int) -> int:
        """Uniform integer in ``0 .. high`` inclusive."""
        return int(torch.randint(0, high + 1, (), generator=self.generator).item())

    def __call__(self, sample: Sample) -> Sample:
        image, label = sample["image"], sample.get("label")
        if label is None:
            raise DataError(f"TrainTransform needs a labelled sample; {sample.get('name')!r} has no label")
        h, w = image.shape[-2:]
        s = self._scale(h, w)
        if self.crop_size is None:
            # the whole image, rescaled
            ch, cw = max(1, math.floor(h * s + 0.5)), max(1, math.floor(w * s + 0.5))
            window = (ch, cw, 0, 0, h, w)
        else:
            ch, cw = self.crop_size
            window = self._window(h, w, ch, cw, s)
        # Crop first, then resize only the window: the same pixels as resizing the whole image by ``s`` and
        # cropping it, for a fraction of the work (a 1.5x rescale of a 360x480 frame then a 224x288 crop
        # would resize 2.25 times the frame's pixels to keep a sixth of them).
        oh, ow, top, left, ih, iw = window
        image = image[:, top : top + ih, left : left + iw]
        label = label[top : top + ih, left : left + iw]
        if (oh, ow) != (ih, iw):
            # antialiasing only matters when shrinking, and its kernel is the slower one
            antialias = oh < ih or ow < iw
            image = TF.resize(image, [oh, ow], interpolation=TF.InterpolationMode.BILINEAR, antialias=antialias)
            label = _resize_label_fast(label, (oh, ow))

        image = image.float()
        if self.color_jitter > 0:
            image = self._jitter(image)  # before padding, so the pad keeps its exact value
        if self.gamma_jitter > 0:
            log_g = math.log1p(self.gamma_jitter)
            image = adjust_gamma(image, math.exp(self._uniform(-log_g, log_g)))

        # Padding the image with the mean means it becomes exactly 0 after normalisation: the network
        # sees "no signal" there, as it does past a convolution's zero padding, rather than a black
        # border that is a strong, fake edge. The label pad is the ignore value so it never trains a class.
        if (oh, ow) == (ch, cw):
            canvas, label_canvas = image, label.to(torch.int64)
        else:
            canvas = torch.empty((3, ch, cw), dtype=torch.float32)
            canvas[:] = torch.tensor(pad_value_rgb(self.preprocessing)).view(3, 1, 1)
            canvas[:, :oh, :ow] = image
            label_canvas = torch.full((ch, cw), self.ignore_index, dtype=torch.int64)
            label_canvas[:oh, :ow] = label

        if torch.rand((), generator=self.generator).item() < self.hflip:
            canvas, label_canvas = canvas.flip(-1), label_canvas.flip(-1)
        return {**sample, "image": self.preprocessing(canvas), "label": label_canvas}

    def _scale(self, h: int, w: int) -> float:
        """The rescale factor of this sample: drawn from ``scale_range``, relative to ``base_size`` if set."""
        if self.scale_range is None:
            return 1.0
        s = self._uniform(*self.scale_range)
        return self.base_size * s / max(h, w) if self.base_size is not None else s

    def _window(self, h: int, w: int, ch: int, cw: int, s: float) -> tuple[int, int, int, int, int, int]:
        """Where a ``ch x cw`` crop of the image rescaled by ``s`` comes from, in the original image.

        The crop covers ``round(ch / s) x round(cw / s)`` source pixels. That window is drawn uniformly on the
        image padded bottom-right to at least the window's size, so small images keep all their pixels and only
        the overhang is padding. Returns ``(oh, ow, top, left, ih, iw)``: the part of the window inside the
        image, ``ih x iw`` at ``(top, left)``, becomes the top-left ``oh x ow`` of the crop.
        """
        bh, bw = max(1, math.floor(ch / s + 0.5)), max(1, math.floor(cw / s + 0.5))
        top = self._randint(max(h, bh) - bh)
        left = self._randint(max(w, bw) - bw)
        ih, iw = min(bh, h - top), min(bw, w - left)
        oh = ch if ih == bh else max(1, min(ch, math.floor(ih * ch / bh + 0.5)))
        ow = cw if iw == bw else max(1, min(cw, math.floor(iw * cw / bw + 0.5)))
        return oh, ow, top, left, ih, iw

    def _jitter(self, image: Tensor) -> Tensor:
        j = self.color_jitter
        factors = [self._uniform(1 - j, 1 + j) for _ in range(3)]
        return jitter_colour(image, *factors)


def _grey(image: Tensor) -> Tensor:
    """ITU-R 601 luma of an RGB ``(3, H, W)`` image, ``(1, H, W)``: torchvision's ``rgb_to_grayscale`` weights."""
    r, g, b = image.unbind(-3)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(-3)


def jitter_colour(image: Tensor, brightness: float, contrast: float, saturation: float) -> Tensor:
    """Brightness, then contrast, then saturation of a float RGB image in 0-255 units, each clamped to 0-255.

    The formulas of torchvision's ``adjust_brightness`` / ``adjust_contrast`` / ``adjust_saturation``, on
    0-255 floats in one pass: no uint8 round trip (and its truncation) between the three steps.
    """
    image = image.mul(brightness).clamp_(0, 255)
    mean = _grey(image).mean()
    image = image.mul_(contrast).add_(mean * (1.0 - contrast)).clamp_(0, 255)
    grey = _grey(image)  # before the in-place scaling below
    return image.mul_(saturation).add_(grey, alpha=1.0 - saturation).clamp_(0, 255)


def adjust_gamma(image: Tensor, gamma: float) -> Tensor:
    """``255 * (x / 255) ** gamma`` of a float image in 0-255 units: torchvision's ``adjust_gamma`` (gain 1)
    without the uint8 round trip; gamma < 1 lightens the dark tones, gamma > 1 darkens them, 0 and 255 stay."""
    if gamma <= 0:
        raise ConfigError(f"gamma must be positive, got {gamma}")
    return image.clamp(0, 255).div_(255).pow_(gamma).mul_(255)


class EvalTransform:
    """Normalisation only: the image becomes float32 ``(3, H, W)``, the label stays at its original size."""

    def __init__(self, preprocessing: Preprocessing) -> None:
        self.preprocessing = preprocessing

    def __call__(self, sample: Sample) -> Sample:
        return {**sample, "image": self.preprocessing(sample["image"])}


def pad_collate(batch: Sequence[Sample], ignore_index: int) -> dict[str, Any]:
    """Batch samples of different sizes by padding bottom/right to the largest height and width.

    Images ``(3, h_i, w_i)`` are padded with 0, which is the mean after normalisation; labels ``(h_i, w_i)``
    with ``ignore_index`` (padding labels with 0 would train the pad as class 0). Returns
    ``{"image": (B, 3, H, W), "label": (B, H, W) int64, "size": [(h_i, w_i), ...], "name": [...]}``;
    ``"label"`` is left out when no sample has one. Use as
    ``DataLoader(..., collate_fn=functools.partial(pad_collate, ignore_index=dataset.ignore_index))``.
    """
    if not batch:
        raise ValueError("pad_collate got an empty batch")
    sizes = [tuple(s["image"].shape[-2:]) for s in batch]
    h, w = max(s[0] for s in sizes), max(s[1] for s in sizes)
    first = batch[0]["image"]
    images = first.new_zeros((len(batch), first.shape[0], h, w))
    for i, s in enumerate(batch):
        images[i, :, : sizes[i][0], : sizes[i][1]] = s["image"]
    out: dict[str, Any] = {"image": images, "size": sizes, "name": [s.get("name", "") for s in batch]}

    has_label = ["label" in s for s in batch]
    if any(has_label):
        if not all(has_label):
            raise ValueError("pad_collate: some samples in the batch have a label and others do not")
        labels = torch.full((len(batch), h, w), ignore_index, dtype=torch.int64)
        for i, s in enumerate(batch):
            if tuple(s["label"].shape) != sizes[i]:
                raise ValueError(
                    f"pad_collate: sample {s.get('name')!r} has image size {sizes[i]} but label size "
                    f"{tuple(s['label'].shape)}"
                )
            labels[i, : sizes[i][0], : sizes[i][1]] = s["label"]
        out["label"] = labels
    return out
