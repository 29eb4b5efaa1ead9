"""ONNX export: ONNX Runtime against PyTorch at the export size and other sizes, metadata, Predictor, CLI."""

import argparse
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

import fcnkit  # noqa: E402
from conftest import random_model, randomize_  # noqa: E402
from fcnkit.cli.export import add_parsers as add_export_parser  # noqa: E402
from fcnkit.cli.export import cmd_export  # noqa: E402
from fcnkit.export import (  # noqa: E402
    ExportError,
    ExportVerificationError,
    OnnxRuntimeModel,
    export_onnx,
    require_onnx,
    verify_onnx,
)
from fcnkit.inference import infer_logits  # noqa: E402
from fcnkit.preprocessing import Preprocessing  # noqa: E402

CLASSES = ["background", "circle", "square", "triangle"]
PALETTE = [(0, 0, 0), (200, 30, 30), (30, 200, 30), (30, 30, 200)]
# Not the model's default, so the round trip is seen to carry it.
BGR_255 = Preprocessing("BGR", 1.0, (101.0, 112.0, 123.0), (51.0, 62.0, 73.0))


def _raw_run(path, x: torch.Tensor) -> np.ndarray:
    """ONNX Runtime called directly, without fcnkit's wrapper."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["out"], {"input": x.numpy()})[0]


def _tolerance(reference: torch.Tensor) -> float:
    return 1e-4 + 1e-4 * float(reference.abs().max())


@pytest.fixture(scope="module")
def vgg(tmp_path_factory):
    """FCN-8s (pad 100, ceil pools, crops 5/9/31), random weights and non-zero score layers, exported once."""
    model = random_model(lambda: fcnkit.create_model("fcn8s_vgg16", num_classes=5), seed=1).eval()
    path = tmp_path_factory.mktemp("vgg") / "fcn8s.onnx"
    report = export_onnx(model, path, sample_size=(64, 80), sizes_to_verify=[(64, 80), (45, 131)])
    return model, path, report


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    """Dilated ResNet-18 FCN with an aux head (dropped from the export), random BN statistics, classes."""
    model = randomize_(fcnkit.create_model("fcn_resnet18_d8", num_classes=4, aux=True), seed=2).eval()
    model.classes, model.palette, model.preprocessing = CLASSES, PALETTE, BGR_255
    path = tmp_path_factory.mktemp("resnet") / "resnet.onnx"
    report = export_onnx(model, path, sample_size=(48, 64), sizes_to_verify=[(48, 64), (37, 91)])
    return model, path, report


@pytest.mark.parametrize("name", [pytest.param("vgg", marks=pytest.mark.slow), "resnet"])
def test_parity_at_export_size_and_odd_size(name, request):
    _, _, report = request.getfixturevalue(name)
    assert [c.size for c in report.checks] == ([(64, 80), (45, 131)] if name == "vgg" else [(48, 64), (37, 91)])
    for check in report.checks:
        assert check.max_abs_diff <= 1e-4 + 1e-4 * check.max_abs_logit and check.argmax_agreement >= 0.999
        assert check.max_abs_logit > 0.05  # random non-zero score layers: the logits say something


def test_dynamic_batch_with_plain_onnxruntime(resnet):
    """Independently of export_onnx's own check: ONNX Runtime called directly, batch 2, a third size."""
    model, path, _ = resnet
    x = torch.randn(2, 3, 33, 47, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(x)["out"]
    got = torch.from_numpy(_raw_run(path, x))
    assert got.shape == expected.shape == (2, 4, 33, 47)
    assert (got - expected).abs().max() <= _tolerance(expected)
    assert (got.argmax(1) == expected.argmax(1)).float().mean() >= 0.999


@pytest.mark.parametrize("name", [pytest.param("vgg", marks=pytest.mark.slow), "resnet"])
def test_graph_has_one_dynamic_input_and_only_out(name, request):
    _, path, report = request.getfixturevalue(name)
    graph = onnx.load(str(path), load_external_data=False).graph
    assert [i.name for i in graph.input] == ["input"] and [o.name for o in graph.output] == ["out"]
    dims = graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, "height", "width"]
    assert not [i.name for i in graph.initializer if "aux" in i.name]  # the aux head is pruned
    assert report.opset >= 16 and report.dynamic


def test_metadata_round_trip(resnet):
    model, path, _ = resnet
    # read with onnx, not with fcnkit's reader
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["fcnkit.classes"]) == CLASSES
    assert json.loads(props["fcnkit.preprocessing"]) == BGR_255.to_dict()
    assert json.loads(props["fcnkit.arch"])["name"] == "fcn_resnet18_d8"
    assert props["fcnkit.num_classes"] == "4"

    loaded = OnnxRuntimeModel(path)
    assert loaded.preprocessing == BGR_255
    assert (loaded.num_classes, loaded.classes, loaded.palette) == (4, CLASSES, PALETTE)
    assert loaded.arch == model.arch
    assert loaded.to("cpu").eval() is loaded and not list(loaded.parameters())


