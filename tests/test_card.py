"""The model card: a checkpoint is a deployable model, and every command runs it the way it was measured.

A tiny run with an EMA and a recipe whose ``test:`` section flips and rescales is trained once; then eval, predict
(scored here with an independent confusion count), the serve API, Predictor and an ONNX export of it must give the
same mIoU, with the recipe's passes by default and with ``--tta none``.
"""

import io
import json

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import fcnkit
from fcnkit.apps.serve import Service, create_app
from fcnkit.card import ModelCard
from fcnkit.checkpoint import read_card
from fcnkit.cli import main
from fcnkit.config import InferenceConfig
from fcnkit.engine.train import train
from synthetic_data import make_folder_dataset
from test_serve import _ThreadServer
from test_train import tiny_config

PASSES = "test={flip: true, scales: [1.0, 1.5]}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = make_folder_dataset(tmp_path_factory.mktemp("card_data"), n_train=12, n_val=5)
    out = tmp_path_factory.mktemp("card_run") / "run"
    train(tiny_config(root, out, "ema_decay=0.9", "ema_warmup_steps=0", "pictures=0", PASSES))
    return root, out


def _miou_by_hand(pairs, num_classes=3, ignore=255):
    """Mean IoU from (ground truth, prediction) label arrays: a confusion count written out with numpy."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    for gt, pred in pairs:
        keep = gt != ignore
        matrix += np.bincount(gt[keep] * num_classes + pred[keep], minlength=num_classes**2).reshape(
            num_classes, num_classes
        )
    inter = np.diag(matrix).astype(float)
    union = matrix.sum(0) + matrix.sum(1) - inter
    with np.errstate(invalid="ignore"):
        return float(np.nanmean(inter / union))


def _passes_by_hand(model, rgb, scales=(1.0, 1.5), flip=True):
    """The recipe's passes written out: logits at each scale and mirrored, resized back, averaged."""
    x = model.preprocessing(rgb[None].float())
    h, w = x.shape[-2:]
    total = 0
    with torch.no_grad():
        for s in scales:
            xs = F.interpolate(x, size=(round(h * s), round(w * s)), mode="bilinear", align_corners=False)
            for mirrored in (False, True) if flip else (False,):
                out = model(xs.flip(-1) if mirrored else xs)["out"]
                out = out.flip(-1) if mirrored else out
                total = total + F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
    return total.argmax(1)[0]


def _passes(line):
    """Whether the first stderr line of a command says it runs the recipe's passes (or one pass)."""
    said = line.split("; passes ")[1]
    assert said.startswith(("whole image, scales 1,1.5, flip (the recipe's", "whole image (not the recipe's"))
    return said.startswith("whole image, scales")


def _val_pairs(root, predicted):
    stems = sorted(p.stem for p in (root / "masks" / "val").glob("*.png"))
    return [(np.asarray(Image.open(root / "masks" / "val" / f"{s}.png")).astype(np.int64), predicted(s)) for s in stems]


def test_best_pth_carries_the_evaluated_weights_and_the_recipes_passes(trained):
    _, out = trained
    best = torch.load(out / "best.pth", weights_only=True)
    last = torch.load(out / "last.pth", weights_only=True)
    card = read_card(best)
    assert card.weights == "ema" and card.test.flip and card.test.scales == [1.0, 1.5]
    assert card.classes == ("background", "box", "disc") and card.provenance["step"] == best["progress"]["step"]
    assert "optimizer" not in best and "ema" not in best  # a deployable model, not a resume point
    # last.pth: the raw weights with the EMA beside them; "auto" takes what was evaluated (the EMA)
    assert read_card(last).weights == "raw"
    ema = fcnkit.load_checkpoint(out / "last.pth")
    raw = fcnkit.load_checkpoint(out / "last.pth", weights="raw")
    assert ema.card.weights == "ema" and raw.card.weights == "raw"
    for k, v in ema.state_dict().items():
        assert torch.equal(v, last["ema"]["module"][k])
    assert all(torch.equal(v, last["state_dict"][k]) for k, v in raw.state_dict().items())
    assert any(not torch.equal(v, ema.state_dict()[k]) for k, v in raw.state_dict().items())
    with pytest.raises(fcnkit.errors.CheckpointError, match="holds only the EMA weights"):
        fcnkit.load_checkpoint(out / "best.pth", weights="raw")


