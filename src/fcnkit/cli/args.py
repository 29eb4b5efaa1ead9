"""Argument types and flag groups shared by several commands."""

from __future__ import annotations

import argparse

from ..config import InferenceConfig, inference_config, parse_override


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
        help="auto (default): ONNX Runtime on CPU when installed, the fastest exact path there (see README "
        "'Speed'; the export is cached under $FCNKIT_CACHE/onnx), PyTorch otherwise and on CUDA; openvino: "
        "the same ONNX file compiled by OpenVINO (fcnkit[openvino])",
    )
    g = p.add_argument_group("test-time inference (default: one whole-image pass)")
    g.add_argument("--scales", type=float, nargs="+", metavar="S", help="average over these resize factors")
    g.add_argument("--base-size", type=int, help="scales resize the long side to base_size x S (FastFCN)")
    g.add_argument("--flip", action="store_true", default=None, help="also average the mirrored image")
    g.add_argument("--slide", type=window, metavar="N|HxW", help="sliding-window inference with this window")
    g.add_argument("--stride", type=window, metavar="N|HxW", help="window step (default 2/3 of the window)")
    g.add_argument("--pad", action="store_true", default=None, help="pad images smaller than the window (FastFCN)")


def inference_from_args(args: argparse.Namespace, base: dict | None = None) -> InferenceConfig:
    """An InferenceConfig: ``base`` (e.g. a run's ``test`` section) with the command-line options on top."""
    data = dict(base or {})
    if args.scales is not None:
        data["scales"] = args.scales
    if args.base_size is not None:
        data["base_size"] = args.base_size
    if args.flip:
        data["flip"] = True
    if args.pad:
        data["pad"] = True
    if args.slide is not None:
        data.update(mode="slide", crop_size=list(args.slide))
    if args.stride is not None:
        data["stride"] = list(args.stride)
    return inference_config(data)
