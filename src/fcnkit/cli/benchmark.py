"""``fcnkit benchmark``: latency, images/s, FLOPs, parameters and peak memory (:mod:`fcnkit.apps.benchmark`)."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

import torch

from ..apps.benchmark import BenchResult, benchmark, format_table, write_csv, write_json
from ..inference import model_from_spec, optimize_for_inference
from .args import size

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cmd_benchmark(args: argparse.Namespace) -> int:
    prepare = None
    if args.fast or args.backend:
        backend = args.backend or "auto"
        prepare = (
            optimize_for_inference if backend == "auto" else functools.partial(optimize_for_inference, backend=backend)
        )
    sizes = args.size or [(480, 640)]
    batches = args.batch or [1]
    results: list[BenchResult] = []
    for spec in args.models:
        print(f"benchmarking {spec} ...", file=sys.stderr, flush=True)
        model = model_from_spec(spec, args.num_classes)
        name = Path(spec).name if os.sep in spec else spec
        results += benchmark(
            model,
            sizes=sizes,
            batch_sizes=batches,
            device=args.device,
            warmup=args.warmup,
            repeats=args.repeats,
            dynamic=args.dynamic,
            dtype=DTYPES[args.dtype],
            name=name,
            prepare=prepare,
            threads=args.threads,
            runs=args.runs,
        )
        del model
    print(format_table(results))
    if args.csv:
        write_csv(results, args.csv)
        print(f"wrote {args.csv}")
    if args.json:
        write_json(results, args.json)
        print(f"wrote {args.json}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "benchmark",
        help="latency, images/s, FLOPs, parameters and peak memory of models",
        description="Time whole forward passes of models (random weights for a bare name) and count their FLOPs "
        "and peak memory; the table states the protocol (input, batch, dtype, warm-up, device, sync).",
    )
    p.add_argument(
        "models",
        nargs="+",
        metavar="MODEL",
        help="a registered model name (random weights), an fcnkit checkpoint or '<model>.<weights tag>'",
    )
    p.add_argument(
        "--size", type=size, nargs="+", action="extend", metavar="HxW", help="input sizes (default 480x640, torchfcn's)"
    )
    p.add_argument("--batch", type=int, nargs="+", action="extend", metavar="N", help="batch sizes (default 1)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--warmup", type=int, default=5, help="untimed passes per size and batch (default 5)")
    p.add_argument("--repeats", type=int, default=20, help="timed passes per size and batch (default 20)")
    p.add_argument("--dynamic", action="store_true", help="alternate HxW and WxH on every call (torchfcn)")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    p.add_argument(
        "--runs",
        type=int,
        default=1,
        help="batches run at once, each from its own thread on threads / runs cores (ONNX Runtime, with --fast): "
        "the throughput fcnkit predict gets on folders and videos (default 1: one batch at a time, on all threads)",
    )
    p.add_argument("--num-classes", type=int, help="classes of models built by name (default 21)")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES), help="model and input dtype")
    p.add_argument(
        "--fast", action="store_true", help="time fcnkit.optimize_for_inference(model): the default path (backend auto)"
    )
    p.add_argument(
        "--backend",
        choices=("auto", "torch", "onnxruntime", "openvino"),
        help="the backend of --fast (implies it); onnxruntime and openvino export the model to ONNX first",
    )
    p.add_argument("--csv", metavar="FILE", help="also write the results to this CSV file")
    p.add_argument("--json", metavar="FILE", help="also write the results (with raw timings) to this JSON file")
    p.set_defaults(func=cmd_benchmark)
