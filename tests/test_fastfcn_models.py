"""FastFCN family: JPU / JPU_X necks, EncNet / PSP / DeepLabV3 heads, deep stem, the 18 registered variants.

Numbers are checked against independent computations: a loop-by-loop encoding layer, block means for the
pyramid pooling, torchvision's DeepLabHead and ResNet parameter counts, functional re-implementations and
parameter counts worked out by hand. ResNet-101 variants are built on the meta device (shapes only).
"""

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.models.segmentation.deeplabv3 import DeepLabHead

import fcnkit
from conftest import randomize_
from fcnkit.models import Segmenter
from fcnkit.models import describe_model as _family
from fcnkit.models.backbones.resnet import ResNetBackbone
from fcnkit.models.fastfcn import fastfcn
from fcnkit.models.heads.aspp import ASPPHead
from fcnkit.models.heads.encnet import EncHead, Encoding
from fcnkit.models.heads.psp import PSPHead, PyramidPooling
from fcnkit.models.necks import JPU, JPU_X

HEADS = ["enc", "psp", "deeplabv3"]
VARIANTS = [f"{h}_resnet{d}_{n}" for h in HEADS for d in (50, 101) for n in ("jpu", "jpux", "d8")]
R50 = [v for v in VARIANTS if "resnet50" in v]
R101 = [v for v in VARIANTS if "resnet101" in v]

# torchvision's published ImageNet parameter counts, minus the 2048 -> 1000 classifier (2,049,000).
TV_RESNET50_TRUNK = 25_557_032 - 2_049_000
TV_RESNET101_TRUNK = 44_549_160 - 2_049_000


@pytest.fixture(autouse=True, scope="module")
def _plain_cpu_convolutions():
    """oneDNN spends seconds preparing each new convolution shape, far more than these tiny inputs cost to
    compute; PyTorch's native kernels run the same maths without that start-up (about 10x faster here)."""
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    yield
    torch.backends.mkldnn.enabled = previous


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def meta_model(name: str, **options) -> Segmenter:
    with torch.device("meta"):
        return fcnkit.create_model(name, **options)


def test_all_variants_registered_and_described():
    names = fcnkit.list_models()
    for name in VARIANTS:
        assert name in names
        assert "FastFCN" in _family(name)  # `fcnkit models` describes every variant as FastFCN's
    assert "FastFCN" not in _family("fcn_resnet50_d8") and "FCNHead" in _family("fcn_resnet50_d8")
    assert "JPU_X" in _family("psp_resnet101_jpux")
    assert "dilated" in _family("enc_resnet50_d8") and "EncNet" in _family("enc_resnet50_d8")


@pytest.mark.parametrize("name", R50)
@pytest.mark.slow
def test_resnet50_variants_forward_backward(name):
    """Real forward + backward in train mode (batch 2: image-pooling BN needs it), eval with batch 1."""
    torch.manual_seed(0)
    model = fcnkit.create_model(name, num_classes=3, aux=True).train()
    x = torch.randn(2, 3, 41, 53)
    out = model(x)
    expected = {"out", "aux", "se"} if name.startswith("enc") else {"out", "aux"}
    assert set(out) == expected
    assert out["out"].shape == out["aux"].shape == (2, 3, 41, 53)
    target = torch.randint(0, 3, (2, 41, 53))
    loss = F.cross_entropy(out["out"], target) + 0.2 * F.cross_entropy(out["aux"], target)
    if "se" in out:
        assert out["se"].shape == (2, 3)
        loss = loss + 0.2 * F.binary_cross_entropy_with_logits(out["se"], torch.ones(2, 3))
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), pname
    assert any(p.grad.abs().sum() > 0 for p in model.classifier.parameters())
    if model.neck is not None:
        assert any(p.grad.abs().sum() > 0 for p in model.neck.parameters())
    model.eval()
    with torch.no_grad():
        single = model(torch.randn(1, 3, 65, 77))
    assert single["out"].shape == (1, 3, 65, 77)


