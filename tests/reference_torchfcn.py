"""An independent, plain-eager re-statement of torchfcn's FCN32s/16s/8s/8sAtOnce (wkentaro/pytorch-fcn).

Written from the published layer list and forward pass, with torchfcn's attribute names so its state
dicts have torchfcn's keys. It shares no code with fcnkit: tests use it as the peer to compare against.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

_CFG = [
    ("conv1", 3, 64, 2),
    ("conv2", 64, 128, 2),
    ("conv3", 128, 256, 3),
    ("conv4", 256, 512, 3),
    ("conv5", 512, 512, 3),
]


def upsampling_weight(channels: int, k: int) -> torch.Tensor:
    factor = (k + 1) // 2
    center = factor - 1 if k % 2 == 1 else factor - 0.5
    og = np.ogrid[:k, :k]
    filt = (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)
    w = np.zeros((channels, channels, k, k), dtype=np.float64)
    w[range(channels), range(channels), :, :] = filt
    return torch.from_numpy(w).float()


class TorchfcnFCN(nn.Module):
    """``variant`` in {"32s", "16s", "8s", "8s-atonce"}; input (B, 3, H, W) -> logits (B, C, H, W)."""

    def __init__(self, n_class: int = 21, variant: str = "8s") -> None:
        super().__init__()
        self.variant = variant
        for block, cin, cout, n in _CFG:
            for i in range(1, n + 1):
                pad = 100 if (block, i) == ("conv1", 1) else 1
                setattr(self, f"{block}_{i}", nn.Conv2d(cin if i == 1 else cout, cout, 3, padding=pad))
        self.pool = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.relu = nn.ReLU(inplace=True)
        self.fc6 = nn.Conv2d(512, 4096, 7)
        self.fc7 = nn.Conv2d(4096, 4096, 1)
        self.drop = nn.Dropout2d()
        self.score_fr = nn.Conv2d(4096, n_class, 1)
        if variant == "32s":
            self.upscore = nn.ConvTranspose2d(n_class, n_class, 64, stride=32, bias=False)
        else:
            self.score_pool4 = nn.Conv2d(512, n_class, 1)
            self.upscore2 = nn.ConvTranspose2d(n_class, n_class, 4, stride=2, bias=False)
        if variant == "16s":
            self.upscore16 = nn.ConvTranspose2d(n_class, n_class, 32, stride=16, bias=False)
        if variant.startswith("8s"):
            self.score_pool3 = nn.Conv2d(256, n_class, 1)
            self.upscore_pool4 = nn.ConvTranspose2d(n_class, n_class, 4, stride=2, bias=False)
            self.upscore8 = nn.ConvTranspose2d(n_class, n_class, 16, stride=8, bias=False)
        for m in self.modules():
            if isinstance(m, nn.ConvTranspose2d):
                m.weight.data.copy_(upsampling_weight(m.in_channels, m.kernel_size[0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        pools = {}
        for block, _, _, n in _CFG:
            for i in range(1, n + 1):
                h = self.relu(getattr(self, f"{block}_{i}")(h))
            h = self.pool(h)
            pools[block] = h
        h = self.drop(self.relu(self.fc6(h)))
        h = self.drop(self.relu(self.fc7(h)))
        h = self.score_fr(h)
        H, W = x.shape[2], x.shape[3]
        if self.variant == "32s":
            return self.upscore(h)[:, :, 19 : 19 + H, 19 : 19 + W].contiguous()
        pool4, pool3 = pools["conv4"], pools["conv3"]
        if self.variant == "8s-atonce":
            pool4, pool3 = pool4 * 0.01, pool3 * 0.0001
        up2 = self.upscore2(h)
        h = up2 + self.score_pool4(pool4)[:, :, 5 : 5 + up2.shape[2], 5 : 5 + up2.shape[3]]
        if self.variant == "16s":
            return self.upscore16(h)[:, :, 27 : 27 + H, 27 : 27 + W].contiguous()
        up4 = self.upscore_pool4(h)
        h = up4 + self.score_pool3(pool3)[:, :, 9 : 9 + up4.shape[2], 9 : 9 + up4.shape[3]]
        return self.upscore8(h)[:, :, 31 : 31 + H, 31 : 31 + W].contiguous()
