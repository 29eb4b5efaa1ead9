"""VGG16 with the Caffe FCN geometry, and the import of torchvision-format ImageNet VGG16 weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import CheckpointError
from ..segmenter import Backbone, FeatureInfo

#: Output channels of each conv, grouped by block (a max-pool follows every block).
VGG16_BLOCKS: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (512,) * 3, (512,) * 3)


class VGG16FCNBackbone(Backbone):
    """VGG16 conv stack + fc6/fc7 as convolutions, laid out as in the Caffe FCN.

    * ``conv1_1`` pads by 100: after the five pools and the unpadded 7x7 fc6, even a 1x1 input still
      leaves a 1x1 map, and the fixed crop offsets of the heads line the output up with the input.
    * Every max-pool rounds up (``ceil_mode=True``), as Caffe does; with floor rounding the fixed crop
      offsets break for hundreds of input sizes.
    * fc6 is a 7x7 conv to 4096 without padding, fc7 a 1x1 conv, each with ReLU and dropout 0.5.

    Returns ``{"pool3": (B, 256, ., .), "pool4": (B, 512, ., .), "fc7": (B, 4096, ., .)}``. Module names
    (``conv1_1`` ... ``conv5_3``, ``fc6``, ``fc7``) are the torchfcn / Caffe layer names.
    ``batch_norm=True`` adds a BatchNorm after every conv (``bn1_1`` ...), the VGG16-BN variant.
    """

    def __init__(self, batch_norm: bool = False, dropout: float = 0.5) -> None:
        super().__init__()
        self.batch_norm = batch_norm
        self.conv_names: list[str] = []
        in_ch = 3
        for b, block in enumerate(VGG16_BLOCKS, start=1):
            for i, out_ch in enumerate(block, start=1):
                name = f"conv{b}_{i}"
                pad = 100 if name == "conv1_1" else 1
                self.add_module(name, nn.Conv2d(in_ch, out_ch, 3, padding=pad))
                if batch_norm:
                    self.add_module(f"bn{b}_{i}", nn.BatchNorm2d(out_ch))
                self.conv_names.append(name)
                in_ch = out_ch
        self.fc6 = nn.Conv2d(512, 4096, 7)
        self.drop6 = nn.Dropout(dropout)  # Caffe's element-wise dropout
        self.fc7 = nn.Conv2d(4096, 4096, 1)
        self.drop7 = nn.Dropout(dropout)
        self.feature_info = [
            FeatureInfo("pool3", 256, 8),
            FeatureInfo("pool4", 512, 16),
            FeatureInfo("fc7", 4096, 32),
        ]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for b, block in enumerate(VGG16_BLOCKS, start=1):
            for i in range(1, len(block) + 1):
                x = getattr(self, f"conv{b}_{i}")(x)
                if self.batch_norm:
                    x = getattr(self, f"bn{b}_{i}")(x)
                x = F.relu(x, inplace=True)
            x = F.max_pool2d(x, 2, stride=2, ceil_mode=True)
            if b in (3, 4):
                out[f"pool{b}"] = x
        x = self.drop6(F.relu(self.fc6(x), inplace=True))
        out["fc7"] = self.drop7(F.relu(self.fc7(x), inplace=True))
        return out


def vgg16_state_dict_to_backbone(state_dict: dict[str, Tensor], batch_norm: bool) -> dict[str, Tensor]:
    """Map a torchvision-format ``vgg16`` / ``vgg16_bn`` state dict onto ``VGG16FCNBackbone`` keys.

    ``features.N`` convs (and BNs) are taken in index order; ``classifier.0`` (Linear 25088 -> 4096)
    becomes fc6 reshaped to ``(4096, 512, 7, 7)`` and ``classifier.3`` (4096 -> 4096) fc7 as
    ``(4096, 4096, 1, 1)``. The ImageNet classifier (``classifier.6``) is dropped.
    """
    indices = sorted({int(k.split(".")[1]) for k in state_dict if k.startswith("features.")})
    convs = [i for i in indices if state_dict[f"features.{i}.weight"].ndim == 4]
    bns = [i for i in indices if f"features.{i}.running_mean" in state_dict]
    names = [f"conv{b}_{i}" for b, block in enumerate(VGG16_BLOCKS, 1) for i in range(1, len(block) + 1)]
    if len(convs) != len(names):
        raise CheckpointError(f"expected {len(names)} VGG16 convs under 'features.', found {len(convs)}")
    if batch_norm and len(bns) != len(names):
        raise CheckpointError("a VGG16-BN backbone needs a vgg16_bn state dict (BatchNorm layers are missing)")
    if not batch_norm and bns:
        raise CheckpointError("this is a vgg16_bn state dict: build the model with batch_norm=True")
    out: dict[str, Tensor] = {}
    for k, name in enumerate(names):
        out[f"{name}.weight"] = state_dict[f"features.{convs[k]}.weight"]
        out[f"{name}.bias"] = state_dict[f"features.{convs[k]}.bias"]
        if batch_norm:
            bn = name.replace("conv", "bn")
            for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                key = f"features.{bns[k]}.{p}"
                if key in state_dict:
                    out[f"{bn}.{p}"] = state_dict[key]
    out["fc6.weight"] = state_dict["classifier.0.weight"].reshape(4096, 512, 7, 7)
    out["fc6.bias"] = state_dict["classifier.0.bias"]
    out["fc7.weight"] = state_dict["classifier.3.weight"].reshape(4096, 4096, 1, 1)
    out["fc7.bias"] = state_dict["classifier.3.bias"]
    return out


@torch.no_grad()
def load_vgg16_imagenet(backbone: VGG16FCNBackbone, state_dict: dict[str, Tensor]) -> None:
    """Fill ``backbone`` from a torchvision-format VGG16(-BN) ImageNet state dict (strict)."""
    backbone.load_state_dict(vgg16_state_dict_to_backbone(state_dict, backbone.batch_norm), strict=True)
