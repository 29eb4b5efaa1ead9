"""``fcnkit eval``: the standard metrics of a checkpoint on a split, with optional test-time inference."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..card import card_of
from ..checkpoint import read_checkpoint
from ..data import build_dataset
from ..engine.evaluate import evaluate
from ..engine.pictures import save_evaluation_pictures
from ..errors import ConfigError
from ..inference import describe_backend, describe_inference, load_model, optimized_or_plain
from ..utils import resolve_device
from .args import (
    add_device_arg,
    add_inference_args,
    add_option_arg,
    dataset_options,
    describe_run,
    inference_from_args,
)


def cmd_eval(args: argparse.Namespace) -> int:
    if args.ema:  # the older spelling of --weights ema
        args.weights = "ema"
    onnx_file = str(args.checkpoint).endswith(".onnx")  # fcnkit export / quantize output: no training config
    ckpt = {} if onnx_file else read_checkpoint(args.checkpoint)
    run = ckpt.get("config") or {}
    data_cfg = run.get("data", {})
    run_name = data_cfg.get("val_name") or data_cfg.get("name")
    name = args.data or run_name
    root = args.root or data_cfg.get("val_root") or data_cfg.get("root")
    if not name or not root:
        raise ConfigError("this checkpoint does not say which dataset it was trained on: pass --data and --root")
    split = args.split or data_cfg.get("val_split", "val")
    run_options = data_cfg.get("val_options") if data_cfg.get("val_options") is not None else data_cfg.get("options")
    options = {**((run_options or {}) if name == run_name else {}), **dataset_options(args.option)}
    dataset = build_dataset(name, root, split, **options)
    device = resolve_device(args.device)
    model = load_model(args.checkpoint, args.weights).to(device)
    inference = inference_from_args(args, card_of(model))
    print(describe_run("eval", args.checkpoint, model, inference, args, device), file=sys.stderr, flush=True)
    if not args.no_optimize:
        model = optimized_or_plain(model, args.backend)
        print(f"backend: {describe_backend(model)}", file=sys.stderr)
    metrics = evaluate(
        model,
        dataset,
        device,
        batch_size=args.batch_size,
        workers=args.workers,
        show_progress=True,
        inference=inference,
    )
    print(f"{args.checkpoint} on {name}/{split} ({len(dataset)} images); {describe_inference(inference)}")
    print(metrics.table(list(dataset.classes)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(metrics.as_dict(), f, indent=2)
    if args.pictures:
        palette = list(dataset.palette) if dataset.palette else None
        for path in save_evaluation_pictures(metrics, list(dataset.classes), Path(args.pictures), palette):
            print(f"wrote {path}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint: pixel acc, mean acc, mIoU, fwIoU, per-class IoU")
    p.add_argument("checkpoint")
    p.add_argument("--data", help="dataset name (default: the one the checkpoint was trained on)")
    p.add_argument("--root", help="dataset root (default: the training run's)")
    p.add_argument("--split", help="split (default: the run's validation split)")
    add_option_arg(p)
    p.add_argument("--batch-size", type=int, default=1, help="1 is exact; larger batches pad images")
    p.add_argument("--workers", type=int, default=2)
    add_device_arg(p)
    p.add_argument(
        "--ema",
        action="store_true",
        help="the same as --weights ema (kept for older scripts)",
    )
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.add_argument("--pictures", metavar="DIR", help="write confusion_matrix.png and per_class_iou.png into DIR")
    add_inference_args(p)
    p.set_defaults(func=cmd_eval)
