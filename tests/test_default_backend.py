"""The default inference backend, in the fast tier.

conftest.py sets ``FCNKIT_BACKEND=torch`` for every test (an export per freshly made model would cost seconds
each), so without this file the backend users get by default, ONNX Runtime on the CPU, would run in slow tests
only. Here the variable is unset: ``Predictor`` and ``fcnkit predict`` choose ONNX Runtime themselves, and their
labels are those of the plain PyTorch module computed here.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

import fcnkit
from conftest import randomize_
from fcnkit.cli import main


def test_default_backend_is_onnx_runtime_and_predicts_pytorchs_labels(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("FCNKIT_BACKEND")
    # timm's smallest ResNet (BatchNorm, folded before the export): the export still takes seconds
    model = randomize_(fcnkit.create_model("fcn8s_timm", backbone="test_resnet", num_classes=3), seed=3).eval()
    ckpt = fcnkit.save_checkpoint(tmp_path / "model.pth", model)
    rgb = np.random.default_rng(0).integers(0, 256, (45, 61, 3), dtype=np.uint8)  # odd sizes
    image = tmp_path / "frame.png"
    Image.fromarray(rgb).save(image)

    default = fcnkit.Predictor(ckpt)
    report = default.model.report
    assert report.backend == "onnxruntime" and "onnxruntime" in report.applied  # not a silent fallback to torch
    labels = default.predict(image).label
    torch_labels = fcnkit.Predictor(ckpt, backend="torch").predict(image).label

    # the plain module on pixels normalised here
    p = model.preprocessing
    assert p.channel_order == "RGB"
    mean, std = torch.tensor(p.mean).view(3, 1, 1), torch.tensor(p.std).view(3, 1, 1)
    x = (torch.from_numpy(rgb).permute(2, 0, 1).float() * p.scale - mean) / std
    with torch.no_grad():
        logits = model(x[None])["out"][0]
    top = logits.topk(2, dim=0).values
    clear = top[0] - top[1] > 1e-3  # pixels whose two best classes are further apart than float32 rounding
    want = logits.argmax(0)
    assert clear.float().mean() > 0.95 and len(want.unique()) >= 2
    assert labels.shape == torch_labels.shape == (45, 61)
    assert torch.equal(labels[clear], want[clear]) and torch.equal(torch_labels[clear], want[clear])

    # `fcnkit predict` with the default backend: ONNX Runtime again, on the export the Predictor cached
    assert main(["predict", str(ckpt), str(image), "--out", str(tmp_path / "out"), "--no-overlay"]) == 0
    err = capsys.readouterr().err
    assert "backend: onnxruntime" in err and "cached export found" in err, err
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "frame.png")), labels.numpy())