def test_runtime_options_and_contract(resnet):
    model, path, _ = resnet
    x = torch.randn(1, 3, 29, 41, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = model(x)["out"]
    for options in ({"intra_op_threads": 1, "graph_optimization": "disable"}, {"graph_optimization": "basic"}):
        out = OnnxRuntimeModel(path, **options)(x)
        assert set(out) == {"out"} and out["out"].dtype == torch.float32
        assert (out["out"] - expected).abs().max() <= _tolerance(expected)
    with pytest.raises(ValueError, match="graph_optimization"):
        OnnxRuntimeModel(path, graph_optimization="max")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert OnnxRuntimeModel(session).classes == CLASSES


def test_predictor_runs_the_onnx_model(resnet):
    """fcnkit.Predictor on the ONNX file, whole images and sliding windows, gives the torch model's labels."""
    model, path, _ = resnet
    rgb = torch.randint(0, 256, (2, 3, 53, 75), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    x = BGR_255(rgb)  # the preprocessing the Predictor must have read from the file
    for tile in (None, 32):
        predictor = fcnkit.Predictor(OnnxRuntimeModel(path), device="cpu", tile=tile)
        with torch.no_grad():
            expected = infer_logits(model, x, predictor.inference, num_classes=4).argmax(1)
        got = predictor.predict_tensor(rgb, probs=True)
        for e, g in zip(expected, got, strict=True):
            assert g.label.shape == (53, 75) and g.probs.shape == (4, 53, 75)
            assert (e == g.label).float().mean() >= 0.999, tile


def test_verify_raises_on_a_tampered_weight(resnet, tmp_path):
    model, path, _ = resnet
    proto = onnx.load(str(path))
    weight = next(i for i in proto.graph.initializer if i.name.endswith("classifier.4.weight"))
    array = onnx.numpy_helper.to_array(weight)
    weight.CopyFrom(onnx.numpy_helper.from_array(array + 0.5 * np.abs(array).max(), weight.name))
    tampered = tmp_path / "tampered.onnx"
    onnx.save(proto, str(tampered))
    with pytest.raises(ExportVerificationError, match="differs from PyTorch's"):
        verify_onnx(model, tampered, [(40, 56)])
    # the untouched file passes at the same size, and fails a tolerance no float computation meets
    assert verify_onnx(model, path, [(40, 56)])[0].argmax_agreement >= 0.999
    with pytest.raises(ExportVerificationError, match="max \\|logit diff\\|"):
        verify_onnx(model, path, [(40, 56)], atol=1e-12, rtol=0.0)


class _TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 3, stride=2, padding=1)
        self.num_classes = 2

    def forward(self, x):
        return {"out": F.interpolate(self.conv(x), size=x.shape[-2:], mode="bilinear"), "aux": x}


@pytest.mark.slow
def test_static_export_and_opset_checks(tmp_path):
    model = _TinyNet().eval()
    report = export_onnx(model, tmp_path / "static.onnx", sample_size=(20, 28), batch=2, dynamic=False, opset=18)
    dims = onnx.load(str(report.path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [2, 3, 20, 28] and report.opset == 18
    assert [c.size for c in report.checks] == [(20, 28)]
    # a graph that cannot follow the input size is reported, not passed: here the fixed input shape
    with pytest.raises(ExportVerificationError, match="failed on a 21x29 input"):
        verify_onnx(model, report.path, [(21, 29)], batch=2)
    with pytest.raises(ValueError, match="static"):
        export_onnx(model, tmp_path / "x.onnx", dynamic=False, sizes_to_verify=[(9, 9)])
    with pytest.raises(ExportError, match="opset 13"):  # the version converter cannot go below 16
        export_onnx(model, tmp_path / "old.onnx", sample_size=(20, 28), opset=13)


def test_missing_optional_dependency_says_what_to_install():
    with pytest.raises(ImportError, match=r"pip install 'fcnkit\[onnx\]'"):
        require_onnx("onnxruntime_that_does_not_exist")


@pytest.mark.slow
def test_cli_exports_a_checkpoint(resnet, tmp_path, capsys):
    model, _, _ = resnet
    ckpt = fcnkit.save_checkpoint(tmp_path / "best.pth", model)
    parser = argparse.ArgumentParser()
    add_export_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "cli" / "model.onnx"
    args = parser.parse_args(["export", str(ckpt), "--out", str(out), "--size", "40x48"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "opset" in printed and "argmax agreement" in printed
    assert all(size in printed for size in ("40x48", "31x61", "51x37"))  # the export size and two odd ones
    assert OnnxRuntimeModel(out).classes == CLASSES

    # --num-classes belongs to a bare model name (random weights); a checkpoint brings its own
    args = parser.parse_args(["export", str(ckpt), "--out", str(out), "--num-classes", "3"])
    with pytest.raises(ValueError, match="--num-classes"):
        cmd_export(args)


def test_cli_bare_model_name_gets_random_weights(tmp_path, monkeypatch, capsys):
    seen = {}

    def fake_export(model, path, **kwargs):  # the options as cmd_export passes them, without exporting
        seen.update(model=model, path=path, **kwargs)
        return SimpleNamespace(format=lambda: "report")

    monkeypatch.setattr("fcnkit.cli.export.export_onnx", fake_export)
    parser = argparse.ArgumentParser()
    add_export_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["export", "fcn_resnet18_d8", "--out", str(tmp_path / "m.onnx"), "--num-classes", "3",
                              "--static", "--no-verify", "--opset", "18", "--batch", "2"])  # fmt: skip
    assert cmd_export(args) == 0
    printed = capsys.readouterr().out
    assert seen["model"].num_classes == 3 and "random weights" in printed and "report" in printed
    assert (seen["dynamic"], seen["verify"], seen["opset"], seen["batch"]) == (False, False, 18, 2)


@pytest.mark.slow
def test_image_standardisation_exports_as_instance_normalization(tmp_path):
    """``input_norm="image"`` becomes one InstanceNormalization node; ONNX Runtime then gives the same logits,
    for an image and for a darker copy of it, as PyTorch does at a size other than the traced one."""
    model = randomize_(
        fcnkit.create_model("fcn8s_timm", backbone="regnetx_002", num_classes=3, input_norm="image"), seed=4
    ).eval()
    path = tmp_path / "standardised.onnx"
    export_onnx(model, path, sample_size=(48, 64), verify=False)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("InstanceNormalization") == 1
    x = torch.randn(1, 3, 40, 72, generator=torch.Generator().manual_seed(5))
    for image in (x, 0.5 * x - 1.0):
        with torch.no_grad():
            expected = model(image)["out"]
        got = torch.from_numpy(_raw_run(path, image))
        assert expected.abs().max() > 0.05 and (got - expected).abs().max() <= _tolerance(expected)


def test_labels_output_is_the_arg_max_of_the_logits(resnet, tmp_path):
    """add_labels_output appends ArgMax + Cast: uint8 labels equal to the arg-max of the file's own logits (ties go
    to the first class, as torch's), and the Predictor takes them instead of the logits for one plain pass."""
    import shutil

    from fcnkit.export import add_labels_output

    model, path, _ = resnet
    labelled = tmp_path / "labelled.onnx"
    shutil.copy(path, labelled)
    add_labels_output(labelled)
    add_labels_output(labelled)  # a second call changes nothing
    session = ort.InferenceSession(str(labelled), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["out", "labels"]
    x = torch.randn(2, 3, 41, 57, generator=torch.Generator().manual_seed(3))
    logits, labels = session.run(["out", "labels"], {"input": x.numpy()})
    assert labels.dtype == np.uint8 and labels.shape == (2, 41, 57)
    assert np.array_equal(labels, torch.from_numpy(logits).argmax(1).numpy())
    # all logits equal: every pixel is class 0, the first largest
    flat = torch.zeros(1, 3, 1, 1)
    tie = ort.InferenceSession(_tie_model(tmp_path / "tie.onnx"), providers=["CPUExecutionProvider"])
    assert tie.run(["labels"], {"input": flat.numpy()})[0].tolist() == [[[0]]]

    runtime = OnnxRuntimeModel(labelled)
    from fcnkit.config import InferenceConfig

    predictor = fcnkit.Predictor(runtime, device="cpu", inference=InferenceConfig())
    rgb = torch.randint(0, 256, (1, 3, 53, 75), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    calls = []
    inside = runtime.labels
    runtime.labels = lambda t: calls.append(t.shape) or inside(t)
    got = predictor.predict_labels(rgb)
    assert calls == [(1, 3, 53, 75)] and got.dtype == torch.uint8
    with torch.no_grad():  # the torch model's own arg-max, up to float rounding between the runtimes
        assert (got == model(BGR_255(rgb))["out"].argmax(1)).float().mean() >= 0.999
    assert OnnxRuntimeModel(path).labels(BGR_255(rgb)) is None  # a file without the output


def _tie_model(path):
    """An ONNX graph whose logits are three equal zeros per pixel, with the labels output added."""
    import onnx
    from onnx import TensorProto, helper

    from fcnkit.export import add_labels_output

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["b", 3, "h", "w"])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", 3, "h", "w"])
    node = helper.make_node("Mul", ["input", "zero"], ["out"])
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    graph = helper.make_graph([node], "tie", [x], [out], initializer=[zero])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    add_labels_output(path)
    return str(path)
