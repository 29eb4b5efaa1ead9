"""Dilated-ResNet FCN against torchvision's own fcn_resnet50 / fcn_resnet101."""

import pytest
import torch
import torchvision
from torchvision.models.segmentation import fcn_resnet50, fcn_resnet101

import fcnkit
from conftest import randomize_

TV = {"fcn_resnet50_d8": fcn_resnet50, "fcn_resnet101_d8": fcn_resnet101}


@pytest.mark.parametrize("name", list(TV))
@pytest.mark.parametrize("aux", [True, False])
@torch.no_grad()
@pytest.mark.slow
def test_torchvision_state_dict_gives_same_logits(name, aux, tmp_path):
    tv = randomize_(TV[name](weights=None, weights_backbone=None, num_classes=21, aux_loss=aux), seed=1).eval()
    ours = fcnkit.create_model(name, num_classes=21, aux=aux)
    result = ours.load_state_dict(tv.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in tv.parameters())
    ours.eval()
    x = torch.randn(1, 3, 67, 83)
    expected, got = tv(x), ours(x)
    assert set(got) == set(expected)
    for key in expected:
        assert (got[key] - expected[key]).abs().max().item() < 1e-4
    # and through a file, the way users hold torchvision checkpoints
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)
    from_file = fcnkit.create_model(name, weights=path, aux=aux).eval()
    assert (from_file(x)["out"] - expected["out"]).abs().max().item() < 1e-4


def test_published_param_count_and_aux_dropped_when_not_asked(tmp_path):
    tv = fcn_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    assert sum(p.numel() for p in fcnkit.create_model("fcn_resnet50_d8", aux=True).parameters()) == 35_322_218
    path = tmp_path / "fcn_resnet50_coco.pth"
    torch.save(tv.state_dict(), path)
    model = fcnkit.create_model("fcn_resnet50_d8", weights=path)  # no aux head: its keys are dropped
    assert model.aux_classifier is None
    assert torch.equal(model.classifier[4].weight, tv.classifier[4].weight)


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
@pytest.mark.slow
def test_imagenet_backbone_import_and_strides(depth, tmp_path):
    tv = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    path = tmp_path / f"resnet{depth}.pth"
    torch.save(tv.state_dict(), path)
    for os_ in (8, 16):
        model = fcnkit.create_model(f"fcn_resnet{depth}_d{os_}", num_classes=2, backbone_weights=path)
        assert torch.equal(model.backbone.layer4[0].conv1.weight, tv.layer4[0].conv1.weight)
        feats = model.backbone(torch.randn(1, 3, 64, 96))
        assert feats["layer4"].shape[-2:] == (64 // os_, 96 // os_)
        assert feats["layer2"].shape[-2:] == (8, 12)


@torch.no_grad()
def test_os16_matches_torchvision_dilation_pattern():
    """Output stride 16 = torchvision's replace_stride_with_dilation=[False, False, True]."""
    tv = randomize_(torchvision.models.resnet50(weights=None, replace_stride_with_dilation=[False, False, True]))
    ours = fcnkit.create_model("fcn_resnet50_d16").backbone
    state = {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    ours.load_state_dict(state, strict=True)
    tv.eval(), ours.eval()
    x = torch.randn(1, 3, 50, 70)
    trunk = torch.nn.Sequential(tv.conv1, tv.bn1, tv.relu, tv.maxpool, tv.layer1, tv.layer2, tv.layer3, tv.layer4)
    assert (ours(x)["layer4"] - trunk(x)).abs().max() < 1e-4
