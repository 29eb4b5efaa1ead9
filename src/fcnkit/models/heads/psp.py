"""PSPNet's pyramid pooling head (Zhao et al., CVPR 2017) in the layout FastFCN uses.

Submodule names follow the reference implementation (``conv5.0.conv{1..4}``, ``conv5.1`` ... ``conv5.5``)
so its ``head.*`` weights map onto ``classifier.*`` by a prefix change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Norm = Callable[[int], nn.Module]


class PyramidPooling(nn.Module):
    """Context at several scales: ``(B, in, h, w) -> (B, in + len(bins) * in // 4, h, w)``.

    For each bin count ``b`` (default 1, 2, 3, 6): adaptive average pooling to ``b x b`` cells, 1x1 conv
    to ``in // 4`` + norm + ReLU, bilinear resize back to ``h x w`` (``align_corners=True`` as in the
    reference). The input and the resized branches are concatenated, input first.
    """

    def __init__(self, in_channels: int, bins: Sequence[int] = (1, 2, 3, 6), norm: Norm = nn.BatchNorm2d) -> None:
        super().__init__()
        self.bins = tuple(int(b) for b in bins)
        branch = in_channels // 4
        self.out_channels = in_channels + len(self.bins) * branch
        for i, b in enumerate(self.bins, start=1):
            self.add_module(f"pool{i}", nn.AdaptiveAvgPool2d(b))
            self.add_module(
                f"conv{i}",
                nn.Sequential(nn.Conv2d(in_channels, branch, 1, bias=False), norm(branch), nn.ReLU(inplace=True)),
            )

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        parts = [x]
        for i in range(1, len(self.bins) + 1):
            pooled = getattr(self, f"conv{i}")(getattr(self, f"pool{i}")(x))
            parts.append(F.interpolate(pooled, size=size, mode="bilinear", align_corners=True))
        return torch.cat(parts, dim=1)


class PSPHead(nn.Module):
    """Pyramid pooling, 3x3 conv to ``in // 4`` (512 for 2048) + norm + ReLU, Dropout2d, 1x1 conv to classes.

    Reads ``features[in_key]`` ``(B, in, h, w)`` (a JPU output or a dilated layer4, both stride 8) and
    returns logits ``(B, C, h, w)``. The layers sit in one Sequential, ``conv5``, for the reference's key names.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        in_key: str = "jpu",
        bins: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        norm: Norm = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.in_key = in_key
        inter = in_channels // 4
        pool = PyramidPooling(in_channels, bins, norm)
        self.conv5 = nn.Sequential(
            pool,
            nn.Conv2d(pool.out_channels, inter, 3, padding=1, bias=False),
            norm(inter),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
            nn.Conv2d(inter, num_classes, 1),
        )

    def forward(self, features: dict[str, Tensor], size: tuple[int, int] | None = None) -> Tensor:
        return self.conv5(features[self.in_key])
