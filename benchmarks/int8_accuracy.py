"""What int8 costs and buys for a trained model: mIoU and arg-max agreement against fp32 on the same labelled
images, and ms/image of PyTorch eager, the fp32 default path and int8, timed in one run.

The int8 file is made as ``fcnkit quantize`` makes it (ONNX Runtime static QDQ, int8 weights per channel,
uint8 activations), calibrated on ``--calib`` (training images: never the evaluated ones). Every variant
(``--variant minmax``, ``minmax+reduce_range``, ``percentile``...) is quantized and evaluated on the same split.
Timing is interleaved over ``--rounds`` rounds on the first ``--time-images`` images of the split at their own
size: each round runs eager, the fp32 default path and every int8 variant once per image, in turn; medians of
ms/image and median per-round ratios.

    python benchmarks/int8_accuracy.py --model runs/heldout30/RUN/best.pth --calib ../shared/data/camvid/train \\
        --data camvid --root ../shared/data/camvid --split train+val --option 'groups=[0006R0]'
    python benchmarks/int8_accuracy.py --model runs/demo/train/best.pth --calib runs/demo/data/images/train \\
        --data folder --root runs/demo/data --split test
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import fcnkit
from fcnkit.apps.benchmark import ResultsTable
from fcnkit.cli.args import dataset_options
from fcnkit.data import build_dataset
from fcnkit.engine.evaluate import evaluate
from fcnkit.export import OnnxRuntimeModel
from fcnkit.inference import optimize_for_inference
from fcnkit.inference.quantize import quantize_onnx

VARIANTS = {
    "minmax": {"method": "minmax"},
    "minmax+reduce_range": {"method": "minmax", "reduce_range": True},
    "percentile": {"method": "percentile"},
    "entropy": {"method": "entropy"},
}


def _agreement(a: torch.nn.Module, b: torch.nn.Module, dataset, limit: int | None = None) -> float:
    same = total = 0
    with torch.inference_mode():
        for i in range(len(dataset) if limit is None else min(limit, len(dataset))):
            x = a.preprocessing(dataset[i]["image"].unsqueeze(0))  # the dataset gives uint8 pixels
            pa, pb = a(x)["out"].argmax(1), b(x)["out"].argmax(1)
            same, total = same + int((pa == pb).sum()), total + pa.numel()
    return same / total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="an fcnkit checkpoint")
    parser.add_argument("--calib", required=True, help="a folder of calibration (training) images")
    parser.add_argument("--data", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--split", required=True)
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--variants", nargs="+", default=["minmax", "minmax+reduce_range"], choices=list(VARIANTS))
    parser.add_argument("--limit", type=int, default=64, help="calibration images")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--time-images", type=int, default=10)
    parser.add_argument("--json", type=Path, help="also save the table with its command, commit and machine here")
    args = parser.parse_args(argv)
    dataset = build_dataset(args.data, args.root, args.split, **dataset_options(args.option))
    eager = fcnkit.load_checkpoint(args.model).eval()
    fast = optimize_for_inference(eager, backend="onnxruntime", cache=False)
    models: dict[str, torch.nn.Module] = {"fp32 eager": eager, "fp32 onnxruntime": fast}
    notes: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.variants:
            start = time.perf_counter()
            report = quantize_onnx(eager, args.calib, Path(tmp) / f"{name}.onnx", limit=args.limit, **VARIANTS[name])
            models[f"int8 {name}"] = OnnxRuntimeModel(report.path, preprocessing=eager.preprocessing)
            notes[f"int8 {name}"] = (
                f"quantized in {time.perf_counter() - start:.0f} s on {report.calibration_images} images"
            )
        results = {}
        for name, model in models.items():
            metrics = evaluate(model, dataset, "cpu")
            agree = 1.0 if name == "fp32 eager" else _agreement(eager, model, dataset)
            results[name] = (metrics.miou * 100, agree)
        images = [
            eager.preprocessing(dataset[i]["image"].unsqueeze(0)) for i in range(min(args.time_images, len(dataset)))
        ]
        ms: dict[str, list[float]] = {name: [] for name in models}
        with torch.inference_mode():
            for model in models.values():
                model(images[0])  # warm-up
            for _ in range(args.rounds):
                for name, model in models.items():
                    t = time.perf_counter()
                    for x in images:
                        model(x)
                    ms[name].append(1000 * (time.perf_counter() - t) / len(images))
    base = results["fp32 eager"][0]
    table = ResultsTable(
        {
            "model": "{}",
            "mIoU": "{:.2f}",
            "vs fp32": "{:+.2f}",
            "argmax agree": "{:.3%}",
            "ms/image": "{:.1f}",
            "vs eager": "{:.2f}x",
            "vs fp32 ort": "{:.2f}x",
            "note": "{}",
        },
        command=" ".join(["python benchmarks/int8_accuracy.py", *sys.argv[1:]]),
    )
    for name in models:
        miou, agree = results[name]
        r_eager = statistics.median(e / m for e, m in zip(ms["fp32 eager"], ms[name], strict=True))
        r_fast = statistics.median(f / m for f, m in zip(ms["fp32 onnxruntime"], ms[name], strict=True))
        table.add(
            model=name,
            mIoU=miou,
            note=notes.get(name),
            **{"vs fp32": miou - base, "argmax agree": agree, "ms/image": statistics.median(ms[name])},
            **{"vs eager": r_eager, "vs fp32 ort": r_fast},
        )
    table.protocol = (
        f"{len(dataset)} images of {args.data}/{args.split} {' '.join(args.option)}; model {args.model}; "
        f"mIoU on every image of the split at its own size (one pass, no test-time augmentation); "
        f"timing: {args.rounds} interleaved rounds over {len(images)} images after one warm-up each, median ms/image, "
        f"ratios = median per-round ratios ({platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__})"
    )
    table.finish(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
