"""``fcnkit models`` (the registry as a table) and ``fcnkit forward`` (one timed forward pass)."""

from __future__ import annotations

import argparse
import sys
import time

import torch

from ..models import count_parameters, create_model, describe_model, list_models
from ..models.weights import MODEL_WEIGHTS
from .args import size


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
        params = f"{count_parameters(name, args.num_classes):,}" if args.params else "-"
        tags = ",".join(sorted(MODEL_WEIGHTS.get(name, {}))) or "-"
        print(f"{name:<{width}}  {params:>12}  {tags:<10}  {describe_model(name)}")
    if args.params:
        print(f"(parameters for {args.num_classes} classes, frozen upsampling layers included)")
    return 0


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


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the registered models")
    p.add_argument("pattern", nargs="?", help="filter: substring or glob, e.g. '*vgg16'")
    p.add_argument("--params", action="store_true", help="count parameters (builds each model on 'meta')")
    p.add_argument("--num-classes", type=int, default=21)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("forward", help="build a model with random weights and time one forward pass")
    p.add_argument("model", help="a registered model name (see `fcnkit models`)")
    p.add_argument("--size", type=size, default=(375, 500), help="input HxW (default 375x500)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--num-classes", type=int, default=21)
    p.set_defaults(func=cmd_forward)
