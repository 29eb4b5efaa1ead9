"""The output contract, checked once for every registered model; registry errors and checkpoints."""

import pytest
import torch

import fcnkit
from fcnkit.models import Segmenter, describe_model

ALL_MODELS = fcnkit.list_models()


def test_registry_lists_the_families():
    for name in [
        "fcn32s_vgg16",
        "fcn16s_vgg16",
        "fcn8s_vgg16",
        "fcn8s_atonce_vgg16",
        "fcn_resnet50_d8",
        "fcn_resnet101_d8",
        "fcn_resnet18_d16",
        "fcn8s_timm",
        "fcn_timm",
    ]:
        assert name in ALL_MODELS
    assert fcnkit.list_models("*vgg16") == ["fcn16s_vgg16", "fcn32s_vgg16", "fcn8s_atonce_vgg16", "fcn8s_vgg16"]


def _expected_keys(name: str) -> set[str]:
    # EncNet adds its SE-loss logits: one score per class and image
    return {"out", "se"} if name.startswith("enc_") else {"out"}


# ResNet-101 variants repeat the ResNet-50 ones at twice the depth: the full suite only.
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if "resnet101" in n else n for n in ALL_MODELS]
)
def test_output_contract_on_meta(name):
    """Every registered model, built on the ``meta`` device (shapes only, no memory, no arithmetic): logits at
    the input resolution for an odd, non-square input in train and eval mode, and a backward pass that gives
    every trainable score-layer parameter a gradient of its own shape. The numbers are checked for real on one
    model per family in ``test_output_contract_forward_backward`` and in each family's own tests."""
    with torch.device("meta"):
        model = fcnkit.create_model(name, num_classes=3)
        assert isinstance(model, Segmenter) and model.num_classes == 3
        model.train()
        out = model(torch.randn(2, 3, 35, 47))
        assert set(out) == _expected_keys(name)
        assert out["out"].shape == (2, 3, 35, 47) and out["out"].dtype == torch.float32
        if "se" in out:
            assert out["se"].shape == (2, 3)
        sum(v.sum() for v in out.values()).backward()
        trainable = [p for p in model.classifier.parameters() if p.requires_grad]
        assert trainable and all(p.grad is not None and p.grad.shape == p.shape for p in trainable)
        model.eval()
        with torch.no_grad():
            assert model(torch.randn(1, 3, 35, 47))["out"].shape == (1, 3, 35, 47)


#: One model per FCN family, run for real. FastFCN's (every ResNet-50 head x neck, with aux and SE outputs) run
#: for real in test_fastfcn_models.test_resnet50_variants_forward_backward, FCN-8s at-once in
#: test_vgg_fcn.test_atonce_scales_pool_taps_before_scoring (against FCN-8s with scaled weights).
FAMILY_REPRESENTATIVES = ["fcn8s_vgg16", "fcn_resnet18_d8", "fcn_resnet18_d16", "fcn8s_timm", "fcn_timm"]


