"""``fcnkit export``: a model to ONNX, checked with ONNX Runtime (:mod:`fcnkit.export`)."""

from __future__ import annotations

import argparse

import torch

from ..errors import ExportError
from ..export import export_onnx
from ..inference import is_bare_model_name, model_from_spec
from .args import size


def cmd_export(args: argparse.Namespace) -> int:
    model = model_from_spec(args.model, args.num_classes)
    if is_bare_model_name(args.model):
        print(f"{args.model}: random weights ({model.num_classes} classes), for benchmarks and tests")
    try:
        report = export_onnx(
            model,
            args.out,
            sample_size=args.size,
            batch=args.batch,
            opset=args.opset,
            dynamic=not args.static,
            verify=not args.no_verify,
            atol=args.atol,
        )
    except torch.onnx.OnnxExporterError as e:
        raise ExportError(f"torch.onnx could not export {args.model}: {e}") from e
    print(report.format())
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a model to ONNX and check it with ONNX Runtime")
    p.add_argument(
        "model",
        help="an fcnkit checkpoint, '<model>.<weights tag>' such as fcn_resnet50_d8.coco_voc, "
        "or a registered model name (random weights, see --num-classes)",
    )
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument(
        "--size",
        type=size,
        default=(256, 256),
        metavar="HxW",
        help="the sample input traced and checked first (default 256x256); H and W stay dynamic",
    )
    p.add_argument("--batch", type=int, default=1, help="batch of the sample input (the batch stays dynamic)")
    p.add_argument("--opset", type=int, help="ONNX opset, 16 or later (default: the exporter's, 20 in torch 2.14)")
    p.add_argument("--static", action="store_true", help="fix batch, height and width to --batch and --size")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime against PyTorch check")
    p.add_argument(
        "--atol",
        type=float,
        default=1e-4,
        help="largest |logit difference| accepted, plus 1e-4 x the largest |logit| (default 1e-4)",
    )
    p.add_argument("--num-classes", type=int, help="classes of a bare model name's random weights (default 21)")
    p.set_defaults(func=cmd_export)
