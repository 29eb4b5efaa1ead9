"""Mixing samples of a training batch: CutMix, MixUp and Mosaic, for segmentation.

They act on a collated batch (``image``: normalised float ``(B, 3, H, W)``, ``label``: int64 ``(B, H, W)``),
after augmentation, so every sample keeps its own random scale, crop and jitter. The partner of sample ``i`` is
sample ``perm[i]`` of the same batch (a random permutation), as in timm's mixup and the CutMix paper.

* **CutMix** (Yun et al. 2019): a box covering a share ``1 - lam`` of the crop, ``lam ~ Beta(alpha, alpha)``,
  is pasted from the partner, image and label alike; the label stays one class per pixel.
* **MixUp** (Zhang et al. 2018): ``lam * x + (1 - lam) * x[perm]``; the label cannot be blended pixel by pixel
  into one class, so the batch carries both label maps and ``lam``, and the loss is ``lam * L(y) + (1 - lam) *
  L(y[perm])``, the form of the paper (``"label_b"`` and ``"lam"`` keys).
* **Mosaic** (YOLOv4, Bochkovskiy et al. 2020): four samples at half size in the four quadrants around a random
  centre (each quadrant between a quarter and three quarters of the side): each quadrant shows the part of its
  half-size sample next to the centre, and what a sample does not cover is padding (image 0, which is the
  mean after normalisation; label ``ignore_index``).

:class:`BatchMixer` draws at most one of them per batch with the configured probabilities, from generators
seeded by (seed, rank, epoch, batch): a resumed run mixes its batches exactly as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fcnkit.config import validate_mixing

__all__ = ["BatchMixer", "cutmix", "mixup", "mosaic"]


def _box(h: int, w: int, lam: float, g: torch.Generator) -> tuple[int, int, int, int]:
    """A box ``(top, left, bh, bw)`` of about ``(1 - lam) * h * w`` pixels, centred uniformly (clipped)."""
    ratio = (1.0 - lam) ** 0.5
    bh, bw = round(h * ratio), round(w * ratio)
    cy, cx = int(torch.randint(0, h, (), generator=g)), int(torch.randint(0, w, (), generator=g))
    top, left = max(0, cy - bh // 2), max(0, cx - bw // 2)
    return top, left, min(h, cy + bh - bh // 2) - top, min(w, cx + bw - bw // 2) - left


def cutmix(images: Tensor, labels: Tensor, perm: Tensor, box: tuple[int, int, int, int]) -> tuple[Tensor, Tensor]:
    """Sample ``i`` with the ``box`` ``(top, left, height, width)`` of sample ``perm[i]`` pasted in."""
    top, left, bh, bw = box
    images, labels = images.clone(), labels.clone()
    images[..., top : top + bh, left : left + bw] = images[perm][..., top : top + bh, left : left + bw]
    labels[..., top : top + bh, left : left + bw] = labels[perm][..., top : top + bh, left : left + bw]
    return images, labels


def mixup(images: Tensor, labels: Tensor, perm: Tensor, lam: float) -> tuple[Tensor, Tensor]:
    """``lam * images + (1 - lam) * images[perm]`` and the partners' labels (for the second loss term)."""
    return images.mul(lam).add_(images[perm], alpha=1.0 - lam), labels[perm]