@pytest.mark.parametrize("name", R101)
def test_resnet101_variants_shapes_on_meta(name):
    model = meta_model(name, num_classes=4, aux=True).eval()
    out = model(torch.empty(1, 3, 65, 77, device="meta"))
    assert out["out"].shape == out["aux"].shape == (1, 4, 65, 77)
    assert ("se" in out) == name.startswith("enc")
    # Same head and neck as the ResNet-50 variant; the trunks differ by torchvision's published counts.
    r50 = meta_model(name.replace("resnet101", "resnet50"), num_classes=4, aux=True)
    assert n_params(model) - n_params(r50) == TV_RESNET101_TRUNK - TV_RESNET50_TRUNK


@pytest.mark.parametrize("neck", ["jpu", "jpux"])
@torch.no_grad()
def test_neck_gives_2048_channels_on_layer2_grid(neck):
    model = fcnkit.create_model(f"psp_resnet50_{neck}", num_classes=2).eval()
    assert model.backbone.output_stride == 32 and model.classifier.in_key == "jpu"
    for h, w in [(64, 64), (65, 97), (33, 47)]:
        taps = model.backbone(torch.randn(1, 3, h, w))
        out = model.neck(taps)
        assert set(out) == {"jpu"}
        feats = {**taps, **out}
        assert feats["layer4"].shape[-2:] == (math.ceil(h / 32), math.ceil(w / 32))
        assert feats["layer2"].shape[-2:] == (math.ceil(h / 8), math.ceil(w / 8))
        assert feats["jpu"].shape == (1, 2048, *feats["layer2"].shape[-2:])


def test_d8_baselines_read_dilated_layer4():
    for head in HEADS:
        model = meta_model(f"{head}_resnet50_d8", num_classes=2)
        assert model.neck is None and model.backbone.output_stride == 8
        assert model.classifier.in_key == "layer4"
        assert not any(k.startswith("neck.") for k in model.state_dict())


def test_no_neck_keeps_state_dict_keys():
    model = fcnkit.create_model("fcn_resnet18_d8", num_classes=2)
    assert model.neck is None
    assert "neck" not in dict(model.named_children())
    assert not any(k.startswith("neck.") for k in model.state_dict())


def _conv_bn(x, conv, bn, **conv_kw):
    y = F.conv2d(x, conv.weight, conv.bias, **conv_kw)
    return F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


@torch.no_grad()
def test_jpu_matches_functional_recomputation():
    """Concat order (c4, c3, c2), align_corners=True resize, dilations 1/2/4/8, norm and ReLU placement."""
    jpu = randomize_(JPU((6, 10, 12), width=4), seed=3).eval()
    g = torch.Generator().manual_seed(0)
    feats = {
        "layer2": torch.randn(2, 6, 9, 11, generator=g),
        "layer3": torch.randn(2, 10, 5, 6, generator=g),
        "layer4": torch.randn(2, 12, 3, 3, generator=g),
    }
    out = jpu(feats)
    assert set(out) == {"jpu"} and out["jpu"].shape == (2, 16, 9, 11)

    def cbr(x, seq):
        return F.relu(_conv_bn(x, seq[0], seq[1], padding=1))

    def up(x):
        return F.interpolate(x, size=(9, 11), mode="bilinear", align_corners=True)

    joint = torch.cat(
        [up(cbr(feats["layer4"], jpu.conv5)), up(cbr(feats["layer3"], jpu.conv4)), cbr(feats["layer2"], jpu.conv3)], 1
    )
    branches = []
    for i, d in enumerate((1, 2, 4, 8), start=1):
        sep, bn = getattr(jpu, f"dilation{i}")[0], getattr(jpu, f"dilation{i}")[1]
        y = _conv_bn(joint, sep.conv1, sep.bn, padding=d, dilation=d, groups=12)
        branches.append(F.relu(_conv_bn(y, sep.pointwise, bn)))
    assert (out["jpu"] - torch.cat(branches, 1)).abs().max() < 1e-5


