"""``fcnkit train``: a YAML recipe with dotted overrides, through :func:`fcnkit.engine.train.train`."""

from __future__ import annotations

import argparse
import os

from ..config import load_config
from ..engine.train import train


def cmd_train(args: argparse.Namespace) -> int:
    result = train(load_config(args.config, args.overrides))
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    best = f"{result.best_miou * 100:.2f}" if result.best_miou is not None else "n/a"
    print(
        f"run directory: {result.run_dir}  steps: {result.steps}  best val mIoU: {best}  "
        f"throughput: {result.images_per_second:.2f} images/s"
    )
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train from a YAML recipe, with key.sub=value overrides")
    p.add_argument("config", help="a YAML recipe, e.g. configs/camvid/fcn8s_resnet18_camvid_360x480.yaml")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.root=/data/camvid optim.lr=0.01")
    p.set_defaults(func=cmd_train)
