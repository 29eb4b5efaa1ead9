"""timm backbones behind FCN heads."""

import pytest
import timm
import torch

import fcnkit
from fcnkit.errors import ConfigError, UnknownNameError


@pytest.mark.parametrize("head", ["fcn32s", "fcn16s", "fcn8s", "fcn"])
@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_b0", "mobilenetv3_small_050"])
def test_timm_heads_output_contract(head, backbone):
    model = fcnkit.create_model(f"{head}_timm", backbone=backbone, num_classes=5).eval()
    for size in [(1, 1), (29, 61), (64, 64)]:
        with torch.no_grad():
            assert model(torch.randn(1, 3, *size))["out"].shape == (1, 5, *size)


def test_timm_prefix_and_output_stride():
    model = fcnkit.create_model("timm:resnet18", head="fcn", num_classes=3, output_stride=8)
    assert model.arch["name"] == "fcn_timm" and model.backbone.timm_name == "resnet18"
    assert [i.stride for i in model.backbone.feature_info] == [2, 4, 8, 8, 8]
    model16 = fcnkit.create_model("fcn8s_timm", backbone="timm:resnet18", output_stride=16)
    assert [i.stride for i in model16.backbone.feature_info][-3:] == [8, 16, 16]
    assert model16(torch.randn(1, 3, 40, 40))["out"].shape == (1, 21, 40, 40)


def test_timm_backbone_channels_come_from_timm():
    model = fcnkit.create_model("fcn8s_timm", backbone="efficientnet_b0")
    ref = timm.create_model("efficientnet_b0", features_only=True, pretrained=False)
    assert [i.channels for i in model.backbone.feature_info] == ref.feature_info.channels()
    assert model.classifier.score_fr.in_channels == ref.feature_info.channels()[-1]
    assert model.classifier.score_pool3.in_channels == ref.feature_info.channels()[-3]


def test_timm_typo_suggests():
    with pytest.raises(UnknownNameError, match=r"Unknown timm backbone 'resnet18x'\. Did you mean: resnet18,"):
        fcnkit.create_model("fcn8s_timm", backbone="resnet18x")


@torch.no_grad()
def test_timm_backbone_weights_file(tmp_path):
    src = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18_timm.pth"
    torch.save(src.state_dict(), path)
    model = fcnkit.create_model("fcn_timm", backbone="resnet18", backbone_weights=path)
    assert torch.equal(model.backbone.body.conv1.weight, src.conv1.weight)