def test_neck_parameter_counts_by_hand():
    # JPU, width 8: three 3x3 convs to 8 (+ BN 2x8 each); four branches on 24 channels:
    # depthwise 24*9, BN 2*24, pointwise 24*8, BN 2*8.
    convs = (512 + 1024 + 2048) * 8 * 9 + 3 * 16
    branch = 24 * 9 + 2 * 24 + 24 * 8 + 2 * 8
    assert n_params(JPU(width=8)) == convs + 4 * branch
    # JPU_X, width 8 (GroupNorm with 4 groups; GN has 2 parameters per channel like BN).
    jum1 = (1024 + 512) * 4 * 9 + 2 * 8 + 3 * (8 * 9 + 2 * 8 + 8 * 4 + 2 * 4)
    jum2 = (2048 + 16) * 8 * 9 + 2 * 16 + 3 * (16 * 9 + 2 * 16 + 16 * 8 + 2 * 8)
    assert n_params(JPU_X(width=8, group_norm_groups=4)) == jum1 + jum2
    # Full width, from the model counts: JPU = (4 * 804,352 branch params) + three 3x3 convs to 512.
    jpu = (512 + 1024 + 2048) * 512 * 9 + 3 * 1024 + 4 * (1536 * 9 + 2 * 1536 + 1536 * 512 + 2 * 512)
    with_jpu, plain = meta_model("deeplabv3_resnet50_jpu"), meta_model("deeplabv3_resnet50_d8")
    assert n_params(with_jpu) - n_params(plain) == jpu == 19_735_552
    assert isinstance(JPU_X().jum_1.dilation1[1], torch.nn.GroupNorm)


def _reference_encoding(x, codewords, scale):
    """e_k = sum_i softmax_k(s_k ||x_i - d_k||^2) (x_i - d_k), one position and one codeword at a time."""
    b_, d_, h_, w_ = x.shape
    k_ = codewords.shape[0]
    out = torch.zeros(b_, k_, d_, dtype=torch.float64)
    for b in range(b_):
        for i in range(h_):
            for j in range(w_):
                xi = x[b, :, i, j].double()
                logits = [
                    float(scale[k]) * sum((float(xi[d]) - float(codewords[k, d])) ** 2 for d in range(d_))
                    for k in range(k_)
                ]
                top = max(logits)
                weights = [math.exp(v - top) for v in logits]
                total = sum(weights)
                for k in range(k_):
                    out[b, k] += weights[k] / total * (xi - codewords[k].double())
    return out


@torch.no_grad()
def test_encoding_layer_matches_hand_computation():
    torch.manual_seed(0)
    layer = Encoding(channels=3, num_codes=4)
    layer.scale.uniform_(-2.0, -0.1)
    x = torch.randn(2, 3, 2, 3)
    got = layer(x)
    assert got.shape == (2, 4, 3)
    assert (got.double() - _reference_encoding(x, layer.codewords, layer.scale)).abs().max() < 1e-5
    assert (layer.codewords.abs() <= 1 / math.sqrt(12)).all() and (Encoding(3, 4).scale < 0).all()


@torch.no_grad()
def test_enc_head_gating_and_se_against_hand_computation():
    head = randomize_(EncHead(8, 5, in_key="c", se_loss=True, jpu=True, num_codes=3, channels=4), seed=2).eval()
    x = torch.rand(2, 8, 3, 5)
    out = head({"c": x})
    assert set(out) == {"out", "se"} and out["out"].shape == (2, 5, 3, 5) and out["se"].shape == (2, 5)
    conv5, enc = head.conv5, head.encmodule
    assert conv5[0].kernel_size == (1, 1)
    y = F.relu(_conv_bn(x, conv5[0], conv5[1]))
    z = F.relu(_conv_bn(y, enc.encoding[0], enc.encoding[1]))
    codes = _reference_encoding(z, enc.encoding[3].codewords, enc.encoding[3].scale).float()
    bn1d = enc.encoding[4]
    codes = (codes - bn1d.running_mean[:, None]) / torch.sqrt(bn1d.running_var[:, None] + bn1d.eps)
    en = F.relu(codes * bn1d.weight[:, None] + bn1d.bias[:, None]).mean(1)  # (B, D)
    gamma = torch.sigmoid(en @ enc.fc[0].weight.t() + enc.fc[0].bias)
    gated = y * (1 + gamma[:, :, None, None])
    logits = F.conv2d(gated, head.conv6[1].weight, head.conv6[1].bias)
    assert (out["out"] - logits).abs().max() < 1e-4
    assert (out["se"] - (en @ enc.selayer.weight.t() + enc.selayer.bias)).abs().max() < 1e-4