def mosaic(
    images: Tensor, labels: Tensor, perms: list[Tensor], centre: tuple[int, int], ignore_index: int
) -> tuple[Tensor, Tensor]:
    """Sample ``i`` made of samples ``i, perms[0][i], perms[1][i], perms[2][i]`` at half size, one per quadrant.

    ``centre`` ``(cy, cx)`` splits the crop into top-left, top-right, bottom-left and bottom-right quadrants;
    each half-size sample touches the centre with its inner corner (its bottom-right corner for the top-left
    quadrant, and so on), as YOLO's mosaic places its four images.
    """
    b, _, h, w = images.shape
    hh, hw = max(1, h // 2), max(1, w // 2)
    small = F.interpolate(images, size=(hh, hw), mode="bilinear", align_corners=False, antialias=True)
    small_labels = F.interpolate(labels[:, None].float(), size=(hh, hw), mode="nearest-exact")[:, 0].long()
    out = images.new_zeros(images.shape)
    out_labels = labels.new_full(labels.shape, ignore_index)
    cy, cx = centre
    order = [torch.arange(b, device=images.device), *perms]
    # quadrant: rows [y0, y1) and columns [x0, x1) of the output; the sample's inner corner sits at the centre
    quadrants = [(0, cy, 0, cx), (0, cy, cx, w), (cy, h, 0, cx), (cy, h, cx, w)]
    for k, (y0, y1, x0, x1) in enumerate(quadrants):
        qh, qw = min(y1 - y0, hh), min(x1 - x0, hw)
        if qh <= 0 or qw <= 0:
            continue
        # rows of the half-size sample: its last qh rows above the centre, its first qh rows below it
        sy = slice(hh - qh, hh) if y0 == 0 else slice(0, qh)
        sx = slice(hw - qw, hw) if x0 == 0 else slice(0, qw)
        dy = slice(y1 - qh, y1) if y0 == 0 else slice(y0, y0 + qh)
        dx = slice(x1 - qw, x1) if x0 == 0 else slice(x0, x0 + qw)
        out[:, :, dy, dx] = small[order[k]][:, :, sy, sx]
        out_labels[:, dy, dx] = small_labels[order[k]][:, sy, sx]
    return out, out_labels


class BatchMixer:
    """Mosaic, CutMix or MixUp on a training batch with probabilities ``mosaic``, ``cutmix``, ``mixup``.

    One uniform draw per batch picks at most one (their sum must not exceed 1); ``alpha`` is the Beta parameter
    of CutMix's and MixUp's ``lam``. Randomness comes from a generator seeded by the batch's key.
    """

    def __init__(
        self, mosaic: float = 0.0, cutmix: float = 0.0, mixup: float = 0.0, alpha: float = 1.0, ignore_index: int = 255
    ) -> None:
        validate_mixing(mosaic, cutmix, mixup, alpha)
        probabilities = {"mosaic": mosaic, "cutmix": cutmix, "mixup": mixup}
        self.probabilities, self.alpha, self.ignore_index = probabilities, float(alpha), ignore_index

    @property
    def enabled(self) -> bool:
        return any(p > 0 for p in self.probabilities.values())

    def __call__(self, batch: dict[str, Any], key: tuple[int, ...]) -> dict[str, Any]:
        """``batch`` mixed (a new dict; ``"mixed"`` names what was done), or ``batch`` itself.

        ``key`` (non-negative integers, e.g. seed, rank, epoch, batch index) seeds the draws.
        """
        images, labels = batch["image"], batch["label"]
        b, _, h, w = images.shape
        if b < 2 or not self.enabled:
            return batch
        # SeedSequence, not hash(): the same seed in every process (a resumed run is another process)
        seeds = np.random.SeedSequence(list(key)).generate_state(2, dtype=np.uint64)
        g = torch.Generator().manual_seed(int(seeds[0]) % (2**63))
        u, threshold, kind = float(torch.rand((), generator=g)), 0.0, None
        for name, p in self.probabilities.items():
            threshold += p
            if u < threshold:
                kind = name
                break
        if kind is None:
            return batch
        perm = torch.randperm(b, generator=g).to(images.device)
        lam = float(np.random.default_rng(int(seeds[1])).beta(self.alpha, self.alpha))
        out = dict(batch, mixed=kind)
        if kind == "cutmix":
            out["image"], out["label"] = cutmix(images, labels, perm, _box(h, w, lam, g))
        elif kind == "mixup":
            out["image"], out["label_b"] = mixup(images, labels, perm, lam)
            out["lam"] = lam
        else:
            perms = [perm, *(torch.randperm(b, generator=g).to(images.device) for _ in range(2))]
            cy = int(torch.randint(h // 4, max(h // 4, 3 * h // 4) + 1, (), generator=g))
            cx = int(torch.randint(w // 4, max(w // 4, 3 * w // 4) + 1, (), generator=g))
            out["image"], out["label"] = mosaic(images, labels, perms, (cy, cx), self.ignore_index)
        return out
