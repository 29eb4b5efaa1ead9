"""EncNet's context-encoding head (Zhang et al., "Context Encoding for Semantic Segmentation", CVPR 2018),
in the form FastFCN uses on top of its JPU.

The encoding layer summarises a whole feature map into ``K`` residual vectors (one per learned codeword);
their mean drives a channel gate on the map (global context at the cost of one small FC layer) and,
optionally, a classifier of which classes are present in the image (the "semantic encoding" or SE loss).

Submodule names follow the reference implementation (``conv5``, ``encmodule.encoding.{0,1,3,4}``,
``encmodule.fc.0``, ``encmodule.selayer``, ``conv6.1``) so its ``head.*`` weights map onto
``classifier.*`` by a prefix change.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Norm = Callable[[int], nn.Module]


class Encoding(nn.Module):
    """Soft-assignment residual encoding with ``K`` codewords ``d_k`` of dimension ``D``.

    For the ``N = H * W`` feature vectors ``x_i`` of a ``(B, D, H, W)`` input:
    ``r_ik = x_i - d_k``; ``a_ik = softmax_k(s_k * ||r_ik||^2)``; ``e_k = sum_i a_ik * r_ik``.
    Returns ``E`` of shape ``(B, K, D)``.

    The smoothing factors ``s_k`` start uniform in ``[-1, 0)`` and enter the softmax with a plus sign (the
    reference's convention: a negative ``s_k`` makes nearer codewords weigh more), codewords start uniform
    in ``+-1 / sqrt(K * D)``. The ``(B, N, K, D)`` residual tensor is never built: the distances use
    ``||x||^2 - 2 x.d + ||d||^2`` and the aggregation ``A^T X - (sum_i a_ik) d_k``, which keeps memory at
    ``(B, N, K)`` (the reference uses a compiled kernel for the same reason).
    """

    def __init__(self, channels: int, num_codes: int) -> None:
        super().__init__()
        self.channels, self.num_codes = channels, num_codes
        self.codewords = nn.Parameter(torch.empty(num_codes, channels))
        self.scale = nn.Parameter(torch.empty(num_codes))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / (self.num_codes * self.channels) ** 0.5
        nn.init.uniform_(self.codewords, -bound, bound)
        nn.init.uniform_(self.scale, -1.0, 0.0)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"Encoding expects (B, {self.channels}, H, W), got {tuple(x.shape)}")
        b = x.shape[0]
        feats = x.reshape(b, self.channels, -1).transpose(1, 2)  # (B, N, D)
        codes = self.codewords
        dist = (
            feats.pow(2).sum(-1, keepdim=True)  # (B, N, 1)
            - 2 * feats @ codes.t()  # (B, N, K)
            + codes.pow(2).sum(-1)  # (K,)
        ).clamp_min(0)  # the expansion can dip a rounding error below zero
        assign = F.softmax(dist * self.scale, dim=2)  # (B, N, K)
        return assign.transpose(1, 2) @ feats - assign.sum(1).unsqueeze(-1) * codes  # (B, K, D)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, num_codes={self.num_codes}"


class _MeanOverCodes(nn.Module):
    """``(B, K, D) -> (B, D)``: the encoded vector of the whole image."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=1)


class EncModule(nn.Module):
    """Context encoding module on a ``(B, D, h, w)`` map.

    ``encoding``: 1x1 conv + norm + ReLU, ``Encoding`` (``num_codes`` codewords), BatchNorm1d over the
    codewords, ReLU, mean over codewords -> ``en`` ``(B, D)``. ``fc``: Linear ``D -> D`` + sigmoid gives
    per-channel factors ``gamma``; the map becomes ``relu(x * (1 + gamma))`` (the ReLU is a no-op on the
    non-negative input but kept as in the reference). ``selayer`` (when ``se_loss``): Linear ``D -> C``
    on ``en``, class-presence logits ``(B, C)``.

    ``forward`` returns ``(gated map (B, D, h, w), se logits (B, C) or None)``.
    """

    def __init__(
        self, channels: int, num_classes: int, num_codes: int = 32, se_loss: bool = True, norm: Norm = nn.BatchNorm2d
    ) -> None:
        super().__init__()
        self.se_loss = se_loss
        self.encoding = nn.Sequential(
            nn.Conv2d(channels, channels, 1, bias=False),
            norm(channels),
            nn.ReLU(inplace=True),
            Encoding(channels, num_codes),
            nn.BatchNorm1d(num_codes),
            nn.ReLU(inplace=True),
            _MeanOverCodes(),
        )
        self.fc = nn.Sequential(nn.Linear(channels, channels), nn.Sigmoid())
        self.selayer = nn.Linear(channels, num_classes) if se_loss else None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        en = self.encoding(x)
        gamma = self.fc(en)[:, :, None, None]
        gated = F.relu(x + x * gamma)
        return gated, (self.selayer(en) if self.selayer is not None else None)


class EncHead(nn.Module):
    """FastFCN's EncNet head: ``conv5`` -> ``EncModule`` -> Dropout2d + 1x1 conv to classes.

    ``conv5`` reduces ``features[in_key]`` ``(B, in_channels, h, w)`` to 512 channels with norm + ReLU.
    Following the reference, it is a 1x1 conv when the head reads a JPU output (``jpu=True``: the JPU's
    dilated branches already mixed each position with its neighbours) and a 3x3 conv (padding 1) on a
    plain backbone map (the dilated-ResNet EncNet baseline).

    Returns ``{"out": (B, C, h, w)}``, plus ``"se"``: ``(B, C)`` class-presence logits when built with
    ``se_loss=True`` (trained with a BCE loss against "class occurs in the image").
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        in_key: str = "jpu",
        se_loss: bool = True,
        jpu: bool = True,
        num_codes: int = 32,
        channels: int = 512,
        dropout: float = 0.1,
        norm: Norm = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.in_key, self.se_loss = in_key, se_loss
        kernel = 1 if jpu else 3
        self.conv5 = nn.Sequential(
            nn.Conv2d(in_channels, channels, kernel, padding=kernel // 2, bias=False),
            norm(channels),
            nn.ReLU(inplace=True),
        )
        self.encmodule = EncModule(channels, num_classes, num_codes, se_loss, norm)
        self.conv6 = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(channels, num_classes, 1))

    def forward(self, features: dict[str, Tensor], size: tuple[int, int] | None = None) -> dict[str, Tensor]:
        x, se = self.encmodule(self.conv5(features[self.in_key]))
        result = {"out": self.conv6(x)}
        if se is not None:
            result["se"] = se
        return result
