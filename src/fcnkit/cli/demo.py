"""``fcnkit demo``: generate a dataset, train, evaluate, predict and draw (:mod:`fcnkit.apps.demo`)."""

from __future__ import annotations

import argparse
import sys

from ..apps.demo import run_demo
from .args import add_device_arg


def cmd_demo(args: argparse.Namespace) -> int:
    result = run_demo(args.out, epochs=args.epochs, train_images=args.train_images, seed=args.seed, device=args.device)
    if args.min_miou is not None and result.miou * 100 < args.min_miou:
        print(f"demo mIoU {result.miou * 100:.2f} is below --min-miou {args.min_miou}", file=sys.stderr)
        return 1
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="generate a dataset, train, evaluate, predict and draw pictures (~4 min on CPU)")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--train-images", type=int, default=320)
    p.add_argument("--seed", type=int, default=0)
    add_device_arg(p)
    p.add_argument("--min-miou", type=float, help="exit with status 1 when the test mIoU (%%) is lower")
    p.set_defaults(func=cmd_demo)
