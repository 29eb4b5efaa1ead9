"""Prediction: Predictor, sliding windows, and `fcnkit predict` on a folder with a corrupt file."""

import numpy as np
import torch
from PIL import Image

import fcnkit
from fcnkit.cli import main
from fcnkit.inference import Predictor, sliding_window_logits
from synthetic_data import make_folder_dataset


def _checkpoint(tmp_path, num_classes=3):
    torch.manual_seed(0)
    model = fcnkit.create_model("fcn_resnet18_d16", num_classes=num_classes).eval()
    with torch.no_grad():  # a non-trivial head so that different pixels get different classes
        model.classifier[4].weight.normal_(0, 1.0)
        model.classifier[4].bias.copy_(torch.tensor([0.5, 0.0, -0.5]))
    model.classes = ["background", "box", "disc"]
    model.palette = [(0, 0, 0), (200, 40, 40), (40, 40, 200)]
    return model, fcnkit.save_checkpoint(tmp_path / "model.pth", model)


def test_predict_folder_skips_corrupt_file_and_label_png_equals_argmax(tmp_path, capsys):
    data = make_folder_dataset(tmp_path / "data", n_train=3, n_val=0, size=(37, 53))
    images = data / "images" / "train"
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    model, ckpt = _checkpoint(tmp_path)
    out = tmp_path / "out"
    assert main(["predict", str(ckpt), str(images), "--out", str(out), "--probs"]) == 1
    captured = capsys.readouterr()
    assert "broken.png" in captured.err and "wrote 3 of 4 predictions" in captured.out
    assert not (out / "broken.png").exists()
    for src in sorted(images.glob("s*.png")):
        label = np.array(Image.open(out / src.name))
        assert Image.open(out / src.name).mode == "P"
        rgb = torch.from_numpy(np.array(Image.open(src).convert("RGB"))).permute(2, 0, 1)
        with torch.no_grad():
            expected = model(model.preprocessing(rgb[None]))["out"].argmax(1)[0].numpy()
        assert label.shape == (37, 53) and np.array_equal(label, expected)
        overlay = Image.open(out / f"{src.stem}_overlay.jpg")
        assert overlay.size == (53, 37) and overlay.mode == "RGB"
        probs = np.load(out / f"{src.stem}_probs.npy")
        assert probs.shape == (3, 37, 53) and np.allclose(probs.sum(0), 1, atol=1e-2)


def test_fast_label_path_writes_the_same_files_as_the_probability_path(tmp_path):
    """Without --probs the labels come from the arg-max inside the ONNX graph as uint8 and are written at a fast zlib
    level: the PNGs hold the same values as with --probs (logits, then arg-max in torch) and as the eager model's
    arg-max; the overlay is the JPEG of the float blend of those labels' colours."""
    import io

    from fcnkit.visualize import overlay

    data = make_folder_dataset(tmp_path / "data", n_train=4, n_val=0, size=(40, 56))
    images = data / "images" / "train"
    model, ckpt = _checkpoint(tmp_path)
    assert main(["predict", str(ckpt), str(images), "--out", str(tmp_path / "fast")]) == 0
    assert main(["predict", str(ckpt), str(images), "--out", str(tmp_path / "probs"), "--probs"]) == 0
    for src in sorted(images.glob("*.png")):
        fast = np.array(Image.open(tmp_path / "fast" / src.name))
        assert np.array_equal(fast, np.array(Image.open(tmp_path / "probs" / src.name)))
        rgb = np.array(Image.open(src).convert("RGB"))
        with torch.no_grad():
            x = model.preprocessing(torch.from_numpy(rgb).permute(2, 0, 1)[None])
            assert np.array_equal(fast, model(x)["out"].argmax(1)[0].numpy())
        # the overlay: the same bytes as the float blend of overlay(), so the same JPEG at the same quality
        reference = io.BytesIO()
        overlay(rgb, fast, model.palette, alpha=0.5).save(reference, format="JPEG", quality=92)
        written = np.array(Image.open(tmp_path / "fast" / f"{src.stem}_overlay.jpg"))
        assert np.array_equal(written, np.array(Image.open(reference)))


def test_predictor_handles_modes_and_batches(tmp_path):
    _, ckpt = _checkpoint(tmp_path)
    predictor = Predictor(ckpt, batch_size=3)
    rgb = (torch.rand(3, 30, 41) * 255).to(torch.uint8)
    single = predictor.predict(rgb).label
    gray = Image.fromarray(rgb[0].numpy(), "L")
    assert predictor.predict(gray).label.shape == (30, 41)
    batched = list(predictor.predict_many([rgb, rgb, rgb, rgb[:, :20]]))
    assert len(batched) == 4 and batched[3].label.shape == (20, 41)
    assert all(torch.equal(p.label, single) for p in batched[:3])


