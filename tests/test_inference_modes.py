"""Test-time inference: multi-scale + flip and sliding windows, against whole-image and hand-built references."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fcnkit
from fcnkit.cli import main
from fcnkit.config import ConfigError, InferenceConfig, config_from_dict
from fcnkit.data import build_dataset
from fcnkit.engine.evaluate import evaluate
from fcnkit.inference import describe_inference, infer_logits
from fcnkit.inference.tta import _scaled_size
from synthetic_data import make_folder_dataset


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = fcnkit.create_model("fcn_resnet18_d16", num_classes=3).eval()
    with torch.no_grad():  # BN statistics and a head that make the classes differ across the image
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
        m.classifier[4].weight.normal_(0, 1.0)
    return m


class XRamp(nn.Module):
    """Logits that depend on the column: class 0 = x, class 1 = -x, so mirroring matters."""

    num_classes = 2

    def forward(self, x):
        b, _, h, w = x.shape
        col = torch.arange(w, dtype=torch.float32).expand(b, 1, h, w) + x[:, :1]
        return {"out": torch.cat([col, -col], 1)}


@torch.no_grad()
def test_single_scale_no_flip_is_whole_image_exactly(model):
    x = torch.randn(2, 3, 45, 61)
    whole = model(x)["out"]
    assert torch.equal(infer_logits(model, x, InferenceConfig(scales=[1.0], flip=False)), whole)
    assert torch.equal(infer_logits(model, x), whole)


@torch.no_grad()
def test_window_covering_the_image_is_whole_image_exactly(model):
    x = torch.randn(1, 3, 45, 61)
    whole = model(x)["out"]
    for crop in ([45, 61], [64, 64], [512]):
        cfg = InferenceConfig(mode="slide", crop_size=crop, stride=[10, 10])
        assert torch.equal(infer_logits(model, x, cfg), whole), crop


@torch.no_grad()
def test_sliding_windows_are_averaged_where_they_overlap(model):
    # 45x61 in 32x40 windows every 16x24: rows at 0, 13 (flush), columns at 0, 21 (flush)
    x = torch.randn(1, 3, 45, 61)
    total, count = torch.zeros(1, 3, 45, 61), torch.zeros(1, 1, 45, 61)
    for y0 in (0, 13):
        for x0 in (0, 21):
            total[..., y0 : y0 + 32, x0 : x0 + 40] += model(x[..., y0 : y0 + 32, x0 : x0 + 40])["out"]
            count[..., y0 : y0 + 32, x0 : x0 + 40] += 1
    assert count.min() == 1 and count.max() == 4
    got = infer_logits(model, x, InferenceConfig(mode="slide", crop_size=[32, 40], stride=[16, 24]))
    torch.testing.assert_close(got, total / count)


@torch.no_grad()
def test_fastfcn_padding_uses_the_normalised_black_pixel(model):
    x = torch.randn(1, 3, 30, 50)
    black = model.preprocessing(torch.zeros(1, 3, 1, 1, dtype=torch.uint8)).reshape(1, 3, 1, 1)
    padded = black.expand(1, 3, 64, 64).clone()
    padded[..., :30, :50] = x
    expected = model(padded)["out"][..., :30, :50]
    got = infer_logits(model, x, InferenceConfig(mode="slide", crop_size=[64], pad=True))
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, model(x)["out"])  # padding does change the border logits


@torch.no_grad()
def test_multi_scale_flip_is_the_mean_of_resized_and_mirrored_passes(model):
    x = torch.randn(1, 3, 40, 52)
    passes = []
    for s in (0.5, 1.25):
        xs = F.interpolate(x, size=(round(40 * s), round(52 * s)), mode="bilinear", align_corners=False)
        for flip in (False, True):
            out = model(xs.flip(-1) if flip else xs)["out"]
            out = out.flip(-1) if flip else out
            passes.append(F.interpolate(out, size=(40, 52), mode="bilinear", align_corners=False))
    expected = torch.stack(passes).mean(0)
    got = infer_logits(model, x, InferenceConfig(scales=[0.5, 1.25], flip=True))
    torch.testing.assert_close(got, expected)


def test_flip_mirrors_the_logits_back():
    x = torch.zeros(1, 3, 2, 5)
    out = infer_logits(XRamp(), x, InferenceConfig(flip=True))
    # columns 0..4 and, mirrored back, 4..0: the mean is 2 everywhere for class 0 and -2 for class 1
    assert torch.equal(out[0, 0], torch.full((2, 5), 2.0)) and torch.equal(out[0, 1], torch.full((2, 5), -2.0))


def test_predictor_tile_turns_whole_passes_into_windows(model):
    x = torch.randn(1, 3, 45, 61)
    flip_tiled = fcnkit.Predictor(model, tile=32, inference=InferenceConfig(flip=True), optimize=False)
    assert flip_tiled.inference == InferenceConfig(mode="slide", crop_size=[32, 32], stride=[21, 21], flip=True)
    explicit = InferenceConfig(mode="slide", crop_size=[40], stride=[20])
    assert fcnkit.Predictor(model, tile=32, inference=explicit, optimize=False).inference == explicit
    with torch.no_grad():
        torch.testing.assert_close(flip_tiled._logits(x), infer_logits(model, x, flip_tiled.inference))


def test_base_size_sets_the_long_side():
    assert _scaled_size(375, 500, 1.0, 520) == (390, 520)
    assert _scaled_size(500, 375, 0.5, 520) == (260, 195)
    assert _scaled_size(375, 500, 1.5, None) == (562, 750)  # round half to even: 562.5 -> 562
    assert describe_inference(InferenceConfig(scales=[0.5, 1.0], base_size=520, flip=True)) == (
        "whole image, scales 0.5,1 (base 520), flip"
    )


def test_config_validation():
    with pytest.raises(ConfigError, match=r"needs test\.crop_size"):
        config_from_dict({"test": {"mode": "slide"}})
    with pytest.raises(ConfigError, match=r"test\.mode must be"):
        config_from_dict({"test": {"mode": "tiles"}})
    with pytest.raises(ConfigError, match="positive factors"):
        config_from_dict({"test": {"scales": [0.0]}})


def test_evaluate_and_cli_with_test_time_options(model, tmp_path, capsys):
    data = make_folder_dataset(tmp_path / "data", n_train=1, n_val=3, size=(37, 45))
    val = build_dataset("folder", data, "val")
    plain = evaluate(model, val, batch_size=2)
    same = evaluate(model, val, batch_size=2, inference=InferenceConfig(mode="slide", crop_size=[64]))
    assert torch.equal(plain.matrix, same.matrix)
    tta = evaluate(model, val, inference=InferenceConfig(scales=[0.75, 1.0], flip=True))
    assert int(tta.matrix.sum()) == int(plain.matrix.sum())

    ckpt = fcnkit.save_checkpoint(tmp_path / "m.pth", model)
    args = ["eval", str(ckpt), "--data", "folder", "--root", str(data), "--split", "val", "--workers", "0"]
    assert main([*args, "--json", str(tmp_path / "a.json")]) == 0
    assert main([*args, "--scales", "0.75", "1.0", "--flip", "--json", str(tmp_path / "b.json")]) == 0
    printed = capsys.readouterr().out
    assert "whole image, scales 0.75,1, flip" in printed
    import json

    assert json.loads((tmp_path / "a.json").read_text())["miou"] == pytest.approx(plain.miou, abs=1e-12)
    assert json.loads((tmp_path / "b.json").read_text())["miou"] == pytest.approx(tta.miou, abs=1e-12)
