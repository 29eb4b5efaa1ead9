"""The out-of-the-box demo: generate a dataset, train, evaluate, predict and draw, with nothing to download.

``fcnkit demo --out runs/demo`` (or :func:`run_demo`) does what a user does with real data, on the shapes
dataset of :mod:`fcnkit.data.synthetic`:

1. writes the dataset in the folder format (``data/``: train, val and test splits, all labelled);
2. trains FCN-8s on a small timm backbone (``train/``: checkpoints, resolved config, metrics log,
   validation grids, learning curves) with the ordinary training loop and the recipe below; the val split
   is evaluated during training and picks ``best.pth``;
3. evaluates ``best.pth`` on the test split, which played no part in training or in choosing the
   checkpoint (``eval/``: metrics.json, confusion_matrix.png, per_class_iou.png);
4. segments the test images from their files (``predict/``: label PNGs and overlays, and the class legend);
5. prints a summary naming those files and the test mIoU.

About four minutes on 2 CPU cores with the defaults.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import TrainConfig, config_from_dict
from ..data import build_dataset
from ..data.synthetic import make_shapes_dataset
from ..engine.evaluate import evaluate
from ..engine.pictures import save_evaluation_pictures
from ..engine.train import train
from ..inference import Predictor, expand_inputs, predict_files
from ..visualize import legend

#: The demo's training recipe, in the same keys as a YAML file (train/config.yaml holds the resolved form).
DEMO_RECIPE: dict[str, Any] = {
    "model": {"name": "fcn8s_timm", "options": {"backbone": "regnetx_002", "upsample": "bilinear"}},
    "data": {
        "name": "folder",
        "crop_size": [128, 128],
        "scale_range": [0.75, 1.25],
        "hflip": 0.5,
        "batch_size": 16,
        "val_batch_size": 16,  # all images are 128x128: no padding, so batched evaluation is exact
        "workers": 0,  # loading a 128x128 PNG is cheaper than a worker process competing for 2 cores
    },
    "loss": {"reduction": "mean"},
    "optim": {"name": "adamw", "lr": 0.004, "weight_decay": 1e-4},
    "schedule": {"name": "cosine", "epochs": 30, "warmup_steps": 20},
    "eval_every": 10,
    "pictures": 4,
    "log_every": 20,
    "resume": False,
}


@dataclass
class DemoResult:
    out: Path
    miou: float
    pixel_acc: float
    files: dict[str, Path]
    seconds: float


def demo_config(out: Path, epochs: int = 30, seed: int = 0, device: str = "auto") -> TrainConfig:
    """The demo recipe with its paths under ``out``."""
    overrides = [
        f"data.root={out / 'data'}",
        f"output_dir={out / 'train'}",
        f"schedule.epochs={epochs}",
        f"seed={seed}",
        f"device={device}",
    ]
    return config_from_dict(DEMO_RECIPE, overrides)


def run_demo(
    out: str | Path = "runs/demo",
    epochs: int = 30,
    train_images: int = 320,
    val_images: int = 32,
    test_images: int = 64,
    seed: int = 0,
    device: str = "auto",
) -> DemoResult:
    """Run the five steps of the module docstring into ``out`` and return the numbers and files."""
    start = time.perf_counter()
    out = Path(out)
    print(f"[1/4] generating the shapes dataset in {out / 'data'}")
    make_shapes_dataset(out / "data", {"train": train_images, "val": val_images, "test": test_images}, seed=seed)

    cfg = demo_config(out, epochs, seed, device)
    backbone = cfg.model.options["backbone"]
    print(f"[2/4] training {cfg.model.name} ({backbone} backbone, from scratch) for {epochs} epochs")
    result = train(cfg)
    best = result.run_dir / "best.pth"

    print(f"[3/4] evaluating {best} on the {test_images} held-out test images")
    predictor = Predictor(best, device=device)
    test_set = build_dataset("folder", out / "data", "test")
    metrics = evaluate(predictor.model, test_set, predictor.device, batch_size=16)
    print(metrics.table(list(test_set.classes)))
    eval_dir = out / "eval"
    eval_dir.mkdir(parents=True, exist_ok=True)
    (eval_dir / "metrics.json").write_text(json.dumps(metrics.as_dict(), indent=2))
    classes, palette = list(test_set.classes), list(test_set.palette)
    matrix_png, iou_png = save_evaluation_pictures(metrics, classes, eval_dir, palette)

    print(f"[4/4] segmenting the test images into {out / 'predict'}")
    report = predict_files(predictor, expand_inputs([str(out / "data" / "images" / "test")]), out / "predict", log=None)
    legend_png = out / "predict" / "legend.png"
    legend(classes, palette).save(legend_png)

    last_grid = max((result.run_dir / "pictures").glob("val_epoch*.png"))
    files = {
        "dataset": out / "data",
        "checkpoint": best,
        "config": result.run_dir / "config.yaml",
        "metrics log": result.run_dir / "metrics.jsonl",
        "validation grid": last_grid,
        "learning curves": result.run_dir / "learning_curves.png",
        "confusion matrix": matrix_png,
        "per-class IoU": iou_png,
        "predictions": out / "predict",
        "legend": legend_png,
    }
    demo = DemoResult(out, metrics.miou, metrics.pixel_acc, files, time.perf_counter() - start)
    print(summary(demo, result.images_per_second, len(report.written)))
    return demo


def summary(demo: DemoResult, images_per_second: float, predicted: int) -> str:
    f = demo.files
    minutes, seconds = divmod(round(demo.seconds), 60)
    rows = [
        ("validation grid", f["validation grid"], "val images | ground truth | prediction, last epoch"),
        ("learning curves", f["learning curves"], "loss, learning rate and val mIoU against steps"),
        ("confusion matrix", f["confusion matrix"], "% of each true class predicted as each class"),
        ("per-class IoU", f["per-class IoU"], "one bar per class, mIoU dashed"),
        ("predictions", f["predictions"], f"{predicted} test images: <name>.png labels, <name>_overlay.jpg"),
        ("legend", f["legend"], "the class colours"),
        ("checkpoint", f["checkpoint"], "load with fcnkit.Predictor(...) or `fcnkit predict`"),
        ("config", f["config"], "the resolved training recipe"),
    ]
    width = max(len(str(path)) for _, path, _ in rows)
    lines = [
        "",
        f"fcnkit demo finished in {minutes} min {seconds:02d} s ({images_per_second:.1f} training images/s)",
        f"held-out test mIoU {demo.miou * 100:.2f} %, pixel accuracy {demo.pixel_acc * 100:.2f} %",
        "",
        "files written:",
    ]
    lines += [f"  {path!s:<{width}}  {what}" for _, path, what in rows]
    lines += [
        "",
        "the same on your own images (images/, masks/, classes.yaml; see docs/own-data.md):",
        "  fcnkit data check folder --root my_data --split train",
        "  fcnkit train configs/folder/cpu_budget30_fcn4s_regnetx008.yaml data.root=my_data",
        "  fcnkit eval runs/my_data_cpu_budget30_fcn4s_regnetx008/best.pth",
        "  fcnkit serve runs/my_data_cpu_budget30_fcn4s_regnetx008/best.pth",
    ]
    return "\n".join(lines)
