"""Video and folder prediction at the model's speed? End-to-end frames/s beside model-only frames/s, and where
each frame's time goes, in one run.

For each model (a checkpoint on the default inference path, and with ``--int8`` a file from ``fcnkit quantize``):

* **model only**: the model's passes from the preprocessed frames to labels (``--tta none``: one pass), one run on
  all cores at batch 1 (what ``fcnkit benchmark --fast`` times) and every other way the pipelines could run it: one
  run or several at once (:meth:`~fcnkit.inference.Predictor.concurrent`), at batch 1 and at ``--batch``; the
  end-to-end figures are compared with the fastest of these (``--modes-json`` keeps them all);
* **video**: :func:`fcnkit.inference.video.predict_video` on a clip made from the frames (MPEG-4 part 2 at 30 frames/s,
  the usual camera output), writing the overlay video, as ``fcnkit predict CK clip.mp4`` does;
* **folder**: :func:`fcnkit.inference.predict_files` on the frames' files, writing label PNGs and overlays, as
  ``fcnkit predict CK frames/`` does.

Rounds are interleaved (each round runs every model's three measurements in turn); figures are medians over
rounds, and "of model only" is the median per-round ratio of end-to-end to model-only frames/s.

**Stages** (``--stages-json``): one pass over the frames runs each stage of the two pipelines in turn, without
threads, through the same functions they use, and times it per frame: read and decode (FFmpeg for the video, PIL
for the files), preprocess, model, arg-max (to uint8 labels; inside the model's graph on ONNX Runtime, then part
of "model"), blend (class colours over the frame: in yuv420p for the video, RGB for the files), and encode (H.264
at the encoder's preset) or write (label PNG and overlay JPEG). The video's pictures are also encoded at x264's
``veryfast`` preset beside, to show what a slower preset would cost. Their sum is what a frame costs without
overlap; the pipelines overlap decoding and encoding with the model in threads.

    python benchmarks/stream_speed.py --model RUN/best.pth --frames CAMVID/val --count 120 \\
        --int8 int8.onnx --json benchmarks/results/stream_speed.json --stages-json benchmarks/results/stream_stages.json \\
        --modes-json benchmarks/results/stream_modes.json
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fcnkit.apps.benchmark import ResultsTable, device_name
from fcnkit.config import InferenceConfig
from fcnkit.data import voc_palette
from fcnkit.data.io import read_image
from fcnkit.inference import Predictor, describe_backend, expand_inputs, predict_files
from fcnkit.inference.files import png_mark
from fcnkit.inference.predictor import InOrder
from fcnkit.inference.tta import class_indices
from fcnkit.inference.video import frame_arrays, open_encoder, overlay_blender, overlay_picture, predict_video
from fcnkit.utils import require, tune_malloc
from fcnkit.visualize import LABEL_PNG_COMPRESSION, Blender, YuvBlender, label_to_palette_png

STAGES = ("read / decode", "preprocess", "model", "arg-max", "blend", "encode / write")
#: a slower x264 preset, timed on the same pictures beside the one the pipeline uses (not part of the sum)
OTHER_PRESET = "veryfast"


def make_clip(av, frames: list[Path], path: Path, rate: int = 30) -> None:
    """The frames as an MPEG-4 part 2 clip at ``rate`` frames/s."""
    first = np.asarray(Image.open(frames[0]).convert("RGB"))
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=rate)
        stream.height, stream.width = first.shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"qscale": "3"}
        for f in frames:
            frame = av.VideoFrame.from_ndarray(np.asarray(Image.open(f).convert("RGB")), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def model_only(runner: Predictor, runs: int, inputs: list[torch.Tensor]) -> float:
    """Frames/s of the model alone over preprocessed batches, ``runs`` batches at once (``runner`` from
    :meth:`Predictor.concurrent` when ``runs > 1``), each pass as the pipelines run it: to uint8 labels."""
    start = time.perf_counter()
    with torch.inference_mode(), InOrder(runs) as pool:
        for x in inputs:
            pool.submit(None, lambda x=x: runner.model_labels(x))
        for _ in pool.drain():
            pass
    return sum(x.shape[0] for x in inputs) / (time.perf_counter() - start)


def video_stages(av, predictor: Predictor, clip: Path, alpha: float, preset: str) -> dict[str, list[float]]:
    """Per-frame seconds of each stage of the video pipeline, run one after the other, with the blend and the
    encoder's pixel format :func:`~fcnkit.inference.video.predict_video` picks."""
    times: dict[str, list[float]] = {s: [] for s in STAGES}
    sink = io.BytesIO()
    palette = list(predictor.model.palette or voc_palette(predictor.num_classes))
    with av.open(str(clip)) as container, av.open(sink, "w", format="mp4") as writer:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1  # the codecs' whole work in the timed call, none in the background
        height, width = stream.codec_context.height, stream.codec_context.width
        encoder = open_encoder(av, writer, Fraction(30), width, height, preset)
        other_sink = av.open(io.BytesIO(), "w", format="mp4")
        other = open_encoder(av, other_sink, Fraction(30), width, height, OTHER_PRESET)
        for codec in (encoder, other):
            codec.thread_type, codec.codec_context.thread_count = "SLICE", 1
            codec.options = {**codec.options, "threads": "1"}
        times[f"encode at {OTHER_PRESET}"] = []
        blender = overlay_blender(encoder, palette, alpha)
        yuv = isinstance(blender, YuvBlender)
        frames = container.decode(stream)
        while True:
            t0 = time.perf_counter()
            frame = next(frames, None)
            if frame is None:
                break
            arrays = frame_arrays(frame, yuv)
            t1 = time.perf_counter()
            rgb = torch.from_numpy(arrays[0][None]).permute(0, 3, 1, 2).contiguous()
            label = _segment(predictor, rgb, times, t1)
            t4 = time.perf_counter()
            picture = overlay_picture(av, blender, arrays, label)
            t5 = time.perf_counter()
            for packet in encoder.encode(picture):
                writer.mux(packet)
            t6 = time.perf_counter()
            for packet in other.encode(picture):
                other_sink.mux(packet)
            times[f"encode at {OTHER_PRESET}"].append(time.perf_counter() - t6)
            times["read / decode"].append(t1 - t0)
            times["blend"].append(t5 - t4)
            times["encode / write"].append(t6 - t5)
        for packet in encoder.encode():
            writer.mux(packet)
        for packet in other.encode():
            other_sink.mux(packet)
        other_sink.close()
    return times


