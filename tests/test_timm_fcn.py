"""timm backbones behind FCN heads."""

import pytest
import timm
import torch

import fcnkit


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
    with pytest.raises(ValueError, match=r"Did you mean: .*resnet18"):
        fcnkit.create_model("fcn8s_timm", backbone="resnet18x")


@torch.no_grad()
def test_timm_backbone_weights_file(tmp_path):
    src = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18_timm.pth"
    torch.save(src.state_dict(), path)
    model = fcnkit.create_model("fcn_timm", backbone="resnet18", backbone_weights=path)
    assert torch.equal(model.backbone.body.conv1.weight, src.conv1.weight)


@torch.no_grad()
def test_aligned_skip_crop_offsets_center_the_upsampled_map():
    """With 'same' padding, fusing at offset f/2 keeps a constant-per-position map aligned: scoring a
    left-right ramp gives an output that increases monotonically along x in the interior."""
    model = fcnkit.create_model("fcn8s_timm", backbone="resnet18", num_classes=1, upsample="bilinear").eval()
    ramp = torch.linspace(-1, 1, 96).view(1, 1, 1, 96).expand(1, 3, 64, 96)
    feats = {i.name: ramp[..., :: i.stride, :: i.stride][:, :1].expand(1, i.channels, -1, -1).contiguous()
             for i in model.backbone.feature_info}  # fmt: skip
    head = model.classifier
    for layer in (head.score_fr, head.score_pool4, head.score_pool3):
        layer.weight.fill_(1.0 / layer.in_channels)
    out = head(feats, (64, 96))[0, 0, 32]
    interior = out[16:-16]
    assert torch.all(interior[1:] >= interior[:-1] - 1e-5)
