"""FastFCN's Joint Pyramid Upsampling (Wu et al., "FastFCN: Rethinking Dilated Convolution in the
Backbone for Semantic Segmentation", 2019).

A dilated ResNet computes layer3 and layer4 at stride 8, which is where most of a segmentation network's
time goes. FastFCN keeps the backbone at stride 32 and rebuilds a stride-8 map from layer2/3/4 instead:
the three taps are projected to a common width, brought to layer2's grid, and mixed by parallel dilated
separable convolutions whose receptive fields (dilation 1..8 on the stride-8 grid) span what the coarser
taps saw. Any head written for a stride-8, 2048-channel map then reads the result.

Submodule names (``conv3/4/5``, ``dilation1..4``, ``conv1/bn/pointwise`` inside a separable conv,
``jum_1/2`` with ``conv_l/conv_h``) are those of the reference implementation, so its ``jpu.*`` weights
map onto ``neck.*`` by a prefix change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Norm = Callable[[int], nn.Module]


class SeparableConv2d(nn.Sequential):
    """Depthwise 3x3 conv (dilation ``d``, padding ``d``: size-preserving), norm, pointwise 1x1 ``in -> out``.

    There is no activation between the depthwise and pointwise convs, as in the reference; the caller adds
    norm + ReLU after the pointwise conv. ``(B, in, h, w) -> (B, out, h, w)``.
    """

    def __init__(self, in_channels: int, out_channels: int, dilation: int = 1, norm: Norm = nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_channels, in_channels, 3, padding=dilation, dilation=dilation, groups=in_channels, bias=False
        )
        self.bn = norm(in_channels)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)


def _dilated_branch(in_channels: int, width: int, dilation: int, norm: Norm) -> nn.Sequential:
    return nn.Sequential(SeparableConv2d(in_channels, width, dilation, norm), norm(width), nn.ReLU(inplace=True))


def _conv3x3_norm_relu(in_channels: int, width: int, norm: Norm) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), norm(width), nn.ReLU(inplace=True))


def _resize_to(x: Tensor, ref: Tensor) -> Tensor:
    # align_corners=True as in the reference: its weights were trained with this sampling grid (and a resize
    # to the same size is then the identity). No shape test here, so torch.fx can trace the neck.
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=True)


class JPU(nn.Module):
    """Joint Pyramid Upsampling: ``layer2/3/4`` -> ``4 * width`` channels on layer2's grid (stride 8).

    1. 3x3 conv + norm + ReLU on each tap to ``width`` (``conv3`` on c2, ``conv4`` on c3, ``conv5`` on c4);
    2. the c3 and c4 maps resized bilinearly (``align_corners=True``) to c2's size, concatenated in the
       order c4, c3, c2 (``3 * width`` channels);
    3. one separable-conv branch per dilation (default 1, 2, 4, 8), each ``3 * width -> width`` followed
       by norm + ReLU; the branches concatenated (``len(dilations) * width``, 2048 by default).

    ``forward`` takes the backbone's feature dict and returns ``{out_key: (B, out_channels, h2, w2)}``
    (``out_key`` is ``"jpu"``), ``(h2, w2)`` being the size of ``features[in_keys[0]]``.
    """

    def __init__(
        self,
        in_channels: Sequence[int] = (512, 1024, 2048),
        width: int = 512,
        norm: Norm = nn.BatchNorm2d,
        dilations: Sequence[int] = (1, 2, 4, 8),
        in_keys: Sequence[str] = ("layer2", "layer3", "layer4"),
        out_key: str = "jpu",
    ) -> None:
        super().__init__()
        if len(in_channels) != 3 or len(in_keys) != 3:
            raise ValueError(f"JPU reads three taps (c2, c3, c4), got channels {in_channels} and keys {in_keys}")
        self.in_keys, self.out_key = tuple(in_keys), out_key
        self.dilations = tuple(int(d) for d in dilations)
        self.out_channels = width * len(self.dilations)
        self.conv5 = _conv3x3_norm_relu(in_channels[2], width, norm)
        self.conv4 = _conv3x3_norm_relu(in_channels[1], width, norm)
        self.conv3 = _conv3x3_norm_relu(in_channels[0], width, norm)
        for i, d in enumerate(self.dilations, start=1):
            self.add_module(f"dilation{i}", _dilated_branch(3 * width, width, d, norm))

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        c2, c3, c4 = (features[k] for k in self.in_keys)
        f2 = self.conv3(c2)
        joint = torch.cat([_resize_to(self.conv5(c4), f2), _resize_to(self.conv4(c3), f2), f2], dim=1)
        branches = [getattr(self, f"dilation{i}")(joint) for i in range(1, len(self.dilations) + 1)]
        return {self.out_key: torch.cat(branches, dim=1)}


class JointUpsamplingUnit(nn.Module):
    """One joint upsampling unit of JPU_X (the reference's ``JUM``): a coarse map guided by a finer one.

    ``conv_l`` (3x3 + norm + ReLU) takes the coarse input to ``width`` and is resized to the fine input's
    size; ``conv_h`` takes the fine input to ``width``; their concatenation (``2 * width``) feeds three
    separable branches with dilations ``dilation * (1, 2, 4)``. Output: the resized coarse map followed by
    the three branches, ``4 * width`` channels at the fine size.

    The reference builds the separable branches with GroupNorm(32) (inside and after the separable conv)
    whatever norm the rest of the network uses; ``group_norm_groups`` keeps that, and lets small test
    widths pick fewer groups.
    """

    def __init__(
        self,
        coarse_channels: int,
        fine_channels: int,
        width: int,
        dilation: int,
        norm: Norm = nn.BatchNorm2d,
        group_norm_groups: int = 32,
    ) -> None:
        super().__init__()
        self.conv_l = _conv3x3_norm_relu(coarse_channels, width, norm)
        self.conv_h = _conv3x3_norm_relu(fine_channels, width, norm)

        def group_norm(channels: int) -> nn.Module:
            return nn.GroupNorm(group_norm_groups, channels)

        self.dilation1 = _dilated_branch(2 * width, width, dilation, group_norm)
        self.dilation2 = _dilated_branch(2 * width, width, 2 * dilation, group_norm)
        self.dilation3 = _dilated_branch(2 * width, width, 4 * dilation, group_norm)
        self.out_channels = 4 * width

    def forward(self, coarse: Tensor, fine: Tensor) -> Tensor:
        fine = self.conv_h(fine)
        coarse = _resize_to(self.conv_l(coarse), fine)
        joint = torch.cat([coarse, fine], dim=1)
        return torch.cat([coarse, self.dilation1(joint), self.dilation2(joint), self.dilation3(joint)], dim=1)


class JPU_X(nn.Module):
    """FastFCN's JPU_X: a two-level pyramid of joint upsampling units, ``4 * width`` channels at stride 8.

    ``jum_1`` joins c3 (coarse) with c2 at width ``width // 2``, dilations 1, 2, 4: ``2 * width`` channels
    on c2's grid. ``jum_2`` joins c4 (coarse) with that result at width ``width``, dilations 2, 4, 8.
    The reference sizes ``jum_2``'s fine input with c3's channel count (1024), which equals ``jum_1``'s
    output only for width 512; here it is ``jum_1``'s actual output, the same number at the default width.

    ``forward``: feature dict -> ``{out_key: (B, 4 * width, h2, w2)}``.
    """

    def __init__(
        self,
        in_channels: Sequence[int] = (512, 1024, 2048),
        width: int = 512,
        norm: Norm = nn.BatchNorm2d,
        group_norm_groups: int = 32,
        in_keys: Sequence[str] = ("layer2", "layer3", "layer4"),
        out_key: str = "jpu",
    ) -> None:
        super().__init__()
        if len(in_channels) != 3 or len(in_keys) != 3:
            raise ValueError(f"JPU_X reads three taps (c2, c3, c4), got channels {in_channels} and keys {in_keys}")
        self.in_keys, self.out_key = tuple(in_keys), out_key
        self.jum_1 = JointUpsamplingUnit(in_channels[1], in_channels[0], width // 2, 1, norm, group_norm_groups)
        self.jum_2 = JointUpsamplingUnit(in_channels[2], self.jum_1.out_channels, width, 2, norm, group_norm_groups)
        self.out_channels = self.jum_2.out_channels

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        c2, c3, c4 = (features[k] for k in self.in_keys)
        return {self.out_key: self.jum_2(c4, self.jum_1(c3, c2))}