def folder_stages(predictor: Predictor, files: list[Path], blender: Blender, out: Path) -> dict[str, list[float]]:
    """Per-frame seconds of each stage of the folder pipeline, run one after the other."""
    times: dict[str, list[float]] = {s: [] for s in STAGES}
    palette = list(predictor.model.palette or voc_palette(predictor.num_classes))
    for i, path in enumerate(files):
        t0 = time.perf_counter()
        rgb = read_image(path)
        t1 = time.perf_counter()
        label = _segment(predictor, rgb[None], times, t1)
        t4 = time.perf_counter()
        picture = blender.picture(rgb.permute(1, 2, 0).numpy(), label)
        t5 = time.perf_counter()
        label_to_palette_png(label, palette).save(
            out / f"{i}.png", pnginfo=png_mark(), compress_level=LABEL_PNG_COMPRESSION
        )
        picture.save(out / f"{i}_overlay.jpg", quality=92)
        t6 = time.perf_counter()
        times["read / decode"].append(t1 - t0)
        times["blend"].append(t5 - t4)
        times["encode / write"].append(t6 - t5)
    return times


def _segment(predictor: Predictor, rgb: torch.Tensor, times: dict[str, list[float]], t1: float) -> np.ndarray:
    """Preprocess, model and arg-max of one frame, each timed, the way ``predict_labels`` runs them: for one plain
    pass on a runtime with the arg-max in its graph, the arg-max is part of the model's time (recorded as 0)."""
    from fcnkit.inference.tta import infer_logits, is_plain

    with torch.inference_mode():
        x = predictor.model.preprocessing(rgb)
        t2 = time.perf_counter()
        inside = getattr(predictor.model, "labels", None) if is_plain(predictor.inference) else None
        labels = inside(x) if callable(inside) else None
        if labels is None:
            logits = infer_logits(predictor.model, x, predictor.inference, predictor.num_classes)
        t3 = time.perf_counter()
        if labels is None:
            labels = class_indices(logits)
        label = labels[0].to(torch.uint8).numpy()
    t4 = time.perf_counter()
    times["preprocess"].append(t2 - t1)
    times["model"].append(t3 - t2)
    times["arg-max"].append(t4 - t3)
    return label


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="an fcnkit checkpoint")
    parser.add_argument("--int8", help="also this model file (fcnkit quantize's .onnx)")
    parser.add_argument("--frames", required=True, help="a folder of video frames (images of one size)")
    parser.add_argument("--count", type=int, default=120, help="frames to use (default 120, 4 s at 30 frames/s)")
    parser.add_argument(
        "--batch", type=int, help="the pipelines' batch size (default: fcnkit predict's, 1 with several runs at once)"
    )
    parser.add_argument(
        "--model-batches", type=int, nargs="+", default=[1, 4], help="model only: these batch sizes (default 1 4)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--preset", default="ultrafast", help="x264 preset of the overlay video")
    parser.add_argument("--tta", choices=["none", "recipe"], default="none", help="the predictor's passes")
    parser.add_argument("--json", type=Path, help="save the throughput table here")
    parser.add_argument("--stages-json", type=Path, help="save the stage table here")
    parser.add_argument("--modes-json", type=Path, help="save the model-only table (each way to run it) here")
    args = parser.parse_args(argv)
    tune_malloc()  # as fcnkit predict does
    av = require("av", "video", "video input and output")
    command = " ".join(["python benchmarks/stream_speed.py", *sys.argv[1:]])
    files = expand_inputs([args.frames])[: args.count]
    inference = InferenceConfig() if args.tta == "none" else None
    models = {"fp32": args.model, **({"int8": args.int8} if args.int8 else {})}
    predictors = {name: Predictor(spec, inference=inference) for name, spec in models.items()}
    for p in predictors.values():  # as fcnkit predict picks it, unless given
        p.batch_size = args.batch or (1 if p.concurrent()[1] > 1 else 4)
    for name, p in predictors.items():
        print(f"{name}: {describe_backend(p.model)}; passes: {p.inference}", file=sys.stderr)
    throughput = ResultsTable(
        {
            "model": "{}",
            "input": "{}",
            "model only, 1 run, batch 1": "{:.1f}",
            "model only, best": "{:.1f}",
            "best as": "{}",
            "end to end": "{:.1f}",
            "of 1 run, batch 1": "{:.0%}",
            "of best": "{:.0%}",
        },
        command=command,
    )
    modes = ResultsTable(
        {"model": "{}", "runs at once": "{}", "threads a run": "{}", "batch": "{}", "frames/s": "{:.1f}"},
        command=command,
    )
    stages = ResultsTable(
        {"stage": "{}"} | {f"{i} {m}": "{:.2f}" for i in ("video", "folder") for m in models}, command=command
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip = tmp / "clip.mp4"
        make_clip(av, files, clip)
        rgb = [read_image(f) for f in files]
        size = tuple(rgb[0].shape[1:])
        # per model, per round: model-only frames/s of each way to run it; per (model, input), per round: end to end
        alone: dict[str, list[dict[tuple[int, int], float]]] = {}
        measures: dict[tuple[str, str], list[float]] = {}
        setups = {}
        for name, p in predictors.items():
            runner, runs = p.concurrent()
            sizes = dict.fromkeys(args.model_batches)
            ways = {(1, b): p for b in sizes} | {(runs, b): runner for b in sizes if runs > 1}
            inputs = {
                b: [p.model.preprocessing(torch.stack(rgb[i : i + b])) for i in range(0, len(rgb), b)] for b in sizes
            }
            ends: dict[str, Callable[[], float]] = {
                "video": lambda p=p, name=name: _timed_frames(
                    lambda: predict_video(p, clip, tmp / f"video_{name}", show_progress=False, preset=args.preset)
                ),
                "folder": lambda p=p, name=name: _timed_frames(
                    lambda: len(predict_files(p, files, tmp / f"folder_{name}", show_progress=False).written)
                ),
            }
            for (n, b), way in ways.items():
                model_only(way, n, inputs[b][:4])  # warm-up: the runtime's first calls allocate
            for what, run in ends.items():
                run()  # warm-up
                measures[(name, what)] = []
            alone[name] = []
            setups[name] = (ways, inputs, ends, runner)
        for _ in range(args.rounds):
            for name, (ways, inputs, ends, _) in setups.items():
                alone[name].append({(n, b): model_only(way, n, inputs[b]) for (n, b), way in ways.items()})
                for what, run in ends.items():
                    measures[(name, what)].append(run())
        threads = {name: _threads(runner) for name, (*_, runner) in setups.items()}
        for name, rounds in alone.items():
            for key in rounds[0]:
                n, b = key
                fps = statistics.median(r[key] for r in rounds)
                modes.add(**{"model": name, "runs at once": n, "batch": b, "frames/s": fps},
                          **{"threads a run": torch.get_num_threads() if n == 1 else threads[name]})  # fmt: skip
        for (name, what), ends_fps in measures.items():
            rounds = alone[name]
            best = max(rounds[0], key=lambda k: statistics.median(r[k] for r in rounds))
            throughput.add(
                model=name,
                input=what,
                **{
                    "model only, 1 run, batch 1": statistics.median(r[(1, 1)] for r in rounds),
                    "model only, best": statistics.median(r[best] for r in rounds),
                    "best as": f"{best[0]} run{'s' if best[0] > 1 else ''}, batch {best[1]}",
                    "end to end": statistics.median(ends_fps),
                    "of 1 run, batch 1": statistics.median(
                        e / r[(1, 1)] for e, r in zip(ends_fps, rounds, strict=True)
                    ),
                    "of best": statistics.median(e / r[best] for e, r in zip(ends_fps, rounds, strict=True)),
                },
            )
        stage_times: dict[str, dict[str, list[float]]] = {}
        for name, p in predictors.items():
            palette = list(p.model.palette or voc_palette(p.num_classes))
            blender = Blender(palette, 0.5)
            stage_times[f"video {name}"] = video_stages(av, p, clip, 0.5, args.preset)
            (tmp / f"stages_{name}").mkdir()
            stage_times[f"folder {name}"] = folder_stages(p, files, blender, tmp / f"stages_{name}")
        for stage in (*STAGES, "sum", f"encode at {OTHER_PRESET}"):
            row: dict[str, float] = {}
            for column, times in stage_times.items():
                per = {s: 1000 * statistics.median(v) for s, v in times.items()}
                if stage == "sum":
                    row[column] = sum(per[s] for s in STAGES)
                elif stage in per:
                    row[column] = per[stage]
            stages.add(stage=stage, **row)
    passes = "one whole-image pass" if args.tta == "none" else "the recipe's"
    protocol = (
        f"frames/s; {len(files)} frames of {size[0]}x{size[1]} from {Path(args.frames).name}/, end to end at batch "
        f"{', '.join(sorted({str(p.batch_size) for p in predictors.values()}))}"
        f"{'' if args.batch else ' (as fcnkit predict picks it)'}, passes: {passes}"
        f"; video: an MPEG-4 part 2 clip of them at 30 frames/s in, H.264 ({args.preset}) overlay out; folder: "
        f"label PNG + overlay JPEG per frame; model only: the model's passes from preprocessed frames to labels, "
        f"1 run on all cores at batch 1 (what fcnkit benchmark --fast times), and the fastest of 1 run or several "
        f"at once (Predictor.concurrent, as the pipelines run it) at batch {' or '.join(map(str, args.model_batches))}; {args.rounds} "
        f"interleaved rounds, medians, ratios the median of per-round ratios; {device_name(torch.device('cpu'))}, "
        f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    throughput.protocol = protocol
    modes.protocol = (
        f"frames/s of the model alone (preprocessed frames to labels) run one way or another: one run on all "
        f"cores, or several runs at once from as many threads (Predictor.concurrent); {len(files)} frames of "
        f"{size[0]}x{size[1]}; {args.rounds} interleaved rounds, medians; {device_name(torch.device('cpu'))}, "
        f"{torch.get_num_threads()} threads"
    )
    stages.protocol = (
        f"ms per frame (median), one frame at a time, no threads (codecs single-threaded), through the functions "
        f"the pipelines use; "
        f"{len(files)} frames of {size[0]}x{size[1]}; video: the MPEG-4 clip in, H.264 ({args.preset}) out; "
        f"folder: PNG files in, label PNG + overlay JPEG out; {device_name(torch.device('cpu'))}, "
        f"{torch.get_num_threads()} threads"
    )
    throughput.finish(args.json)
    print()
    modes.finish(args.modes_json)
    print()
    stages.finish(args.stages_json)
    return 0


def _threads(predictor: Predictor) -> int | str:
    """The intra-op threads of a predictor's ONNX Runtime session, as set when it was opened."""
    model = getattr(predictor.model, "model", predictor.model)
    session = getattr(model, "session", None)
    if session is None:
        return "?"
    value = session.get_session_options().intra_op_num_threads
    return value or "runtime's choice"


def _timed_frames(run: Callable[[], object]) -> float:
    """Frames/s of one call that returns a VideoReport or a count of frames."""
    start = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - start
    frames = result if isinstance(result, int) else result.frames
    return frames / seconds


if __name__ == "__main__":
    raise SystemExit(main())
