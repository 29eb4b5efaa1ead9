"""The ``fcnkit`` command line."""

from __future__ import annotations

import argparse
import fnmatch
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from . import __version__
from .engine.errors import TrainingDiverged
from .hub import ChecksumError, OfflineError
from .models import create_model, list_models
from .models.weights import MODEL_WEIGHTS

_FASTFCN_HEADS = {
    "enc": "EncNet (context encoding)",
    "psp": "PSPNet (pyramid pooling)",
    "deeplabv3": "DeepLabV3 (ASPP)",
}
_FASTFCN_NECKS = {
    "jpu": "on a stride-32 ResNet + JPU (FastFCN)",
    "jpux": "on a stride-32 ResNet + JPU_X (FastFCN)",
    "d8": "on a dilated ResNet, output stride 8 (FastFCN's baseline)",
}
#: (fnmatch pattern, one-line description) for `fcnkit models`; the first matching pattern wins.
FAMILIES = (
    *((f"{head}_resnet*_{neck}", f"{head_text} {neck_text}")
      for head, head_text in _FASTFCN_HEADS.items() for neck, neck_text in _FASTFCN_NECKS.items()),
    ("*_atonce_vgg16", "VGG16 FCN-8s trained at once (pool4 x0.01, pool3 x0.0001), Caffe geometry"),
    ("*_vgg16", "VGG16 FCN, Caffe geometry (pad 100, ceil pools, fixed crops)"),
    ("*_timm", "any timm features_only backbone (backbone=...)"),
    ("*_d8", "FCNHead on a dilated ResNet, output stride 8 (torchvision form)"),
    ("*_d16", "FCNHead on a dilated ResNet, output stride 16"),
)  # fmt: skip


def _family(name: str) -> str:
    return next((text for pattern, text in FAMILIES if fnmatch.fnmatchcase(name, pattern)), "")


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


def _window(text: str) -> tuple[int, int]:
    """A window size: ``N`` or ``HxW``."""
    return _size(text if "x" in text.lower() else f"{text}x{text}")


def _add_inference_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-optimize", action="store_true",
                   help="run the model as built (default: BatchNorm folded into convolutions, checked exact)")  # fmt: skip
    p.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch",
                   help="onnxruntime: export the model to ONNX once and run it with ONNX Runtime on the CPU "
                        "(fcnkit[onnx]; the fastest exact path on CPU, see README 'Speed')")  # fmt: skip
    g = p.add_argument_group("test-time inference (default: one whole-image pass)")
    g.add_argument("--scales", type=float, nargs="+", metavar="S", help="average over these resize factors")
    g.add_argument("--base-size", type=int, help="scales resize the long side to base_size x S (FastFCN)")
    g.add_argument("--flip", action="store_true", default=None, help="also average the mirrored image")
    g.add_argument("--slide", type=_window, metavar="N|HxW", help="sliding-window inference with this window")
    g.add_argument("--stride", type=_window, metavar="N|HxW", help="window step (default 2/3 of the window)")
    g.add_argument("--pad", action="store_true", default=None, help="pad images smaller than the window (FastFCN)")


