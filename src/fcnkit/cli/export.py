"""``fcnkit export``: a model to ONNX, checked with ONNX Runtime (:mod:`fcnkit.export`); ``fcnkit quantize``: an
int8 ONNX file of it (:mod:`fcnkit.inference.quantize`)."""

from __future__ import annotations

import argparse
import sys

import torch

from ..errors import ExportError
from ..export import export_onnx
from ..inference import is_bare_model_name, model_from_spec
from .args import add_passes_args, add_weights_arg, describe_run, inference_from_args, size


def _model(args: argparse.Namespace, command: str) -> torch.nn.Module:
    """The model to write, its card's passes set by ``--tta`` and the explicit options (what the file records and
    what ``fcnkit predict model.onnx`` then runs); the first stderr line says what is written."""
    model = model_from_spec(args.model, args.num_classes, args.weights)
    if is_bare_model_name(args.model):
        print(f"{args.model}: random weights ({model.num_classes} classes), for benchmarks and tests")
    model.card = model.card.replace(test=inference_from_args(args, model.card))
    print(describe_run(command, args.model, model, model.card.test, args), file=sys.stderr)
    return model


def cmd_export(args: argparse.Namespace) -> int:
    model = _model(args, "export")
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
    add_export_parser(sub)
    add_quantize_parser(sub)


def add_export_parser(sub: argparse._SubParsersAction) -> None:
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
    add_weights_arg(p)
    add_passes_args(p)
    p.set_defaults(func=cmd_export)


def cmd_quantize(args: argparse.Namespace) -> int:
    from ..inference.quantize import quantize_onnx  # deferred: ONNX Runtime's quantization tools load slowly

    model = _model(args, "quantize")
    report = quantize_onnx(
        model,
        args.calib,
        args.out,
        method=args.method,
        per_channel=not args.per_tensor,
        reduce_range=args.reduce_range,
        limit=args.limit,
        max_side=args.max_side,
        check_images=args.check,
    )
    print(
        f"wrote {report.path}: int8 (QDQ, {args.method} calibration on {report.calibration_images} images"
        f"{', per-tensor' if args.per_tensor else ', per-channel'} weights{', reduce_range' if args.reduce_range else ''}"
        f"), arg-max agreement with fp32 {report.argmax_agreement:.4%} on {report.check_images} images, "
        f"{report.seconds:.0f} s"
    )
    for line in report.skipped:
        print(f"skipped {line}")
    return 0


def add_quantize_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quantize", help="int8 ONNX file of a model (static quantization with ONNX Runtime, real calibration images)"
    )
    p.add_argument("model", help="an fcnkit checkpoint, '<model>.<weights tag>', or a registered model name")
    p.add_argument("--calib", required=True, help="a folder of calibration images (training images, not test ones)")
    p.add_argument("--out", required=True, help="the .onnx file to write (runs with fcnkit predict / eval)")
    p.add_argument(
        "--method",
        choices=("minmax", "percentile", "entropy"),
        default="minmax",
        help="how activation ranges come from the calibration images (default minmax)",
    )
    p.add_argument("--per-tensor", action="store_true", help="one scale per weight tensor (default: per channel)")
    p.add_argument(
        "--reduce-range", action="store_true", help="7-bit weights: for AVX2 CPUs without VNNI, where u8s8 can saturate"
    )
    p.add_argument("--limit", type=int, default=64, help="at most this many calibration images (default 64)")
    p.add_argument("--max-side", type=int, help="shrink larger calibration images to this long side first")
    p.add_argument("--check", help="a folder of images to measure int8 against fp32 on (default: the calibration ones)")
    p.add_argument("--num-classes", type=int, help="classes of a bare model name's random weights (default 21)")
    add_weights_arg(p)
    add_passes_args(p)
    p.set_defaults(func=cmd_quantize)