def test_representatives_cover_every_family():
    from test_fastfcn_models import R50

    fastfcn = ("enc_", "psp_", "deeplabv3_")
    families = {describe_model(n) for n in ALL_MODELS if not n.startswith(fastfcn) and "atonce" not in n}
    assert families <= {describe_model(n) for n in FAMILY_REPRESENTATIVES}
    assert {describe_model(n) for n in ALL_MODELS if n.startswith(fastfcn)} == {describe_model(n) for n in R50}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if "vgg16" in n else n for n in FAMILY_REPRESENTATIVES]
)
def test_output_contract_forward_backward(name):
    """Logits at input resolution for an odd, non-square tiny input; gradients reach the score layer."""
    torch.manual_seed(0)
    model = fcnkit.create_model(name, num_classes=3)
    model.train()
    x = torch.randn(2, 3, 35, 47)
    out = model(x)
    assert set(out) == _expected_keys(name)
    assert out["out"].shape == (2, 3, 35, 47) and out["out"].dtype == torch.float32
    assert torch.isfinite(out["out"]).all()
    target = torch.randint(0, 3, (2, 35, 47))
    loss = torch.nn.functional.cross_entropy(out["out"], target)
    if "se" in out:  # the SE branch is trained only through its own loss
        loss = loss + torch.nn.functional.binary_cross_entropy_with_logits(out["se"], torch.ones(2, 3))
    loss.backward()
    grads = [p.grad for p in model.classifier.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    model.eval()
    with torch.no_grad():
        assert model(x[:1])["out"].shape == (1, 3, 35, 47)


@pytest.mark.parametrize("name", ["fcn_resnet18_d8", "fcn_resnet50_d16", "fcn_timm"])
def test_aux_output_when_asked(name):
    model = fcnkit.create_model(name, num_classes=4, aux=True)
    out = model(torch.randn(1, 3, 33, 41))
    assert set(out) == {"out", "aux"} and out["aux"].shape == (1, 4, 33, 41)


def test_unknown_model_suggests_close_names():
    with pytest.raises(KeyError, match="Did you mean: fcn8s_vgg16"):
        fcnkit.create_model("fcn8s_vgg61")
    with pytest.raises(KeyError, match="fcn_resnet50_d8"):
        fcnkit.create_model("fcn_resnet50_d9")


def test_unknown_option_suggests_close_names():
    with pytest.raises(TypeError, match=r"unknown option 'upsampel'.*Did you mean: upsample"):
        fcnkit.create_model("fcn8s_vgg16", upsampel="bilinear")
    with pytest.raises(TypeError, match="Did you mean: aux"):
        fcnkit.create_model("fcn_resnet50_d8", auxx=True)
    with pytest.raises(TypeError, match="'depth'"):  # fixed by the name, not an option
        fcnkit.create_model("fcn_resnet50_d8", depth=101)


def test_bad_option_values_are_named():
    with pytest.raises(ValueError, match="upsample must be one of"):
        fcnkit.create_model("fcn32s_timm", upsample="cubic")


def test_checkpoint_round_trip_keeps_arch_preprocessing_classes(tmp_path):
    model = fcnkit.create_model("fcn_resnet18_d16", num_classes=3, aux=True).eval()
    model.preprocessing = fcnkit.CAFFE_BGR
    model.classes = ["sky", "road", "car"]
    path = fcnkit.save_checkpoint(tmp_path / "run" / "last.pth", model, epoch=7)
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pth"]  # no temporary left behind
    loaded = fcnkit.load_checkpoint(path).eval()
    assert loaded.arch == {"name": "fcn_resnet18_d16", "num_classes": 3, "options": {"aux": True}}
    assert loaded.preprocessing == fcnkit.CAFFE_BGR and loaded.classes == ["sky", "road", "car"]
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(model(x)["out"], loaded(x)["out"])
    # the same file also works as `weights=` for create_model
    again = fcnkit.create_model("fcn_resnet18_d16", weights=path, aux=True)
    assert again.num_classes == 3 and again.preprocessing == fcnkit.CAFFE_BGR


def test_preprocessing_hand_worked():
    rgb = torch.tensor([[[255.0]], [[0.0]], [[51.0]]])  # one pixel, R=255 G=0 B=51
    caffe = fcnkit.CAFFE_BGR(rgb)
    assert torch.allclose(caffe.flatten(), torch.tensor([51 - 104.00698793, 0 - 116.66876762, 255 - 122.67891434]))
    tv = fcnkit.IMAGENET(rgb)
    expected = torch.tensor([(1.0 - 0.485) / 0.229, (0.0 - 0.456) / 0.224, (0.2 - 0.406) / 0.225])
    assert torch.allclose(tv.flatten(), expected, atol=1e-6)
    assert torch.allclose(fcnkit.CAFFE_BGR.invert(caffe), rgb, atol=1e-4)
    assert fcnkit.Preprocessing.from_dict(fcnkit.CAFFE_BGR.to_dict()) == fcnkit.CAFFE_BGR
