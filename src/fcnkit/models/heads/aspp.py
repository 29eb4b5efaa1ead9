"""DeepLabV3's ASPP head (Chen et al., 2017) in the layout of FastFCN's ``DeepLabV3Head``.

Differences from torchvision's ``DeepLabHead``, kept because FastFCN's published numbers come from this
one: the projection after the five branches drops out with rate 0.5 (Dropout2d), and the final block is
3x3 conv + norm + ReLU + Dropout2d(0.1) + 1x1 conv. Submodule names follow the reference (``aspp.b0`` ...
``aspp.b4``, ``aspp.project``, ``block``) so its ``head.*`` weights map onto ``classifier.*``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ...errors import ConfigError

Norm = Callable[[int], nn.Module]


class ASPPPooling(nn.Module):
    """Image-level branch: global average pool, 1x1 conv + norm + ReLU, broadcast back to ``h x w``.

    The norm sees one value per channel and image, so BatchNorm in training mode needs a batch of 2+
    (as in every DeepLabV3 implementation).
    """

    def __init__(self, in_channels: int, channels: int, norm: Norm = nn.BatchNorm2d) -> None:
        super().__init__()
        self.gap = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, channels, 1, bias=False), norm(channels), nn.ReLU(True)
        )

    def forward(self, x: Tensor) -> Tensor:
        # Resizing a 1x1 map (bilinear, any corner mode) is a broadcast; expand says so directly.
        return self.gap(x).expand(-1, -1, x.shape[-2], x.shape[-1])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: ``(B, in, h, w) -> (B, channels, h, w)``.

    Five branches of ``channels`` each: 1x1 conv (``b0``); 3x3 convs with dilation = padding = each
    rate (``b1..b3``, default 12, 24, 36); image pooling (``b4``); every conv followed by norm + ReLU.
    Concatenated (``5 * channels``) and projected by a 1x1 conv + norm + ReLU + Dropout2d(``dropout``).
    """

    def __init__(
        self,
        in_channels: int,
        rates: Sequence[int] = (12, 24, 36),
        channels: int = 256,
        dropout: float = 0.5,
        norm: Norm = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if len(rates) != 3:
            raise ConfigError(f"ASPP takes three atrous rates, got {list(rates)}")
        self.rates = tuple(int(r) for r in rates)
        self.b0 = nn.Sequential(nn.Conv2d(in_channels, channels, 1, bias=False), norm(channels), nn.ReLU(True))
        for i, rate in enumerate(self.rates, start=1):
            conv = nn.Conv2d(in_channels, channels, 3, padding=rate, dilation=rate, bias=False)
            self.add_module(f"b{i}", nn.Sequential(conv, norm(channels), nn.ReLU(True)))
        self.b4 = ASPPPooling(in_channels, channels, norm)
        self.project = nn.Sequential(
            nn.Conv2d(5 * channels, channels, 1, bias=False), norm(channels), nn.ReLU(True), nn.Dropout2d(dropout)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([self.b0(x), self.b1(x), self.b2(x), self.b3(x), self.b4(x)], dim=1))


class ASPPHead(nn.Module):
    """DeepLabV3 head: ``ASPP`` then 3x3 conv ``channels -> channels`` + norm + ReLU, Dropout2d, 1x1 to classes.

    ``channels`` is 256 (the reference derives it as ``in // 8`` of a 2048-channel input). Reads
    ``features[in_key]`` ``(B, in, h, w)`` and returns logits ``(B, C, h, w)``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        in_key: str = "jpu",
        rates: Sequence[int] = (12, 24, 36),
        channels: int = 256,
        dropout: float = 0.1,
        aspp_dropout: float = 0.5,
        norm: Norm = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.in_key = in_key
        self.aspp = ASPP(in_channels, rates, channels, aspp_dropout, norm)
        self.block = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            norm(channels),
            nn.ReLU(True),
            nn.Dropout2d(dropout),
            nn.Conv2d(channels, num_classes, 1),
        )

    def forward(self, features: dict[str, Tensor], size: tuple[int, int] | None = None) -> Tensor:
        return self.block(self.aspp(features[self.in_key]))
