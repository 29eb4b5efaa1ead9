"""``fcnkit train``: a YAML recipe with dotted overrides, through :func:`fcnkit.engine.train.train`."""

from __future__ import annotations

import argparse
import os

import yaml

from ..config import load_config, to_dict
from ..engine.train import train


def cmd_train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.print_config:  # the recipe as it would run: its base: chain and the overrides applied, validated
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    result = train(cfg)
    if result.signal is not None:  # stopped early, resumable: the shell's convention for a signal's exit
        return 128 + int(result.signal)
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
    p.add_argument("config", help="a YAML recipe, e.g. configs/folder/cpu_budget30_fcn4s_regnetx008.yaml")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.root=/data/my_images optim.lr=0.01")
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved recipe (its base: chain and the overrides applied, every value checked) and exit",
    )
    p.set_defaults(func=cmd_train)