def test_se_branch_switch():
    with_se = meta_model("enc_resnet50_jpu", num_classes=6).eval()
    assert with_se(torch.empty(2, 3, 40, 40, device="meta"))["se"].shape == (2, 6)
    without = meta_model("enc_resnet50_jpu", num_classes=6, se_loss=False).eval()
    assert set(without(torch.empty(2, 3, 40, 40, device="meta"))) == {"out"}
    assert without.classifier.encmodule.selayer is None
    assert n_params(with_se) - n_params(without) == 512 * 6 + 6
    assert set(meta_model("psp_resnet50_jpu").eval()(torch.empty(1, 3, 40, 40, device="meta"))) == {"out"}
    with pytest.raises(ValueError, match="se_loss needs the EncNet head"):
        meta_model("psp_resnet50_jpu", se_loss=True)


def test_enc_head_parameter_count_by_hand():
    # Dilated baseline: 3x3 conv 2048 -> 512 (+BN); encoding: 1x1 512 -> 512 (+BN), 32 codewords of 512 and
    # 32 scales, BatchNorm1d(32); fc 512 -> 512; SE 512 -> 5; classifier 512 -> 5.
    expected = (2048 * 512 * 9 + 1024) + (512 * 512 + 1024) + (32 * 512 + 32) + 64 + (512 * 512 + 512)
    expected += 2 * (512 * 5 + 5)
    assert n_params(EncHead(2048, 5, jpu=False)) == expected
    assert n_params(EncHead(2048, 5, jpu=True)) == expected - 2048 * 512 * 8  # 1x1 after a JPU


