"""optimize_for_inference: BatchNorm folding and the other options keep the predictions of the eager model."""

import pytest
import torch
from torch import nn

import fcnkit
from fcnkit.inference.optimize import _fuse_conv_bn, fold_batchnorm, optimize_for_inference


def _randomise_bn(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=g) * 0.2 + 1)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return model.eval()


def test_fused_conv_equals_conv_then_bn_by_formula():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 4, 3, padding=1, bias=False), _randomise_bn(nn.Sequential(nn.BatchNorm2d(4)))[0]
    x = torch.randn(2, 3, 5, 6)
    with torch.no_grad():
        y = conv(x)
        # eval-mode BN written out: gamma * (y - mean) / sqrt(var + eps) + beta
        expected = (y - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
        expected = expected * bn.weight[:, None, None] + bn.bias[:, None, None]
        _fuse_conv_bn(conv, bn)
        torch.testing.assert_close(conv(x), expected, atol=1e-5, rtol=1e-5)


def test_fold_skips_a_conv_whose_output_is_used_twice():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # folding bn into conv would change the second use of y

    wrapper = nn.Module()
    wrapper.part = _randomise_bn(Twice())
    x = torch.randn(1, 3, 4, 4)
    with torch.no_grad():
        before = wrapper.part(x)
        fold_batchnorm(wrapper)
        assert isinstance(wrapper.part.bn, nn.BatchNorm2d)
        torch.testing.assert_close(wrapper.part(x), before)


@pytest.mark.parametrize(
    ("name", "options"),
    [("fcn_resnet18_d16", {"aux": True}), ("fcn8s_timm", {"backbone": "resnet18"}), ("psp_resnet50_jpu", {})],
)
def test_optimized_model_keeps_predictions_and_folds_every_bn(name, options):
    torch.manual_seed(0)
    model = _randomise_bn(fcnkit.create_model(name, num_classes=4, **options))
    if name.startswith("fcn8s"):  # zero-initialised score layers would make every logit 0
        with torch.no_grad():
            for p in model.classifier.parameters():
                p.normal_(0, 0.1)
    bn_before = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    fast = optimize_for_inference(model, check_size=(45, 61))
    assert sum(isinstance(m, nn.BatchNorm2d) for m in fast.modules()) == 0 < bn_before
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == bn_before  # the original is untouched
    x = torch.randn(2, 3, 53, 70)
    with torch.no_grad():
        expected = model(x)["out"]
        got = fast(x)["out"]
    assert set(fast(x)) == {"out"} and got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert (got.argmax(1) == expected.argmax(1)).float().mean() >= 0.999
    assert fast.preprocessing == model.preprocessing and fast.num_classes == 4
    assert fast.report.applied == ["fold_bn"] and fast.report.argmax_agreement == 1.0


def test_channels_last_is_exact_and_bf16_is_opt_in():
    model = _randomise_bn(fcnkit.create_model("fcn_resnet18_d16", num_classes=3))
    fast = optimize_for_inference(model, channels_last=True, check_size=(40, 48))
    assert fast.report.applied == ["fold_bn", "channels_last"] and fast.report.argmax_agreement >= 0.999
    # bf16 is not exact (random weights have near-ties), so it is only checked when asked to be
    half = optimize_for_inference(model, amp="bf16", check=False)
    assert half.report.applied == ["fold_bn", "autocast_bf16"]
    assert half(torch.randn(1, 3, 40, 48))["out"].dtype == torch.float32
    with pytest.raises(ValueError, match="amp must be"):
        optimize_for_inference(model, amp="int8")


def test_a_broken_optimisation_is_refused(monkeypatch):
    import fcnkit.inference.optimize as opt

    def bad_fuse(conv, bn):
        with torch.no_grad():
            conv.weight.mul_(-1.0)  # a folding bug

    monkeypatch.setattr(opt, "_fuse_conv_bn", bad_fuse)
    model = _randomise_bn(fcnkit.create_model("fcn_resnet18_d16", num_classes=3))
    with pytest.raises(RuntimeError, match="changed the predictions"):
        optimize_for_inference(model, check_size=(40, 48))
    # the Predictor falls back to the plain model with a warning
    with pytest.warns(UserWarning, match="unoptimised"):
        predictor = fcnkit.Predictor(model)
    assert predictor.model is not None and any(isinstance(m, nn.BatchNorm2d) for m in predictor.model.modules())


@pytest.mark.slow
def test_onnxruntime_backend_keeps_predictions_and_the_contract(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = _randomise_bn(fcnkit.create_model("fcn_resnet18_d8", num_classes=3))
    model.classes, model.palette = ["a", "b", "c"], [(0, 0, 0), (9, 9, 9), (99, 99, 99)]
    fast = optimize_for_inference(model, backend="onnxruntime", check_size=(40, 48), onnx_path=tmp_path / "m.onnx")
    assert fast.report.applied == ["fold_bn", "onnxruntime"] and fast.report.argmax_agreement >= 0.999
    assert (tmp_path / "m.onnx").stat().st_size > 1e6  # the weights (11 M parameters) are in the file
    assert fast.classes == ["a", "b", "c"] and fast.num_classes == 3 and fast.preprocessing == model.preprocessing
    # another size than the check's, odd in both directions: the graph follows the input
    x = torch.randn(2, 3, 37, 53)
    with torch.no_grad():
        expected = model(x)["out"]
    got = fast(x)["out"]
    assert got.dtype == torch.float32 and got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    # cache=False: a temporary file, removed once the session holds the graph
    before = set(tmp_path.parent.iterdir())
    fast = optimize_for_inference(model, backend="onnxruntime", check_size=(33, 41), cache=False)
    assert fast.report.argmax_agreement == 1.0 and fast.report.onnx_path is None
    assert set(tmp_path.parent.iterdir()) == before
    with pytest.raises(ValueError, match="takes no channels_last"):
        optimize_for_inference(model, backend="onnxruntime", channels_last=True)
    with pytest.raises(ValueError, match="backend must be"):
        optimize_for_inference(model, backend="tensorrt")


@pytest.mark.slow
def test_predictor_runs_an_onnx_runtime_model(tmp_path):
    """A parameter-less model (ONNX Runtime) is used as it is: nothing to fold, no check."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from fcnkit.export import OnnxRuntimeModel, export_onnx

    model = _randomise_bn(fcnkit.create_model("fcn_resnet18_d16", num_classes=3))
    export_onnx(model, tmp_path / "m.onnx", sample_size=(32, 48), verify=False)
    runtime = OnnxRuntimeModel(tmp_path / "m.onnx")
    predictor = fcnkit.Predictor(runtime)
    assert predictor.model is runtime
    rgb = torch.randint(0, 256, (3, 41, 57), dtype=torch.uint8).permute(1, 2, 0).numpy()
    labels = predictor.predict(rgb).label
    assert fcnkit.Predictor(str(tmp_path / "m.onnx")).model.num_classes == 3  # a .onnx path is read the same way
    with torch.no_grad():
        expected = model(model.preprocessing(torch.from_numpy(rgb).permute(2, 0, 1)[None]))["out"].argmax(1)[0]
    assert (torch.as_tensor(labels) == expected).float().mean() >= 0.999
