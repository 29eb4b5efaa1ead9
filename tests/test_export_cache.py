"""The on-disk cache of ONNX exports: keys, hits, rebuilds of bad entries, one writer at a time, and the
``auto`` backend that uses it (Predictor, ``fcnkit eval`` / ``predict``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import fcnkit
from fcnkit.errors import ConfigError
from fcnkit.export.cache import cached_onnx, export_key, weights_digest
from fcnkit.inference.optimize import describe_backend, optimize_for_inference, resolve_backend
from test_optimize import _randomise_bn

LAYOUT = {"dynamic": True, "opset": None}


class Counter:
    """A stand-in export that writes known bytes and counts its calls."""

    def __init__(self, payload: bytes = b"onnx bytes") -> None:
        self.calls, self.payload = 0, payload

    def __call__(self, model: nn.Module, path: Path) -> None:
        self.calls += 1
        path.write_bytes(self.payload + str(self.calls).encode())


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))


def test_digest_follows_every_weight_and_the_key_the_layout(tmp_path):
    a, b = _model(0), _model(0)
    assert weights_digest(a) == weights_digest(b)
    with torch.no_grad():
        b[1].running_var[2] += 1e-6  # a buffer, not a parameter: still part of what is exported
    assert weights_digest(a) != weights_digest(b)
    assert export_key(a, LAYOUT) == export_key(_model(0), LAYOUT)
    assert export_key(a, LAYOUT) != export_key(a, {**LAYOUT, "opset": 18})
    a.classes = ["x", "y", "z", "w"]  # written into the file's metadata, so part of the key
    assert export_key(a, LAYOUT) != export_key(_model(0), LAYOUT)


def test_second_call_finds_the_entry_and_bad_entries_are_rebuilt(tmp_path):
    export, model = Counter(), _model()
    first = cached_onnx(model, export, LAYOUT, folder=tmp_path)
    assert not first.hit and export.calls == 1 and first.path.read_bytes() == b"onnx bytes1"
    record = json.loads(first.path.with_suffix(".json").read_text())
    assert record["size"] == len(b"onnx bytes1") and len(record["sha256"]) == 64
    second = cached_onnx(model, export, LAYOUT, folder=tmp_path)
    assert second.hit and second.path == first.path and export.calls == 1
    # another model: another entry
    other = cached_onnx(_model(1), export, LAYOUT, folder=tmp_path)
    assert not other.hit and other.path != first.path and export.calls == 2

    first.path.write_bytes(b"onnx bytes1"[:-1] + b"X")  # same size, other bytes
    with pytest.warns(UserWarning, match="SHA-256 does not match"):
        again = cached_onnx(model, export, LAYOUT, folder=tmp_path)
    assert not again.hit and export.calls == 3 and again.rebuilt_because
    first.path.write_bytes(b"trunc")
    with pytest.warns(UserWarning, match="the file has 5 bytes"):
        cached_onnx(model, export, LAYOUT, folder=tmp_path)
    first.path.with_suffix(".json").unlink()
    with pytest.warns(UserWarning, match="record is missing"):
        cached_onnx(model, export, LAYOUT, folder=tmp_path)
    assert export.calls == 5

    def refuse(path):
        raise RuntimeError("InvalidProtobuf")

    with pytest.warns(UserWarning, match="does not load .*InvalidProtobuf"):
        cached_onnx(model, export, LAYOUT, folder=tmp_path, validate=refuse)
    assert export.calls == 6
    # nothing but entries and their lock files is left in the folder (the temporary ones are gone)
    assert {p.suffix for p in tmp_path.iterdir()} == {".onnx", ".json", ".lock"}


WRITER = """
import sys, time, torch
from pathlib import Path
from torch import nn
from fcnkit.export.cache import cached_onnx

def export(model, path):
    with open(sys.argv[2], "a") as log:
        log.write("export\\n")
    time.sleep(1.5)  # long enough for the other process to arrive meanwhile
    path.write_bytes(b"the graph")

