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


def test_concurrent_runs_on_onnx_runtime_give_the_same_files(tmp_path, monkeypatch):
    """On ONNX Runtime, streams of images run several one-thread sessions' runs at once (Predictor.concurrent): the
    copy opens the same file single-threaded, its labels are the original's, and predict_files writes the same
    label PNGs and overlays as with one run at a time."""
    from fcnkit.inference import predict_files
    from fcnkit.inference.video import predict_video

    monkeypatch.delenv("FCNKIT_BACKEND")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model = randomize_(fcnkit.create_model("fcn8s_timm", backbone="test_resnet", num_classes=3), seed=4).eval()
        ckpt = fcnkit.save_checkpoint(tmp_path / "model.pth", model)
        rng = np.random.default_rng(1)
        frames = tmp_path / "frames"
        frames.mkdir()
        for i in range(7):
            Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(frames / f"f{i}.png")
        predictor = fcnkit.Predictor(ckpt, batch_size=2)
        # one batch of images is not a stream: it runs alone on all cores, and no second session is opened for it
        opened = []
        copy = type(predictor.model).with_threads
        monkeypatch.setattr(type(predictor.model), "with_threads", lambda m, n: opened.append(n) or copy(m, n))
        paths = sorted(frames.iterdir())
        predict_files(predictor, paths[:2], tmp_path / "one_batch", show_progress=False)
        assert predictor.concurrent(2) == (predictor, 1) and opened == []
        assert predictor.concurrent(3)[1] == 2 and predictor.concurrent(None)[1] == 2 and opened == [1]
        predictor.batch_size = 1
        runner, runs = predictor.concurrent()
        assert runs == 2 and runner is not predictor and runner.model is not predictor.model
        assert runner.model.model.session.get_session_options().intra_op_num_threads == 1
        assert predictor.concurrent()[0].model is runner.model  # opened once
        rgb = torch.from_numpy(rng.integers(0, 256, (3, 3, 40, 52), dtype=np.uint8))
        assert torch.equal(runner.predict_labels(rgb), predictor.predict_labels(rgb))

        predict_files(predictor, paths, tmp_path / "concurrent", show_progress=False)
        clip = _clip(paths, tmp_path / "clip.mp4")
        predict_video(predictor, clip, tmp_path / "concurrent", labels=True, show_progress=False)
        monkeypatch.setattr(fcnkit.Predictor, "concurrent", lambda self, images=None: (self, 1))
        predict_files(predictor, paths, tmp_path / "one", show_progress=False)
        predict_video(predictor, clip, tmp_path / "one", labels=True, show_progress=False)
        names = [n for p in paths for n in (p.name, f"{p.stem}_overlay.jpg")]
        names += [f"clip.mp4_labels/{f.name}" for f in sorted((tmp_path / "one" / "clip.mp4_labels").iterdir())]
        assert len(names) == 21
        for name in names:
            one, many = (np.asarray(Image.open(tmp_path / d / name)) for d in ("one", "concurrent"))
            assert np.array_equal(one, many), name

        # fcnkit benchmark --runs 2 times the same one-thread copy, two batches in flight
        from fcnkit.apps.benchmark import benchmark

        (timed,) = benchmark(model, sizes=[(40, 52)], warmup=1, repeats=4, runs=2, prepare=lambda m: predictor.model)
        assert timed.runs == 2 and timed.protocol["threads_per_run"] == 1 and timed.images_per_s > 0

        torch.set_num_threads(1)  # one core: nothing to run at once
        assert fcnkit.Predictor(ckpt).concurrent()[1] == 1
    finally:
        torch.set_num_threads(threads)


def _clip(frames, path):
    """The frames as an MPEG-4 clip (for the video path)."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.height, stream.width = np.asarray(Image.open(frames[0])).shape[:2]
        stream.pix_fmt = "yuv420p"
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.asarray(Image.open(f)), format="rgb24")))
        out.mux(stream.encode())
    return path