@torch.no_grad()
def test_sliding_window_single_tile_and_overlap_average():
    model = fcnkit.create_model("fcn_resnet18_d16", num_classes=3).eval()
    x = torch.randn(1, 3, 40, 56)
    # FastFCN style: one window covering the padded image = the whole padded image, cropped back
    expected = model(torch.nn.functional.pad(x, (0, 8, 0, 24)))["out"][..., :40, :56]
    assert torch.allclose(sliding_window_logits(model, x, 64, 64, 3, pad_value=0.0), expected, atol=1e-5)
    # 96x96 in 64-pixel tiles at stride 32: windows at (0|32, 0|32); each pixel is the mean of those covering it
    y = torch.randn(1, 3, 96, 96)
    total, count = torch.zeros(1, 3, 96, 96), torch.zeros(1, 1, 96, 96)
    for r, c in [(0, 0), (0, 32), (32, 0), (32, 32)]:
        total[..., r : r + 64, c : c + 64] += model(y[..., r : r + 64, c : c + 64])["out"]
        count[..., r : r + 64, c : c + 64] += 1
    assert count.min() == 1 and count.max() == 4
    assert torch.allclose(sliding_window_logits(model, y, 64, 32, 3), total / count, atol=1e-5)


def test_folder_prediction_batches_same_size_neighbours_and_keeps_the_order(tmp_path):
    from fcnkit.inference import predict_files

    model, ckpt = _checkpoint(tmp_path)
    folder = tmp_path / "mixed"
    folder.mkdir()
    rng = np.random.default_rng(0)
    sizes = [(30, 40), (30, 40), (30, 40), (22, 36), (30, 40), (30, 40)]
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    (folder / "im2b.png").write_bytes(b"broken")  # between im2 and im3 in name order
    predictor = Predictor(ckpt, batch_size=2)
    batches = []
    original = predictor.predict_labels  # without probabilities, files go through the uint8 label path

    def spy(rgb, stop=None):
        batches.append(tuple(rgb.shape))
        return original(rgb, stop)

    predictor.predict_labels = spy
    paths = sorted(folder.iterdir())
    report = predict_files(predictor, paths, tmp_path / "out", overlays=False, show_progress=False)
    # im0 im1 | im2 (im2b skipped; im3 has another size) | im3 | im4 im5
    assert batches == [(2, 3, 30, 40), (1, 3, 30, 40), (1, 3, 22, 36), (2, 3, 30, 40)]
    assert [p.name for p in report.written] == [f"im{i}.png" for i in range(6)]
    assert [p.name for p, _ in report.skipped] == ["im2b.png"]
    assert not list((tmp_path / "out").glob("*_overlay.jpg"))
    for i in range(6):
        rgb = torch.from_numpy(np.array(Image.open(folder / f"im{i}.png"))).permute(2, 0, 1)
        with torch.no_grad():
            expected = model(model.preprocessing(rgb[None]))["out"].argmax(1)[0].numpy()
        assert np.array_equal(np.array(Image.open(tmp_path / "out" / f"im{i}.png")), expected)


def test_in_order_hands_results_back_in_order_with_a_bound_on_work_in_flight():
    import threading
    import time

    import pytest

    from fcnkit.inference.predictor import InOrder

    running, most, lock = [0], [0], threading.Lock()

    def job(i: int, seconds: float):
        def work():
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            time.sleep(seconds)
            with lock:
                running[0] -= 1
            return i * i

        return work

    got = []
    with InOrder(3) as pool:
        for i in range(12):  # later jobs finish first: the order must come from the queue, not from completion
            got += pool.submit(i, job(i, 0.02 * ((12 - i) % 4)))
            assert len(pool.pending) <= 3
        got += list(pool.drain())
    assert got == [(i, i * i) for i in range(12)] and most[0] == 3

    caller = threading.get_ident()
    with InOrder(1) as pool:  # one run: the work runs at once, in the caller's thread
        assert pool.submit("a", lambda: threading.get_ident()) == [("a", caller)]

    def fail():
        raise ValueError("job failed")

    slow = job(0, 0.2)
    with pytest.raises(ValueError, match="job failed"), InOrder(2) as pool:
        pool.submit("bad", fail)
        pool.submit("slow", slow)
        time.sleep(0.05)
        assert running[0] == 1
        list(pool.drain())  # the first job's error, while the second still runs
    assert running[0] == 0  # leaving waited for the job still running