def test_eval_predict_serve_predictor_and_onnx_give_one_miou(trained, tmp_path, capsys):
    root, out = trained
    best = out / "best.pth"
    model = fcnkit.load_checkpoint(best).eval()

    def read(s):
        return torch.from_numpy(np.array(Image.open(root / "images" / "val" / f"{s}.png").convert("RGB")))

    def by_hand(s, passes):
        rgb = read(s).permute(2, 0, 1)
        if passes:
            return _passes_by_hand(model, rgb).numpy()
        with torch.no_grad():
            return model(model.preprocessing(rgb[None].float()))["out"].argmax(1)[0].numpy()

    for tta, passes in (([], True), (["--tta", "none"], False)):
        expected = _miou_by_hand(_val_pairs(root, lambda s, p=passes: by_hand(s, p)))
        # eval
        js = tmp_path / f"eval{len(tta)}.json"
        assert main(["eval", str(best), "--workers", "0", "--json", str(js), *tta]) == 0
        err = capsys.readouterr().err
        first = err.splitlines()[0]
        assert first.startswith(f"fcnkit eval: {best}") and "weights ema" in first
        assert _passes(first) == passes
        assert json.loads(js.read_text())["miou"] == pytest.approx(expected, abs=1e-9)
        # predict, counted independently
        pred_dir = tmp_path / f"pred{len(tta)}"
        assert main(["predict", str(best), str(root / "images" / "val"), "--out", str(pred_dir), *tta]) == 0
        first = capsys.readouterr().err.splitlines()[0]
        assert first.startswith("fcnkit predict:") and _passes(first) == passes
        got = _miou_by_hand(_val_pairs(root, lambda s, d=pred_dir: np.asarray(Image.open(d / f"{s}.png"))))
        assert got == pytest.approx(expected, abs=1e-9)
        # Predictor
        predictor = fcnkit.Predictor(best, inference=None if passes else InferenceConfig())
        got = _miou_by_hand(_val_pairs(root, lambda s, p=predictor: p.predict(read(s).numpy()).label.numpy()))
        assert got == pytest.approx(expected, abs=1e-9)
        # the serve API (a live server: the bytes of each image file posted)
        server = _ThreadServer(create_app(Service(predictor)))
        try:
            with httpx.Client(base_url=server.url, timeout=60) as client:
                assert ("flip" in client.get("/api/info").json()["passes"]) == passes

                def posted(s, c=client):
                    data = (root / "images" / "val" / f"{s}.png").read_bytes()
                    r = c.post("/api/predict", files={"image": (f"{s}.png", data, "image/png")})
                    return np.asarray(Image.open(io.BytesIO(r.content)))

                assert _miou_by_hand(_val_pairs(root, posted)) == pytest.approx(expected, abs=1e-9)
        finally:
            server.stop()


@pytest.mark.slow
def test_onnx_export_records_the_passes_and_predict_applies_them(trained, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    root, out = trained
    onnx_file = tmp_path / "model.onnx"
    assert main(["export", str(out / "best.pth"), "--out", str(onnx_file), "--size", "40x48"]) == 0
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith("fcnkit export:") and "weights ema" in first and "flip" in first
    runtime = fcnkit.Predictor(onnx_file, device="cpu")
    assert runtime.card.test.flip and runtime.card.test.scales == [1.0, 1.5] and runtime.card.weights == "ema"
    torch_predictor = fcnkit.Predictor(out / "best.pth", backend="torch")  # the reference: no second export
    for s in sorted(p.stem for p in (root / "images" / "val").glob("*.png")):
        image = np.asarray(Image.open(root / "images" / "val" / f"{s}.png").convert("RGB"))
        a, b = runtime.predict(image).label, torch_predictor.predict(image).label
        assert (a == b).float().mean() > 0.999
    # --tta none at export writes one pass into the file
    plain = tmp_path / "plain.onnx"
    assert main(["export", str(out / "best.pth"), "--out", str(plain), "--tta", "none", "--no-verify"]) == 0
    assert fcnkit.Predictor(plain, device="cpu").inference == InferenceConfig()


def test_weights_flag_refuses_what_a_file_does_not_hold(trained, tmp_path, capsys):
    _, out = trained
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(image)
    assert main(["predict", str(out / "best.pth"), str(image), "--out", str(tmp_path / "o"), "--weights", "raw"]) == 2
    assert "holds only the EMA weights" in capsys.readouterr().err
    assert main(["predict", str(out / "last.pth"), str(image), "--out", str(tmp_path / "r"), "--weights", "raw"]) == 0
    assert "weights raw" in capsys.readouterr().err.splitlines()[0]


def test_card_round_trips_and_reads_version_1_checkpoints(tmp_path):
    model = fcnkit.create_model("fcn8s_timm", num_classes=3, backbone="regnetx_002")
    model.classes = ["a", "b", "c"]
    model.card = model.card.replace(test=InferenceConfig(flip=True), provenance={"step": 7})
    assert ModelCard.from_json(model.card.to_json()) == model.card
    # a version 1 file: loose entries and the run's config, no card
    old = {
        "format": "fcnkit",
        "version": 1,
        "arch": model.arch,
        "preprocessing": model.preprocessing.to_dict(),
        "classes": ["a", "b", "c"],
        "palette": None,
        "state_dict": model.state_dict(),
        "config": {"test": {"scales": [1.0, 2.0]}},
    }
    torch.save(old, tmp_path / "old.pth")
    loaded = fcnkit.load_checkpoint(tmp_path / "old.pth")
    assert loaded.classes == ["a", "b", "c"] and loaded.card.test.scales == [1.0, 2.0]
