"""Argument types and flag groups shared by several commands."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import torch

from ..card import ModelCard, card_of
from ..config import InferenceConfig, inference_config, parse_override
from ..inference import describe_inference, is_plain, resolve_backend


def size(text: str) -> tuple[int, int]:
    """``HxW`` -> ``(H, W)``, positive."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like HxW (e.g. 375x500), got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return h, w


def window(text: str) -> tuple[int, int]:
    """A window size: ``N`` or ``HxW``."""
    return size(text if "x" in text.lower() else f"{text}x{text}")


def dataset_options(texts: list[str]) -> dict:
    """``key=value`` dataset options, values read as YAML (``exclude_groups=[0006R0]``)."""
    options = {}
    for text in texts:
        path, value = parse_override(text)
        options[".".join(path)] = value
    return options


def add_option_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a dataset option, e.g. --option exclude_groups=[0006R0] (repeatable)",
    )


def add_device_arg(p: argparse.ArgumentParser, default: str = "auto") -> None:
    p.add_argument("--device", default=default, help=f"cpu, cuda, cuda:1 ... or auto (default {default})")


def add_inference_args(p: argparse.ArgumentParser) -> None:
    """``--no-optimize``, ``--backend`` and the test-time options of ``eval`` and ``predict``."""
    p.add_argument(
        "--no-optimize",
        action="store_true",
        help="run the model as built (default: BatchNorm folded into convolutions, checked exact)",
    )
    p.add_argument(
        "--backend",
        choices=("auto", "torch", "onnxruntime", "openvino"),
        default="auto",
        help="auto (default): ONNX Runtime on CPU, the fastest exact path there (docs: 'Speed'; the export is "
        "cached under $FCNKIT_CACHE/onnx), PyTorch on CUDA and for models the exporter cannot take; openvino: "
        "the same ONNX file compiled by OpenVINO (fcnkit[openvino])",
    )
    add_weights_arg(p)
    add_passes_args(p)


def add_weights_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--weights",
        choices=("auto", "ema", "raw"),
        default="auto",
        help="a training run's last.pth holds two sets: auto (default) runs the weights that were evaluated (the "
        "EMA when the run kept one, as best.pth holds), ema or raw pick one; other files hold one set",
    )


def add_passes_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "test-time passes (default: the model's recipe, its training config's test: section, stored in the "
        "checkpoint and in exported ONNX files)"
    )
    g.add_argument(
        "--tta",
        choices=("recipe", "none"),
        default="recipe",
        help="recipe (default): the passes the model was measured with; none: one whole-image pass. The options "
        "below change either",
    )
    g.add_argument("--scales", type=float, nargs="+", metavar="S", help="average over these resize factors")
    g.add_argument("--base-size", type=int, help="scales resize the long side to base_size x S (FastFCN)")
    g.add_argument(
        "--flip", action=argparse.BooleanOptionalAction, default=None, help="also average the mirrored image (or not)"
    )
    g.add_argument("--slide", type=window, metavar="N|HxW", help="sliding-window inference with this window")
    g.add_argument("--stride", type=window, metavar="N|HxW", help="window step (default 2/3 of the window)")
    g.add_argument("--pad", action="store_true", default=None, help="pad images smaller than the window (FastFCN)")


def inference_from_args(args: argparse.Namespace, card: ModelCard | None = None) -> InferenceConfig:
    """The passes a command runs: the model card's (``--tta recipe``, the default) or one whole-image pass
    (``--tta none``), with the explicit options on top."""
    data = dataclasses.asdict(card.test) if card is not None and args.tta == "recipe" else {}
    if args.scales is not None:
        data["scales"] = args.scales
    if args.base_size is not None:
        data["base_size"] = args.base_size
    if args.flip is not None:
        data["flip"] = bool(args.flip)
    if args.pad:
        data["pad"] = True
    if args.slide is not None:
        data.update(mode="slide", crop_size=list(args.slide))
    if args.stride is not None:
        data["stride"] = list(args.stride)
    return inference_config(data)


def describe_run(
    command: str, source: str, model: Any, inference: InferenceConfig, args: argparse.Namespace, device: Any = None
) -> str:
    """The first line a command prints to stderr, before any work: what runs (file, architecture, weights, passes,
    backend). The backend is the one chosen for ``model`` on ``device`` (``--backend``, ``--no-optimize``); what
    the optimisation then did (an export found in the cache, BatchNorm folded) is :func:`describe_backend`'s."""
    card = card_of(model)
    name = card.arch.get("name") or type(model).__name__
    classes = f", {card.num_classes} classes" if card.num_classes else ""
    passes = describe_inference(inference)
    if getattr(args, "tta", "recipe") == "recipe" and inference == card.test and not is_plain(inference):
        passes += " (the recipe's; --tta none for one pass)"
    elif not is_plain(card.test) and inference != card.test:
        passes += f" (not the recipe's: {describe_inference(card.test)})"
    return (
        f"fcnkit {command}: {source} ({name}{classes}); weights {card.describe_weights()}; passes {passes}; "
        f"backend {planned_backend(model, args, device)}"
    )


def planned_backend(model: Any, args: argparse.Namespace, device: Any = None) -> str:
    """The backend a command will run ``model`` on, in words."""
    first = next(model.parameters(), None)
    if first is None:  # an exported file
        return f"{type(model).__name__} (the file as exported)"
    if getattr(args, "no_optimize", False) or not hasattr(args, "backend"):
        return "torch (as built)"
    return resolve_backend(args.backend, torch.device(device) if device is not None else first.device)
