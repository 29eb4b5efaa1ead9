"""ResNet-18/34/50/101 backbones with dilation, in torchvision's module layout.

Module names match ``torchvision.models.resnet`` (``conv1``, ``bn1``, ``layer1`` ... ``layer4``, blocks
with ``conv1..3``, ``bn1..3``, ``downsample.0/1``), so torchvision ImageNet weights and the backbones of
torchvision's segmentation checkpoints load without renaming. Unlike torchvision, BasicBlock (ResNet-18/34)
also accepts dilation, so every depth can run at output stride 8 or 16.

``deep_stem=True`` swaps the 7x7 stem for the three-3x3-conv stem of the "ResNet-C" / "resnet50s"
backbones that PyTorch-Encoding and FastFCN use; their names for it (``conv1.0`` ... ``conv1.6``, then a
128-channel ``bn1``) are kept, so such backbone weights load without renaming.
"""

from __future__ import annotations

from torch import Tensor, nn

from ...errors import ConfigError
from ..segmenter import Backbone, FeatureInfo


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self, in_ch: int, planes: int, stride: int = 1, dilation: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_ch, planes, stride, dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck: the stride sits on the 3x3 conv."""

    expansion = 4

    def __init__(
        self, in_ch: int, planes: int, stride: int = 1, dilation: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


RESNET_SPECS: dict[int, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


class ResNetBackbone(Backbone):
    """ResNet trunk returning ``{"layer1": ..., "layer4": ...}`` at strides 4, 8, 8|16, 8|16|32.

    ``output_stride`` 32 is the plain ResNet, 16 dilates layer4 (rate 2), 8 dilates layer3 and layer4
    (rates 2 and 4). As in torchvision, the first block of a dilated stage keeps the previous dilation
    and the following blocks use the new one.

    ``deep_stem``: ``conv1`` becomes 3x3 conv 3->64 (stride 2), BN, ReLU, 3x3 64->64, BN, ReLU,
    3x3 64->128, followed by ``bn1`` (128), ReLU and the max-pool as usual. Same stride 4 at layer1's
    input, but 128 channels, so layer1's first block always gets a projection shortcut. The default
    (False) keeps torchvision's 7x7 stem and state-dict keys.
    """

    def __init__(self, depth: int = 50, output_stride: int = 8, deep_stem: bool = False) -> None:
        super().__init__()
        if depth not in RESNET_SPECS:
            raise ConfigError(f"ResNet depth must be one of {sorted(RESNET_SPECS)}, got {depth}")
        if output_stride not in (8, 16, 32):
            raise ConfigError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        block, layers = RESNET_SPECS[depth]
        self.depth, self.output_stride, self.deep_stem = depth, output_stride, deep_stem
        stem_ch = 128 if deep_stem else 64
        self.in_ch, self.dilation = stem_ch, 1
        if deep_stem:
            # The last conv has no BN of its own: the trunk's bn1 follows it, as in the 7x7 stem.
            self.conv1: nn.Module = nn.Sequential(
                nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
                nn.Conv2d(64, 64, 3, padding=1, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
                nn.Conv2d(64, 128, 3, padding=1, bias=False),
            )
        else:
            self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_ch)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        dilate3, dilate4 = output_stride == 8, output_stride in (8, 16)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2, dilate=dilate3)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2, dilate=dilate4)
        e = block.expansion
        s3 = 8 if dilate3 else 16
        s4 = s3 if dilate4 else s3 * 2
        self.feature_info = [
            FeatureInfo("layer1", 64 * e, 4),
            FeatureInfo("layer2", 128 * e, 8),
            FeatureInfo("layer3", 256 * e, s3),
            FeatureInfo("layer4", 512 * e, s4),
        ]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        del self.in_ch, self.dilation

    def _make_layer(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        planes: int,
        blocks: int,
        stride: int = 1,
        dilate: bool = False,
    ) -> nn.Sequential:
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.in_ch != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.in_ch, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.in_ch, planes, stride, previous_dilation, downsample)]
        self.in_ch = planes * block.expansion
        layers += [block(self.in_ch, planes, 1, self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c1 = self.layer1(x)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return {"layer1": c1, "layer2": c2, "layer3": c3, "layer4": c4}


def resnet_state_dict_to_backbone(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """A torchvision ImageNet ResNet state dict without its classifier (``fc.*``)."""
    return {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
