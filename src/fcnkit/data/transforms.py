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
import torchvision.transforms.v2.functional as TF
from torch import Tensor

from fcnkit.config import DataConfig
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
    rows = ((torch.arange(h, dtype=torch.float64) + 0.5) * (h_in / h)).floor().long().clamp_(max=h_in - 1)
    cols = ((torch.arange(w, dtype=torch.float64) + 0.5) * (w_in / w)).floor().long().clamp_(max=w_in - 1)
    return label[..., rows[:, None], cols[None, :]]


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
    * jitter: brightness, contrast and saturation factors drawn from ``[1 - color_jitter, 1 + color_jitter]``.
    """

    def __init__(
        self,
        preprocessing: Preprocessing,
        crop_size: int | tuple[int, int] | None,
        scale_range: tuple[float, float] | None = (0.5, 2.0),
        base_size: int | None = None,
        hflip: float = 0.5,
        color_jitter: float = 0.0,
        ignore_index: int = 255,
        generator: torch.Generator | None = None,
    ) -> None:
        if scale_range is not None and not 0 < scale_range[0] <= scale_range[1]:
            raise ConfigError(f"scale_range must be (low, high) with 0 < low <= high, got {scale_range}")
        if not 0.0 <= hflip <= 1.0:
            raise ConfigError(f"hflip is a probability in [0, 1], got {hflip}")
        if not 0.0 <= color_jitter < 1.0:
            raise ConfigError(f"color_jitter must be in [0, 1), got {color_jitter}")
        self.preprocessing = preprocessing
        self.crop_size = None if crop_size is None else as_pair(crop_size)
        self.scale_range = scale_range
        self.base_size = base_size
        self.hflip = hflip
        self.color_jitter = color_jitter
        self.ignore_index = ignore_index
        self.generator = generator

    @classmethod
    def from_config(cls, preprocessing: Preprocessing, data: DataConfig, ignore_index: int = 255) -> TrainTransform:
        """The augmentation a ``data:`` config section describes (crop_size, scale_range, base_size, hflip,
        color_jitter), normalising with ``preprocessing``."""
        return cls(
            preprocessing,
            crop_size=None if data.crop_size is None else as_pair(data.crop_size, "data.crop_size"),
            scale_range=tuple(data.scale_range),
            base_size=data.base_size,
            hflip=data.hflip,
            color_jitter=data.color_jitter,
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
        image, label = self._rescale(image, label)

        h, w = image.shape[-2:]
        ch, cw = self.crop_size if self.crop_size is not None else (h, w)
        # The image sits at the top-left of a canvas padded to at least the crop size; the crop window is
        # drawn on that canvas, so small images keep all their pixels and only the window's overhang is pad.
        top = self._randint(max(h, ch) - ch)
        left = self._randint(max(w, cw) - cw)
        image = image[:, top : top + ch, left : left + cw]
        label = label[top : top + ch, left : left + cw]

        if self.color_jitter > 0:
            image = self._jitter(image)  # before padding, so the pad keeps its exact value

        # Padding the image with the mean means it becomes exactly 0 after normalisation: the network
        # sees "no signal" there, as it does past a convolution's zero padding, rather than a black
        # border that is a strong, fake edge. The label pad is the ignore value so it never trains a class.
        canvas = torch.empty((3, ch, cw), dtype=torch.float32)
        canvas[:] = torch.tensor(pad_value_rgb(self.preprocessing)).view(3, 1, 1)
        canvas[:, : image.shape[1], : image.shape[2]] = image
        label_canvas = torch.full((ch, cw), self.ignore_index, dtype=torch.int64)
        label_canvas[: label.shape[0], : label.shape[1]] = label

        if torch.rand((), generator=self.generator).item() < self.hflip:
            canvas, label_canvas = canvas.flip(-1), label_canvas.flip(-1)
        return {**sample, "image": self.preprocessing(canvas), "label": label_canvas}

    def _rescale(self, image: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
        if self.scale_range is None:
            return image, label
        s = self._uniform(*self.scale_range)
        h, w = image.shape[-2:]
        if self.base_size is not None:
            s = self.base_size * s / max(h, w)
        size = (max(1, math.floor(h * s + 0.5)), max(1, math.floor(w * s + 0.5)))
        if size == (h, w):
            return image, label
        image = TF.resize(image, list(size), interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        return image, resize_label(label, size)

    def _jitter(self, image: Tensor) -> Tensor:
        j = self.color_jitter
        image = TF.adjust_brightness(image, self._uniform(1 - j, 1 + j))
        image = TF.adjust_contrast(image, self._uniform(1 - j, 1 + j))
        return TF.adjust_saturation(image, self._uniform(1 - j, 1 + j))


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
