"""The ``fcnkit`` command line."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import torch

from . import __version__
from .models import create_model, list_models
from .models.weights import MODEL_WEIGHTS

FAMILIES = (
    ("_atonce_vgg16", "VGG16 FCN-8s trained at once (pool4 x0.01, pool3 x0.0001), Caffe geometry"),
    ("_vgg16", "VGG16 FCN, Caffe geometry (pad 100, ceil pools, fixed crops)"),
    ("_timm", "any timm features_only backbone (backbone=...)"),
    ("_d8", "FCNHead on a dilated ResNet, output stride 8 (torchvision form)"),
    ("_d16", "FCNHead on a dilated ResNet, output stride 16"),
)


def _family(name: str) -> str:
    return next((text for suffix, text in FAMILIES if name.endswith(suffix)), "")


def _count_params(name: str, num_classes: int) -> int:
    # Built on the meta device: shapes only, no memory and no initialisation cost.
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes)
    return sum(p.numel() for p in model.parameters())


def cmd_models(args: argparse.Namespace) -> int:
    names = list_models(args.pattern)
    if not names:
        print(f"no model matches {args.pattern!r}", file=sys.stderr)
        return 1
    width = max(len(n) for n in names)
    header = f"{'model':<{width}}  {'params':>12}  {'weights':<10}  description"
    print(header)
    print("-" * len(header))
    for name in names:
        params = f"{_count_params(name, args.num_classes):,}" if args.params else "-"
        tags = ",".join(sorted(MODEL_WEIGHTS.get(name, {}))) or "-"
        print(f"{name:<{width}}  {params:>12}  {tags:<10}  {_family(name)}")
    if args.params:
        print(f"(parameters for {args.num_classes} classes, frozen upsampling layers included)")
    return 0


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like HxW (e.g. 375x500), got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return h, w


def cmd_forward(args: argparse.Namespace) -> int:
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=args.num_classes).eval()
    h, w = args.size
    x = torch.randn(args.batch, 3, h, w)
    with torch.inference_mode():
        model(x)  # warm-up
        start = time.perf_counter()
        out = model(x)
        elapsed = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    shapes = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in out.items())
    print(f"{args.model}: {params:,} parameters; input {(args.batch, 3, h, w)} -> {shapes}")
    print(f"one forward pass: {elapsed * 1000:.1f} ms on {torch.get_num_threads()} CPU threads (after 1 warm-up)")
    print(f"preprocessing expected by these weights: {model.preprocessing}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fcnkit", description="Fully Convolutional Networks for segmentation.")
    parser.add_argument("--version", action="version", version=f"fcnkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list the registered models")
    p.add_argument("pattern", nargs="?", help="filter: substring or glob, e.g. '*vgg16'")
    p.add_argument("--params", action="store_true", help="count parameters (builds each model on 'meta')")
    p.add_argument("--num-classes", type=int, default=21)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("forward", help="build a model with random weights and time one forward pass")
    p.add_argument("model", help="a registered model name (see `fcnkit models`)")
    p.add_argument("--size", type=_size, default=(375, 500), help="input HxW (default 375x500)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--num-classes", type=int, default=21)
    p.set_defaults(func=cmd_forward)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (KeyError, ValueError, TypeError, FileNotFoundError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"fcnkit: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
