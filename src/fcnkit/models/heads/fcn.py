"""FCN heads: the torchvision ``FCNHead`` and the score-and-fuse head of FCN-32s/16s/8s."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError

UPSAMPLE_MODES = ("deconv", "bilinear", "nearest_conv")


class FCNHead(nn.Sequential):
    """3x3 conv ``in -> in/4`` (no bias), BN, ReLU, Dropout(0.1), 1x1 conv ``-> C``.

    A ``Sequential`` so that its state-dict keys are torchvision's ``classifier.0`` ... ``classifier.4``.
    Reads ``features[in_key]`` ``(B, in, h, w)`` and returns ``(B, C, h, w)``.
    """

    def __init__(self, in_channels: int, num_classes: int, in_key: str, dropout: float = 0.1) -> None:
        inter = in_channels // 4
        super().__init__(
            nn.Conv2d(in_channels, inter, 3, padding=1, bias=False),
            nn.BatchNorm2d(inter),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(inter, num_classes, 1),
        )
        self.in_key = in_key

    def forward(self, features: dict[str, Tensor], size: tuple[int, int] | None = None) -> Tensor:
        x = features[self.in_key]
        for layer in self:
            x = layer(x)
        return x


def bilinear_kernel(kernel_size: int) -> Tensor:
    """The 2-D bilinear interpolation kernel of shelhamer/fcn.berkeleyvision.org ``surgery.upsample_filt``.

    ``factor = (k + 1) // 2``; centre ``factor - 1`` (odd k) or ``factor - 0.5`` (even k);
    ``w[i, j] = (1 - |i - centre| / factor) * (1 - |j - centre| / factor)``.
    """
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    r = torch.arange(kernel_size, dtype=torch.float64)
    w1 = 1 - (r - center).abs() / factor
    return (w1[:, None] * w1[None, :]).float()


def diagonal_bilinear_weight(channels: int, kernel_size: int) -> Tensor:
    """``(C, C, k, k)`` transposed-conv weight: the bilinear kernel on the class diagonal, zero elsewhere."""
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    weight[range(channels), range(channels)] = bilinear_kernel(kernel_size)
    return weight


class ShiftedResize(nn.Module):
    """Parameter-free stand-in for the ``k=2f, s=f`` bilinear deconvolution, with the same geometry.

    The deconvolution maps ``n`` pixels to ``(n + 1) f`` and output ``o`` reads input coordinate
    ``(o + 0.5) / f - 1``; an ``align_corners=False`` resize by ``f`` reads ``(q + 0.5) / f - 0.5``.
    Shifting the resize by ``f / 2`` (replicate padding on both sides) gives the deconvolution's size and
    alignment, so the Caffe crop offsets stay valid; only the border differs (clamped, not faded to zero).
    """

    def __init__(self, factor: int, mode: str = "bilinear") -> None:
        super().__init__()
        if factor % 2:
            raise ValueError(f"upsampling factor must be even, got {factor}")
        self.factor = factor
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        size = (h * self.factor, w * self.factor)
        if self.mode == "bilinear":
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        pad = self.factor // 2
        return F.pad(x, (pad, pad, pad, pad), mode="replicate")

    def extra_repr(self) -> str:
        return f"factor={self.factor}, mode={self.mode!r}"


def make_upsampler(channels: int, factor: int, mode: str = "deconv", learnable: bool = False) -> nn.Module:
    """An ``f``-times upsampler of ``(B, C, n, m)`` to ``(B, C, (n+1) f, (m+1) f)``.

    ``deconv``: the original per-class diagonal bilinear ``ConvTranspose2d(C, C, 2f, stride=f)``, frozen
    unless ``learnable`` (the FCN journal paper found learned and fixed bilinear equal).
    ``bilinear``: a plain bilinear resize with the same geometry, no parameters.
    ``nearest_conv``: nearest resize then a learned 1x1 conv (initialised to identity).
    """
    if mode not in UPSAMPLE_MODES:
        raise ConfigError(f"upsample must be one of {UPSAMPLE_MODES}, got {mode!r}")
    if factor == 1:
        return nn.Identity()
    if mode == "deconv":
        layer = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, bias=False)
        with torch.no_grad():
            layer.weight.copy_(diagonal_bilinear_weight(channels, 2 * factor))
        layer.weight.requires_grad_(learnable)
        return layer
    if mode == "bilinear":
        return ShiftedResize(factor, "bilinear")
    conv = nn.Conv2d(channels, channels, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(channels).view(channels, channels, 1, 1))
        conv.bias.zero_()
    return nn.Sequential(ShiftedResize(factor, "nearest"), conv)


def crop_like(x: Tensor, offset: int, size: Sequence[int]) -> Tensor:
    """``x[..., offset:offset + H, offset:offset + W]`` with a clear error if ``x`` is too small."""
    h, w = int(size[0]), int(size[1])
    if x.shape[-2] < offset + h or x.shape[-1] < offset + w:
        raise RuntimeError(
            f"cannot crop {tuple(x.shape[-2:])} at offset {offset} to {(h, w)}: the geometry does not line up"
        )
    return x[..., offset : offset + h, offset : offset + w]


#: Final-upsampler attribute name per number of skips, as in torchfcn (FCN32s/16s/8s).
_FINAL_NAME = {0: "upscore", 1: "upscore16", 2: "upscore8", 3: "upscore4"}
#: each fusion step's (score layer of the finer tap, upsampler of the running map), coarse to fine; the first two
#: are the paper's FCN-16s / FCN-8s names (torchfcn's), the third extends the pattern one tap finer (FCN-4s)
_FUSE_NAMES = [("score_pool4", "upscore2"), ("score_pool3", "upscore_pool4"), ("score_pool2", "upscore_pool3")]


class SkipFCNHead(nn.Module):
    """The FCN-32s / 16s / 8s (/ 4s) score-and-fuse head (Long, Shelhamer, Darrell 2015).

    ``in_keys`` / ``in_channels`` / ``strides`` list the taps coarse to fine, e.g. ``("fc7", "pool4",
    "pool3")`` at strides ``(32, 16, 8)``. ``skips`` (0 to 3) says how many finer taps are fused:
    0 = FCN-32s, 1 = FCN-16s, 2 = FCN-8s, 3 = FCN-4s (one step past the paper, which stopped at 8s on VGG16
    citing diminishing returns; on a light timm backbone the stride-4 tap costs little). Each
    step upsamples the running score map by the stride ratio, crops the finer tap's score map
    (``score_pool4`` / ``score_pool3`` / ``score_pool2``) to it and adds; a last upsampler
    brings the map to stride 1 and a crop gives exactly ``H x W``.

    ``offsets``: the Caffe crop offsets ``(skip offsets..., final offset)``: 19 / (5, 27) / (5, 9, 31) for
    the VGG16 geometry (pad 100), where each finer score map is larger than the upsampled one and is
    cropped to it. Without ``offsets`` (a backbone with ordinary "same" padding) the upsampled map is the
    larger one and is cropped at ``f / 2`` to the finer tap, the offset that centres a ``k=2f`` bilinear
    deconvolution on the finer grid. ``skip_scales`` multiplies the taps before scoring
    (0.01 and 0.0001 for FCN-8s at-once). Score layers start at zero, as in the original.
    Layer names follow torchfcn so its checkpoints load with a prefix change only.

    ``fuse="mix"`` ("full mixing" of the upsampling paths, from the improvement list of xevolesi/pytorch-fcn):
    instead of summing the running map and the finer score map at each step, every path's score map (stride 32,
    16, 8 for FCN-8s) is carried to the finest grid and a learned 1x1 convolution (``mix``) combines them all,
    each class of the output from every class of every path. It starts as the sum (identity blocks, zero bias),
    so at initialisation the head equals the ``"sum"`` one.
    """

    def __init__(
        self,
        in_keys: Sequence[str],
        in_channels: Sequence[int],
        strides: Sequence[int],
        num_classes: int,
        skips: int,
        upsample: str = "deconv",
        learn_upsample: bool = False,
        offsets: Sequence[int] | None = None,
        skip_scales: Sequence[float] | None = None,
        fuse: str = "sum",
    ) -> None:
        super().__init__()
        if fuse not in ("sum", "mix"):
            raise ConfigError(f"fuse must be 'sum' (FCN's) or 'mix' (learned mixing of the paths), got {fuse!r}")
        if fuse == "mix" and skips == 0:
            raise ConfigError("fuse='mix' mixes the upsampling paths of FCN-16s / 8s / 4s: FCN-32s has one path")
        if skips not in (0, 1, 2, 3):
            raise ConfigError(f"skips must be 0 (FCN-32s), 1 (FCN-16s), 2 (FCN-8s) or 3 (FCN-4s), got {skips}")
        if len(in_keys) < skips + 1 or len(in_channels) < skips + 1 or len(strides) < skips + 1:
            raise ConfigError(f"FCN with {skips} skips needs {skips + 1} taps, got {list(in_keys)}")
        self.skips = skips
        self.in_keys = list(in_keys[: skips + 1])
        strides = [int(s) for s in strides[: skips + 1]]
        factors = [strides[i] // strides[i + 1] for i in range(skips)] + [strides[skips]]
        self.crop_skips = offsets is not None
        self.factors = factors
        #: set by the builder for a backbone whose maps are ``floor(H / stride)`` (no padding, e.g. ConvNeXt's 4x4
        #: stride-4 stem) rather than ``ceil``: an upsampled map may then end short of the grid it is cropped to
        #: (by up to ``f / 2 - 1`` pixels when ``H mod f > f / 2``), so those upsamplers get one more input row and
        #: column, the last one repeated (see :meth:`_upsample`)
        self.floored_maps = False
        if offsets is None:
            offsets = [f // 2 for f in factors]
        if len(offsets) != skips + 1:
            raise ConfigError(f"need {skips + 1} crop offsets, got {list(offsets)}")
        self.offsets = [int(o) for o in offsets]
        self.skip_scales = [float(s) for s in skip_scales] if skip_scales else [1.0] * skips
        if len(self.skip_scales) != skips:
            raise ConfigError(f"need {skips} skip scales, got {list(skip_scales or [])}")

        self.score_fr = nn.Conv2d(in_channels[0], num_classes, 1)
        for i, (score_name, up_name) in enumerate(_FUSE_NAMES[:skips]):
            setattr(self, score_name, nn.Conv2d(in_channels[i + 1], num_classes, 1))
            setattr(self, up_name, make_upsampler(num_classes, factors[i], upsample, learn_upsample))
        setattr(self, _FINAL_NAME[skips], make_upsampler(num_classes, factors[-1], upsample, learn_upsample))
        for score in self._score_layers():
            nn.init.zeros_(score.weight)
            nn.init.zeros_(score.bias)
        self.fuse = fuse
        if fuse == "mix":
            paths = skips + 1
            self.mix = nn.Conv2d(paths * num_classes, num_classes, 1)
            with torch.no_grad():  # the sum of the paths: class c of the output = class c of every path
                eye = torch.eye(num_classes).view(num_classes, num_classes, 1, 1)
                self.mix.weight.copy_(torch.cat([eye] * paths, dim=1))
                self.mix.bias.zero_()

    def _score_layers(self) -> list[nn.Conv2d]:
        names = ["score_fr"] + [score for score, _ in _FUSE_NAMES[: self.skips]]
        return [getattr(self, n) for n in names]

    def _upsample(self, name: str, step: int, x: Tensor) -> Tensor:
        """Upsampler ``name`` of fusion step ``step`` (``skips`` for the last one) on ``x``. On floored maps, the
        last step and any step of a factor above 2 (a factor-2 step always reaches its crop) first repeat the last
        row and column: the bilinear resize gives the same values as before on the pixels it had, and the
        fixed bilinear deconvolution now covers the last ones fully instead of fading them out."""
        if self.floored_maps and (step == self.skips or self.factors[step] > 2):
            x = F.pad(x, (0, 1, 0, 1), mode="replicate")
        return getattr(self, name)(x)

    def forward(self, features: dict[str, Tensor], size: tuple[int, int]) -> Tensor:
        if self.fuse == "mix":
            return self._forward_mixed(features, size)
        h = self.score_fr(features[self.in_keys[0]])
        for i, (score_name, up_name) in enumerate(_FUSE_NAMES[: self.skips]):
            h = self._upsample(up_name, i, h)
            tap = features[self.in_keys[i + 1]]
            if self.skip_scales[i] != 1.0:
                tap = tap * self.skip_scales[i]
            score = getattr(self, score_name)(tap)
            if self.crop_skips:  # Caffe geometry: the finer score map is cropped to the upsampled one
                h = h + crop_like(score, self.offsets[i], h.shape[-2:])
            else:  # "same" padding: the upsampled map is cropped onto the finer grid
                h = crop_like(h, self.offsets[i], score.shape[-2:]) + score
        h = self._upsample(_FINAL_NAME[self.skips], self.skips, h)
        return crop_like(h, self.offsets[-1], size)

    def _forward_mixed(self, features: dict[str, Tensor], size: tuple[int, int]) -> Tensor:
        """``fuse="mix"``: each step carries every coarser path one grid finer, then ``mix`` combines them."""
        paths = [self.score_fr(features[self.in_keys[0]])]
        for i, (score_name, up_name) in enumerate(_FUSE_NAMES[: self.skips]):
            tap = features[self.in_keys[i + 1]]
            if self.skip_scales[i] != 1.0:
                tap = tap * self.skip_scales[i]
            score = getattr(self, score_name)(tap)
            paths = [self._upsample(up_name, i, p) for p in paths]
            if self.crop_skips:
                score = crop_like(score, self.offsets[i], paths[0].shape[-2:])
            else:
                paths = [crop_like(p, self.offsets[i], score.shape[-2:]) for p in paths]
            paths.append(score)
        h = self.mix(torch.cat(paths, dim=1))
        h = self._upsample(_FINAL_NAME[self.skips], self.skips, h)
        return crop_like(h, self.offsets[-1], size)