@torch.no_grad()
def test_pyramid_pooling_bins():
    ppm = randomize_(PyramidPooling(8, bins=(1, 2, 3, 6)), seed=4).eval()
    assert ppm.out_channels == 8 + 4 * 2
    pooled = {}
    for i in range(1, 5):
        getattr(ppm, f"pool{i}").register_forward_hook(lambda m, inp, out, i=i: pooled.__setitem__(i, out))
    x = torch.rand(2, 8, 12, 18)
    out = ppm(x)
    assert out.shape == (2, 16, 12, 18)
    assert torch.equal(out[:, :8], x)  # the input comes first, untouched
    for i, b in enumerate((1, 2, 3, 6), start=1):
        blocks = x.reshape(2, 8, b, 12 // b, b, 18 // b).mean(dim=(3, 5))  # mean of each cell
        assert (pooled[i] - blocks).abs().max() < 1e-6
    # The one-bin branch is the same vector everywhere; the 6-bin one is not.
    one_bin = out[:, 8:10]
    assert (one_bin - one_bin[..., :1, :1]).abs().max() < 1e-6
    assert (out[:, 14:16] - out[:, 14:16, :1, :1]).abs().max() > 1e-3


def test_psp_and_aspp_layout():
    psp = PSPHead(2048, 5)
    branch = 2048 * 512 + 2 * 512  # 1x1 to in/4 + BN, per bin
    assert n_params(psp) == 4 * branch + (4096 * 512 * 9 + 1024) + (512 * 5 + 5)
    assert psp.conv5[1].in_channels == 4096 and isinstance(psp.conv5[4], torch.nn.Dropout2d)
    aspp = ASPPHead(2048, 5).aspp
    assert [getattr(aspp, f"b{i}")[0].dilation for i in (1, 2, 3)] == [(12, 12), (24, 24), (36, 36)]
    assert [getattr(aspp, f"b{i}")[0].padding for i in (1, 2, 3)] == [(12, 12), (24, 24), (36, 36)]
    assert aspp.project[3].p == 0.5


@torch.no_grad()
def test_aspp_head_equals_torchvision_deeplab_head():
    """Same layers in the same order as torchvision's DeepLabHead (dropouts aside): same logits in eval."""
    tv = randomize_(DeepLabHead(32, 5), seed=5).eval()
    ours = ASPPHead(32, 5, in_key="x").eval()
    tv_state, own = list(tv.state_dict().values()), ours.state_dict()
    assert len(tv_state) == len(own)
    ours.load_state_dict(dict(zip(own, tv_state, strict=True)))
    x = torch.randn(2, 32, 9, 13)
    assert (ours({"x": x}) - tv(x)).abs().max() < 1e-5


def test_deeplabv3_d8_parameter_count_matches_torchvision():
    tv = torchvision.models.segmentation.deeplabv3_resnet50
    with torch.device("meta"):
        expected = n_params(tv(weights=None, weights_backbone=None, num_classes=21, aux_loss=True))
    assert n_params(meta_model("deeplabv3_resnet50_d8", num_classes=21, aux=True)) == expected == 42_004_074


@torch.no_grad()
def test_deep_stem_backbone():
    plain, deep = ResNetBackbone(50, 32), ResNetBackbone(50, 32, deep_stem=True)
    tv_keys = {k for k in torchvision.models.resnet50(weights=None).state_dict() if not k.startswith("fc.")}
    assert set(plain.state_dict()) == tv_keys
    convs = [m for m in deep.conv1 if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (3, 64, (3, 3), (2, 2)),
        (64, 64, (3, 3), (1, 1)),
        (64, 128, (3, 3), (1, 1)),
    ]
    assert deep.bn1.num_features == 128 and deep.layer1[0].conv1.in_channels == 128
    assert deep.layer1[0].downsample[0].in_channels == 128
    small = ResNetBackbone(18, 32, deep_stem=True).eval()  # BasicBlock: the shortcut exists only for the stem
    assert small.layer1[0].downsample is not None and ResNetBackbone(18, 32).layer1[0].downsample is None
    feats = small(torch.randn(1, 3, 65, 97))
    ref = ResNetBackbone(18, 32).eval()(torch.randn(1, 3, 65, 97))
    assert {k: v.shape for k, v in feats.items()} == {k: v.shape for k, v in ref.items()}
    assert [(i.name, i.channels, i.stride) for i in small.feature_info] == [
        (i.name, i.channels, i.stride) for i in ResNetBackbone(18, 32).feature_info
    ]
    model = meta_model("enc_resnet50_jpu", deep_stem=True)
    assert isinstance(model.backbone.conv1, torch.nn.Sequential)


def test_backbone_weights_and_deep_stem_mismatch(tmp_path):
    tv = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(tv.state_dict(), path)
    model = fastfcn("psp", depth=18, neck="jpu", num_classes=2, backbone_weights=path)
    assert torch.equal(model.backbone.layer3[1].conv2.weight, tv.layer3[1].conv2.weight)
    with pytest.raises(ValueError, match="deep_stem=True needs deep-stem weights"):
        fastfcn("psp", depth=18, neck="jpu", num_classes=2, deep_stem=True, backbone_weights=path)


def test_bad_head_or_neck_is_named():
    with pytest.raises(ValueError, match="head must be one of"):
        fastfcn("fcn", neck=None)
    with pytest.raises(ValueError, match="neck must be one of"):
        fastfcn("psp", neck="fpn")


@torch.no_grad()
def test_checkpoint_round_trip_keeps_options(tmp_path):
    model = fcnkit.create_model("enc_resnet50_jpux", num_classes=3, aux=True, se_loss=False, deep_stem=True).eval()
    loaded = fcnkit.load_checkpoint(fcnkit.save_checkpoint(tmp_path / "last.pth", model, epoch=1)).eval()
    assert loaded.arch["options"] == {"aux": True, "se_loss": False, "deep_stem": True}
    x = torch.randn(1, 3, 40, 50)
    expected, got = model(x), loaded(x)
    assert set(got) == {"out", "aux"} and all(torch.equal(got[k], expected[k]) for k in expected)