@pytest.mark.parametrize("upsample", ["bilinear", "deconv"])
@pytest.mark.parametrize(
    ("head_name", "scores"),
    [
        ("fcn8s", ("score_fr", "score_pool4", "score_pool3")),
        ("fcn4s", ("score_fr", "score_pool4", "score_pool3", "score_pool2")),
    ],
)
@torch.no_grad()
def test_aligned_skip_fusion_reproduces_a_linear_ramp(upsample, head_name, scores):
    """With "same" padding, pixel j of a stride-s tap is centred on image column j*s + (s-1)/2. Feed every
    tap that centre coordinate and score it with a mean over channels: if each upsample-and-crop (offset f/2)
    lines the coarse map up with the finer one, the fused maps (three for FCN-8s, four for FCN-4s) each
    contribute x, so the output is exactly 3x (4x) away from the borders (bilinear interpolation reproduces a
    linear function). A wrong offset shifts it by a multiple of the stride."""
    model = fcnkit.create_model(f"{head_name}_timm", backbone="resnet18", num_classes=1, upsample=upsample).eval()
    h, w = 64, 96
    feats = {}
    for info in model.backbone.feature_info:
        s = info.stride
        centres = torch.arange(w // s, dtype=torch.float32) * s + (s - 1) / 2
        feats[info.name] = centres.view(1, 1, 1, -1).expand(1, info.channels, h // s, w // s).contiguous()
    head = model.classifier
    assert [name for name, _ in head.named_children() if name.startswith("score")] == list(scores)
    for name in scores:
        layer = getattr(head, name)
        layer.weight.fill_(1.0 / layer.in_channels)
    out = head(feats, (h, w))[0, 0, h // 2]
    x = torch.arange(w, dtype=torch.float32)
    assert torch.allclose(out[32:-32], len(scores) * x[32:-32], atol=1e-3)


@pytest.mark.parametrize(
    ("head_name", "scores"),
    [
        ("fcn8s", ("score_fr", "score_pool4", "score_pool3")),
        ("fcn4s", ("score_fr", "score_pool4", "score_pool3", "score_pool2")),
    ],
)
def test_full_mixing_starts_as_the_sum_and_can_weigh_each_path(head_name, scores):
    torch.manual_seed(0)
    options = {"num_classes": 4, "backbone": "resnet18", "upsample": "bilinear"}
    summed = fcnkit.create_model(f"{head_name}_timm", **options).eval()
    mixed = fcnkit.create_model(f"{head_name}_timm", fuse="mix", **options).eval()
    with torch.no_grad():  # the score layers start at zero: give every path a signal
        for name in scores:
            getattr(summed.classifier, name).weight.normal_(0, 0.05)
    result = mixed.load_state_dict(summed.state_dict(), strict=False)
    assert sorted(result.missing_keys) == ["classifier.mix.bias", "classifier.mix.weight"]
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(mixed(x)["out"], summed(x)["out"], rtol=1e-5, atol=1e-5)
        # only the finest path kept: the summed head with every coarser score layer at zero
        eye = torch.eye(4).view(4, 4, 1, 1)
        mixed.classifier.mix.weight.copy_(torch.cat([0 * eye] * (len(scores) - 1) + [eye], dim=1))
        for name in scores[:-1]:
            getattr(summed.classifier, name).weight.zero_()
            getattr(summed.classifier, name).bias.zero_()
        torch.testing.assert_close(mixed(x)["out"], summed(x)["out"], rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="FCN-32s has one path"):
        fcnkit.create_model("fcn32s_timm", num_classes=4, backbone="resnet18", fuse="mix")


@torch.no_grad()
def test_image_standardisation_is_the_per_image_per_channel_z_score():
    model = fcnkit.create_model("fcn8s_timm", backbone="regnetx_002", num_classes=3, input_norm="image").eval()
    x = torch.randn(2, 3, 20, 30) * torch.tensor([2.0, 0.5, 1.0]).view(1, 3, 1, 1) + 3.0
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(2, 3), keepdim=True)  # the population variance, as a normalisation uses
    assert torch.allclose(model.input_norm(x), (x - mean) / torch.sqrt(var + 1e-5), atol=1e-5)


@torch.no_grad()
def test_image_standardisation_makes_the_logits_blind_to_brightness_and_contrast():
    """A darker, lower-contrast copy of an image (each channel scaled by a > 0 and shifted, as a dusk frame is
    against a daylight one) gets the same logits with ``input_norm="image"``, and different ones without it."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 96)
    dark = x * torch.tensor([0.4, 0.5, 0.3]).view(1, 3, 1, 1) - torch.tensor([1.2, 1.0, 1.5]).view(1, 3, 1, 1)
    for input_norm, same in ((None, False), ("image", True)):
        torch.manual_seed(1)
        model = fcnkit.create_model("fcn8s_timm", backbone="regnetx_002", num_classes=4, input_norm=input_norm)
        model.eval()
        for p in model.classifier.parameters():  # the score layers start at zero: give the logits a signal
            torch.nn.init.normal_(p, std=0.1)
        a, b = model(x)["out"], model(dark)["out"]
        assert a.abs().max() > 0.1
        assert torch.allclose(a, b, atol=2e-3 * a.abs().max()) is same


def test_image_standardisation_adds_no_state_dict_key_and_checks_its_name():
    plain = fcnkit.create_model("fcn8s_timm", backbone="regnetx_002", num_classes=3)
    standardised = fcnkit.create_model("fcn8s_timm", backbone="regnetx_002", num_classes=3, input_norm="image")
    assert standardised.state_dict().keys() == plain.state_dict().keys()
    assert plain.input_norm is None
    with pytest.raises(ConfigError, match=r"input_norm must be one of \[None, 'image'\], got 'instance'"):
        fcnkit.create_model("fcn8s_timm", backbone="regnetx_002", input_norm="instance")


@torch.no_grad()
def test_skip_heads_on_a_backbone_without_padding_take_every_size():
    """ConvNeXt's 4x4 stride-4 stem gives floor(H / stride) maps, so the last upsampled map used to end before the
    crop when H mod stride > stride / 2 (fcn8s failed at H = 45: 6 x 8 = 48 < 4 + 45). The builder finds such
    backbones by a probe, and their upsamplers repeat the last row and column first. Every residue of H and W
    modulo 32 now gives an (H, W) output; the bilinear resize gives the same values as without the extra row on
    the pixels it had; backbones with padding (ResNet) are left as they were."""
    from fcnkit.models.timm_fcn import floors

    sizes = [(32 + r, 64 + (r * 7) % 32) for r in range(32)]
    for head in ("fcn32s", "fcn16s", "fcn8s", "fcn4s"):
        for fuse in ("sum", "mix") if head != "fcn32s" else ("sum",):
            model = fcnkit.create_model(f"{head}_timm", backbone="test_convnext", num_classes=3, fuse=fuse)
            assert model.training  # the probe left the mode as it was
            assert model.classifier.floored_maps and floors(model.backbone)
            model.eval()
            for h, w in sizes:
                assert model(torch.randn(1, 3, h, w))["out"].shape == (1, 3, h, w), (head, fuse, h, w)
    resnet = fcnkit.create_model("fcn8s_timm", backbone="test_resnet", num_classes=3)
    assert not resnet.classifier.floored_maps and not floors(resnet.backbone)

    torch.manual_seed(0)
    model = fcnkit.create_model("fcn8s_timm", backbone="test_convnext", num_classes=3, upsample="bilinear").eval()
    for score in ("score_fr", "score_pool4", "score_pool3"):  # the score layers start at zero: give them values
        torch.nn.init.normal_(getattr(model.classifier, score).weight)
    x = torch.randn(1, 3, 43, 58)  # 43 mod 8 = 3, 58 mod 8 = 2: the old geometry reached its crop here
    new = model(x)["out"]
    model.classifier.floored_maps = False
    assert torch.allclose(model(x)["out"], new, atol=1e-6)
    deconv = fcnkit.create_model("fcn8s_timm", backbone="test_convnext", num_classes=3).eval()
    deconv.load_state_dict(model.state_dict(), strict=False)
    for score in ("score_fr", "score_pool4", "score_pool3"):
        getattr(deconv.classifier, score).load_state_dict(getattr(model.classifier, score).state_dict())
    new = deconv(x)["out"]
    deconv.classifier.floored_maps = False
    old = deconv(x)["out"]
    # the fixed bilinear deconvolution: the same away from the last stride of rows and columns, which it now
    # covers fully instead of fading them out
    assert torch.allclose(old[..., :35, :50], new[..., :35, :50], atol=1e-5)
    assert not torch.allclose(old, new, atol=1e-5)