def _inference_from_args(args: argparse.Namespace, base: dict | None = None):
    """An InferenceConfig: ``base`` (e.g. a run's ``test`` section) with the command-line options on top."""
    from .config import inference_config

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


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .engine.train import train

    cfg = load_config(args.config, args.overrides)
    result = train(cfg)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    best = f"{result.best_miou * 100:.2f}" if result.best_miou is not None else "n/a"
    print(f"run directory: {result.run_dir}  steps: {result.steps}  best val mIoU: {best}  "
          f"throughput: {result.images_per_second:.2f} images/s")  # fmt: skip
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint, read_checkpoint
    from .data import build_dataset
    from .engine.evaluate import evaluate
    from .inference import describe_inference

    ckpt = read_checkpoint(args.checkpoint)
    data_cfg = (ckpt.get("config") or {}).get("data", {})
    run_name = data_cfg.get("val_name") or data_cfg.get("name")
    name = args.data or run_name
    root = args.root or data_cfg.get("val_root") or data_cfg.get("root")
    if not name or not root:
        raise ValueError("this checkpoint does not say which dataset it was trained on: pass --data and --root")
    split = args.split or data_cfg.get("val_split", "val")
    run_options = data_cfg.get("val_options") if data_cfg.get("val_options") is not None else data_cfg.get("options")
    options = (run_options or {}) if name == run_name else {}
    dataset = build_dataset(name, root, split, **options)
    model = load_checkpoint(args.checkpoint)
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device)
    if not args.no_optimize:
        from .inference import optimized_or_plain

        model = optimized_or_plain(model, args.backend)
    inference = _inference_from_args(args, (ckpt.get("config") or {}).get("test"))
    metrics = evaluate(model, dataset, device, batch_size=args.batch_size, workers=args.workers, show_progress=True,
                       inference=inference)  # fmt: skip
    print(f"{args.checkpoint} on {name}/{split} ({len(dataset)} images); {describe_inference(inference)}")
    print(metrics.table(list(dataset.classes)))
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump(metrics.as_dict(), f, indent=2)
    if args.pictures:
        from .engine.pictures import save_evaluation_pictures

        palette = list(dataset.palette) if dataset.palette else None
        for path in save_evaluation_pictures(metrics, list(dataset.classes), Path(args.pictures), palette):
            print(f"wrote {path}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .inference import Predictor, expand_inputs, predict_files

    predictor = Predictor(args.model, device=args.device, tile=args.tile, batch_size=1,
                          inference=_inference_from_args(args), optimize=not args.no_optimize,
                          backend=args.backend)  # fmt: skip
    paths = expand_inputs(args.inputs)
    report = predict_files(predictor, paths, args.out, probs=args.probs, alpha=args.alpha)
    skipped = len(report.skipped)
    print(
        f"wrote {len(report.written)} of {len(paths)} predictions to {args.out}"
        + (f"; {skipped} skipped" if skipped else "")
    )
    return 1 if skipped else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    result = run_demo(args.out, epochs=args.epochs, train_images=args.train_images, seed=args.seed,
                      device=args.device)  # fmt: skip
    if args.min_miou is not None and result.miou * 100 < args.min_miou:
        print(f"demo mIoU {result.miou * 100:.2f} is below --min-miou {args.min_miou}", file=sys.stderr)
        return 1
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from .data import build_dataset, check_dataset

    dataset = build_dataset(args.name, args.root, args.split)
    report = check_dataset(dataset, max_samples=args.max_samples)
    print(report.format(list(dataset.classes)))
    return 1 if report.errors else 0


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

    p = sub.add_parser("train", help="train from a YAML recipe, with key.sub=value overrides")
    p.add_argument("config", help="a YAML recipe, e.g. configs/camvid/fcn8s_resnet18_camvid_360x480.yaml")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.root=/data/camvid optim.lr=0.01")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint: pixel acc, mean acc, mIoU, fwIoU, per-class IoU")
    p.add_argument("checkpoint")
    p.add_argument("--data", help="dataset name (default: the one the checkpoint was trained on)")
    p.add_argument("--root", help="dataset root (default: the training run's)")
    p.add_argument("--split", help="split (default: the run's validation split)")
    p.add_argument("--batch-size", type=int, default=1, help="1 is exact; larger batches pad images")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.add_argument("--pictures", metavar="DIR", help="write confusion_matrix.png and per_class_iou.png into DIR")
    _add_inference_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="segment images: label PNGs (palette, values = class index) + overlays")
    p.add_argument("model", help="an fcnkit checkpoint, or '<model>.<weights tag>' such as fcn_resnet50_d8.coco_voc")
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--probs", action="store_true", help="also write class probabilities (<name>_probs.npy, float16)")
    p.add_argument("--tile", type=int, help="segment images larger than this in overlapping tiles of this size")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    _add_inference_args(p)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("demo", help="generate a dataset, train, evaluate, predict and draw pictures (~4 min on CPU)")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--train-images", type=int, default=320)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--min-miou", type=float, help="exit with status 1 when the test mIoU (%%) is lower")
    p.set_defaults(func=cmd_demo)

    from .benchmark import add_benchmark_parser
    from .export import add_export_parser

    add_benchmark_parser(sub)
    add_export_parser(sub)

    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("check", help="validate a dataset: pairs, sizes, label values, class frequencies")
    p.add_argument("name", help="dataset name, e.g. camvid, voc2012, folder")
    p.add_argument("--root", required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--max-samples", type=int)
    p.set_defaults(func=cmd_data_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (KeyError, ValueError, TypeError, FileNotFoundError, ChecksumError, OfflineError, TrainingDiverged) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"fcnkit: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
