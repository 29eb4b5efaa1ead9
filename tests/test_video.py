"""Video in and out: ``fcnkit predict clip.mp4`` writes an overlay video of the same frame count, size and rate,
and label PNGs equal to the predictions of the decoded frames; broken files are named errors."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image

import fcnkit
from fcnkit.cli import main
from fcnkit.errors import DataError

av = pytest.importorskip("av")

from fcnkit.inference.video import is_video, predict_video  # noqa: E402


def _clip(path, frames=12, size=(48, 64), rate=10):
    """A moving square over a gradient, encoded losslessly enough (high quality MPEG-4) to be predictable."""
    h, w = size
    container = av.open(str(path), "w")
    stream = container.add_stream("mpeg4", rate=rate)
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    stream.bit_rate = 2_000_000
    for i in range(frames):
        image = np.zeros((h, w, 3), np.uint8)
        image[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None]
        image[10:26, 4 + 3 * i : 20 + 3 * i] = (20, 200, 40)
        for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def _model():
    torch.manual_seed(0)
    model = fcnkit.create_model("fcn_resnet18_d16", num_classes=3).eval()
    with torch.no_grad():
        model.classifier[4].weight.normal_(0, 1.0)
    model.palette = [(0, 0, 0), (255, 0, 0), (0, 0, 255)]
    return model


def _decoded_frames(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return frames, stream.average_rate, (stream.codec_context.height, stream.codec_context.width)


def test_overlay_video_keeps_count_size_and_rate_and_labels_match_the_frames(tmp_path):
    clip = _clip(tmp_path / "clip.mp4")
    model = _model()
    predictor = fcnkit.Predictor(model, batch_size=4)
    report = predict_video(predictor, clip, tmp_path / "out", labels=True, show_progress=False)
    assert report.frames == 12 and report.size == (48, 64) and report.rate == Fraction(10)
    frames, rate, size = _decoded_frames(report.overlay)
    assert len(frames) == 12 and rate == Fraction(10) and size == (48, 64)
    originals, _, _ = _decoded_frames(clip)
    for i, frame in enumerate(originals):  # each label PNG is the model's arg-max of that decoded frame
        with torch.no_grad():
            x = model.preprocessing(torch.from_numpy(frame).permute(2, 0, 1)[None])
            expected = model(x)["out"].argmax(1)[0].numpy()
        label = np.array(Image.open(report.labels / f"{i:06d}.png"))
        assert np.array_equal(label, expected), i
    # the overlay is the blend of those labels' colours over the frame (lossy: compared on average)
    blend = (
        0.5 * originals[5].astype(float)
        + 0.5 * np.array(model.palette)[np.array(Image.open(report.labels / "000005.png"))]
    )
    assert np.abs(frames[5].astype(float) - blend).mean() < 12


def test_cli_predicts_a_video_and_names_broken_ones(tmp_path, capsys):
    clip = _clip(tmp_path / "walk.mp4", frames=5)
    ckpt = fcnkit.save_checkpoint(tmp_path / "m.pth", _model())
    assert main(["predict", str(ckpt), str(clip), "--out", str(tmp_path / "out"), "--max-frames", "3"]) == 0
    out = capsys.readouterr().out
    assert "walk_overlay.mp4: 3 frames, 64x48, 10 frames/s" in out and "segmented at" in out
    assert len(_decoded_frames(tmp_path / "out" / "walk_overlay.mp4")[0]) == 3
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video at all")
    with pytest.raises(DataError, match=r"broken\.mp4: not a video FFmpeg can read"):
        predict_video(fcnkit.Predictor(_model()), tmp_path / "broken.mp4", tmp_path / "out", show_progress=False)
    assert main(["predict", str(ckpt), str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "o")]) == 2
    assert "missing.mp4: no such video file" in capsys.readouterr().err
    assert is_video("a/b.MKV") and is_video("rtsp://cam/1") and not is_video("x.png")


class _Slow(torch.nn.Module):
    """A model that takes ``seconds`` per batch: slower than the frames arrive."""

    def __init__(self, model, seconds):
        super().__init__()
        self.model, self.seconds = model, seconds
        self.preprocessing, self.num_classes = model.preprocessing, model.num_classes
        self.palette, self.classes = model.palette, None

    def forward(self, x):
        import time

        time.sleep(self.seconds)
        return self.model(x)


def test_a_live_source_drops_what_the_model_cannot_keep_up_with_and_says_so(tmp_path):
    """Read as a live source, frames arriving while the model is busy beyond the queue's few are dropped (and
    counted) instead of piling up; the same clip read as a file loses none."""
    clip = _clip(tmp_path / "clip.mp4", frames=12)
    predictor = fcnkit.Predictor(_Slow(_model(), 0.15), batch_size=1, optimize=False)
    live = predict_video(predictor, clip, tmp_path / "live", live=True, show_progress=False)
    assert live.dropped > 0 and live.frames + live.dropped == 12
    frames, _, _ = _decoded_frames(live.overlay)
    assert len(frames) == live.frames
    whole = predict_video(predictor, clip, tmp_path / "file", show_progress=False)
    assert whole.dropped == 0 and whole.frames == 12


def test_an_encoder_error_stops_the_run_with_it(tmp_path, monkeypatch):
    """A failure in the encoding thread reaches the caller; the reader and writer threads end."""
    import threading

    from fcnkit.inference import video

    def broken(self, rgb, label):
        raise OSError("disk full")

    monkeypatch.setattr(video.FrameWriter, "write", broken)
    before = threading.active_count()
    with pytest.raises(OSError, match="disk full"):
        predict_video(fcnkit.Predictor(_model()), _clip(tmp_path / "clip.mp4"), tmp_path / "out", show_progress=False)
    assert threading.active_count() == before


def test_stream_speed_benchmark_measures_both_pipelines(tmp_path):
    """benchmarks/stream_speed.py on a few tiny frames: a row per model and input whose ratios are its end-to-end
    over its model-only figures, and stage rows whose sum is the sum of the stages."""
    import importlib.util
    import json
    from pathlib import Path

    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(frames / f"f{i}.png")
    ckpt = fcnkit.save_checkpoint(tmp_path / "m.pth", _model())
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "stream_speed.py"
    spec = importlib.util.spec_from_file_location("stream_speed", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    argv = ["--model", str(ckpt), "--frames", str(frames), "--rounds", "1", "--batch", "2", "--model-batches", "1", "2",
            "--json", str(tmp_path / "t.json"), "--stages-json", str(tmp_path / "s.json"),
            "--modes-json", str(tmp_path / "m.json")]  # fmt: skip
    assert script.main(argv) == 0
    rows = json.loads((tmp_path / "t.json").read_text())["rows"]
    modes = json.loads((tmp_path / "m.json").read_text())["rows"]
    # the tests' PyTorch backend runs one batch at a time: two ways, batch 1 and 2
    assert [(r["runs at once"], r["batch"]) for r in modes] == [(1, 1), (1, 2)]
    fps = {(r["runs at once"], r["batch"]): r["frames/s"] for r in modes}
    assert [(r["model"], r["input"]) for r in rows] == [("fp32", "video"), ("fp32", "folder")]
    for r in rows:
        assert r["end to end"] > 0
        # one round: the best is the fastest way, and each ratio is the end-to-end figure over a model-only one
        assert r["model only, 1 run, batch 1"] == fps[(1, 1)] and r["model only, best"] == max(fps.values())
        assert r["best as"] == f"1 run, batch {max(fps, key=fps.get)[1]}"
        assert r["of 1 run, batch 1"] == pytest.approx(r["end to end"] / fps[(1, 1)])
        assert r["of best"] == pytest.approx(r["end to end"] / max(fps.values()))
    stages = {r["stage"]: r for r in json.loads((tmp_path / "s.json").read_text())["rows"]}
    for column in ("video fp32", "folder fp32"):
        assert stages["sum"][column] == pytest.approx(sum(stages[s][column] for s in script.STAGES))
    assert "folder fp32" not in stages["encode at veryfast"]


def test_a_network_stream_is_live_and_drops_what_the_model_cannot_keep_up_with(tmp_path):
    """An MPEG-TS stream over HTTP, sent in real time (30 frames a second, as a camera would) by a server in this
    process: the URL alone makes it live, a slow model drops frames and counts them, every frame sent is either
    segmented or counted as dropped, and the end of the connection ends the run normally, saying so."""
    import http.server
    import threading
    import time

    sent = 45

    class Camera(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "video/mp2t")
            self.end_headers()
            with av.open(self.wfile, "w", format="mpegts") as out:
                stream = out.add_stream("mpeg4", rate=30)
                stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
                for i in range(sent):
                    image = np.full((48, 64, 3), 40, np.uint8)
                    image[10:26, i : i + 16] = (20, 200, 40)
                    out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
                    self.wfile.flush()
                    time.sleep(1 / 30)
                out.mux(stream.encode())

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Camera)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/camera.ts"
        predictor = fcnkit.Predictor(_Slow(_model(), 0.15), batch_size=1, optimize=False)
        report = predict_video(predictor, url, tmp_path / "out", name="camera", show_progress=False)
    finally:
        server.shutdown()
        server.server_close()
    assert report.dropped > 0 and report.frames + report.dropped == sent
    frames, _, _ = _decoded_frames(report.overlay)
    assert len(frames) == report.frames and report.overlay.name == "camera_overlay.mp4"
    # the server closing the connection reaches FFmpeg as an I/O error: for a live source that is where the stream
    # ended, reported, with the frames before it kept
    assert report.ended is not None and "Input/output error" in report.ended