torch.manual_seed(0)
entry = cached_onnx(nn.Conv2d(3, 4, 3), export, {"dynamic": True}, folder=Path(sys.argv[1]))
print(entry.hit, entry.path)
"""


def test_two_processes_at_once_export_once(tmp_path):
    script, log = tmp_path / "writer.py", tmp_path / "exports.log"
    script.write_text(WRITER)
    procs = [
        subprocess.Popen([sys.executable, str(script), str(tmp_path / "cache"), str(log)], stdout=subprocess.PIPE)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120)[0].decode().split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert log.read_text() == "export\n"
    assert sorted(o[0] for o in outs) == ["False", "True"] and outs[0][1] == outs[1][1]
    assert Path(outs[0][1]).read_bytes() == b"the graph"


def test_auto_backend_choice(monkeypatch):
    import fcnkit.inference.optimize as opt

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv("FCNKIT_BACKEND")
    monkeypatch.setattr(opt, "onnxruntime_available", lambda: True)
    assert resolve_backend("auto", cpu) == "onnxruntime" and resolve_backend("auto", cuda) == "torch"
    assert resolve_backend("torch", cpu) == "torch"
    monkeypatch.setattr(opt, "onnxruntime_available", lambda: False)
    assert resolve_backend("auto", cpu) == "torch"
    monkeypatch.setenv("FCNKIT_BACKEND", "onnxruntime")
    assert resolve_backend("auto", cpu) == "onnxruntime" and resolve_backend("torch", cpu) == "torch"
    monkeypatch.setenv("FCNKIT_BACKEND", "tensorrt")
    with pytest.raises(ConfigError, match="FCNKIT_BACKEND must be one of"):
        resolve_backend("auto", cpu)


def _tiny_fcn() -> nn.Module:
    return _randomise_bn(fcnkit.create_model("fcn_resnet18_d8", num_classes=3))


@pytest.mark.slow
def test_onnxruntime_reuses_its_export_and_rebuilds_a_corrupt_one(monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    monkeypatch.delenv("FCNKIT_BACKEND")
    model = _tiny_fcn()
    x = torch.randn(1, 3, 45, 61)
    with torch.no_grad():
        expected = model(x)["out"]
    first = optimize_for_inference(model, check_size=(40, 48))  # auto: ONNX Runtime on this CPU
    assert first.report.backend == "onnxruntime" and first.report.cache_hit is False
    second = optimize_for_inference(model, check_size=(40, 48))
    assert second.report.cache_hit is True and second.report.onnx_path == first.report.onnx_path
    assert second.report.export_seconds < first.report.export_seconds
    assert "cached export found" in describe_backend(second) and "exported in" in describe_backend(first)
    torch.testing.assert_close(second(x)["out"], expected, atol=1e-4, rtol=1e-4)
    # a file cut short (a crash mid-copy, a full disk) is noticed and rebuilt, never run
    path = Path(first.report.onnx_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.warns(UserWarning, match="rebuilding the cached export"):
        third = optimize_for_inference(model, check_size=(40, 48))
    assert third.report.cache_hit is False
    torch.testing.assert_close(third(x)["out"], expected, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_a_model_onnx_cannot_take_runs_on_pytorch_with_a_warning(monkeypatch):
    import fcnkit.export
    from fcnkit.errors import ExportError

    def refuse(model, path, **kwargs):  # what an exporter says of an operator it has no translation for
        raise ExportError("aten::unsupported_op has no ONNX translation")

    monkeypatch.delenv("FCNKIT_BACKEND")
    monkeypatch.setattr(fcnkit.export, "export_onnx", refuse)
    model = _tiny_fcn()
    with pytest.warns(UserWarning, match="ONNX Runtime cannot run this model .*unsupported_op"):
        predictor = fcnkit.Predictor(model)
    assert describe_backend(predictor.model).startswith("torch (fold_bn)")
    x = torch.randn(1, 3, 40, 48)
    with torch.no_grad():
        torch.testing.assert_close(predictor.model(x)["out"], model(x)["out"], atol=1e-3, rtol=1e-4)
    with pytest.raises(ExportError, match="unsupported_op"):  # asked for explicitly, the error is raised
        optimize_for_inference(model, backend="onnxruntime")


@pytest.mark.slow
def test_second_predict_of_a_checkpoint_does_not_export_again(tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from PIL import Image

    from fcnkit.cli import main

    monkeypatch.delenv("FCNKIT_BACKEND")
    ckpt = fcnkit.save_checkpoint(tmp_path / "model.pth", _tiny_fcn())
    image = tmp_path / "frame.png"
    Image.fromarray((torch.rand(40, 56, 3) * 255).byte().numpy()).save(image)
    # two commands: a new Predictor each, sharing only the cache folder, as two processes would
    assert main(["predict", str(ckpt), str(image), "--out", str(tmp_path / "a")]) == 0
    first = capsys.readouterr().err
    assert main(["predict", str(ckpt), str(image), "--out", str(tmp_path / "b")]) == 0
    second = capsys.readouterr().err
    assert "backend onnxruntime" in first and "exported in" in first
    assert "cached export found in" in second
    assert f"{os.environ['FCNKIT_CACHE']}/onnx/" in second  # the documented place
    a = np.asarray(Image.open(tmp_path / "a" / "frame.png"))
    b = np.asarray(Image.open(tmp_path / "b" / "frame.png"))
    assert np.array_equal(a, b)


@pytest.mark.slow
def test_openvino_backend_runs_the_cached_export_exactly(monkeypatch):
    pytest.importorskip("openvino")
    pytest.importorskip("onnxscript")
    from fcnkit.export.openvino import OpenVINOModel

    model = _tiny_fcn()
    model.classes = ["a", "b", "c"]
    x = torch.randn(2, 3, 37, 53)  # a batch, odd sizes: the compiled graph keeps its dynamic axes
    with torch.no_grad():
        expected = model(x)["out"]
    fast = optimize_for_inference(model, backend="openvino", check_size=(40, 48))
    assert fast.report.applied == ["fold_bn", "openvino"] and fast.report.argmax_agreement == 1.0
    assert isinstance(fast.model, OpenVINOModel) and fast.model.classes == ["a", "b", "c"]
    torch.testing.assert_close(fast(x)["out"], expected, atol=1e-4, rtol=1e-4)
    # the same cache entry as ONNX Runtime's: one export serves both
    monkeypatch.delenv("FCNKIT_BACKEND")
    assert optimize_for_inference(model, backend="onnxruntime", check_size=(40, 48)).report.cache_hit is True
