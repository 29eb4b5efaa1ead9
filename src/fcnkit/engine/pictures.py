"""Pictures written by training and evaluation.

Training: a fixed validation grid per evaluation and the learning curves. Evaluation: the confusion matrix
(row-normalised) and a per-class IoU bar chart.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from ..metrics import SegMetrics
from ..utils import eval_mode
from ..visualize import RGB, comparison_grid, plot_confusion_matrix, plot_learning_curves, plot_per_class_iou
from .runlog import read_run_log


@torch.inference_mode()
def save_validation_grid(model: nn.Module, dataset, out_png: Path, count: int, device: torch.device) -> Path:
    """Image | ground truth | prediction for the first ``count`` validation samples (the same ones every
    time, so successive grids show how the predictions evolve)."""
    images, labels, preds = [], [], []
    with eval_mode(model):
        for i in range(min(count, len(dataset))):
            sample = dataset.load(i)  # raw uint8 image and label, whatever transform the dataset has
            image = sample["image"]
            logits = model(model.preprocessing(image[None].to(device)))["out"]
            images.append(image)
            labels.append(sample["label"])
            preds.append(logits.argmax(1)[0].cpu())
    palette = list(dataset.palette)
    grid = comparison_grid(images, labels, preds, palette, list(dataset.classes), dataset.ignore_index)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out_png)
    return out_png


def save_training_pictures(model: nn.Module, dataset, run_dir: Path, epoch: int, count: int,
                           device: torch.device) -> list[Path]:  # fmt: skip
    written = [save_validation_grid(model, dataset, run_dir / "pictures" / f"val_epoch{epoch:03d}.png", count, device)]
    written.append(save_learning_curves(run_dir))
    return written


def save_learning_curves(run_dir: Path) -> Path:
    """``learning_curves.png`` of a run directory, from its ``metrics.jsonl``."""
    train, val = read_run_log(run_dir / "metrics.jsonl")
    return plot_learning_curves(train, val, run_dir / "learning_curves.png", title=run_dir.name)


def save_evaluation_pictures(metrics: SegMetrics, classes: list[str], out_dir: Path,
                             palette: list[RGB] | None = None) -> list[Path]:  # fmt: skip
    """``confusion_matrix.png`` (each ground-truth row in %) and ``per_class_iou.png`` in ``out_dir``."""
    if metrics.matrix is None:
        raise ConfigError("these metrics carry no confusion matrix (build them with metrics_from_matrix)")
    out_dir = Path(out_dir)
    return [
        plot_confusion_matrix(metrics.matrix, classes, out_dir / "confusion_matrix.png", normalize="true"),
        plot_per_class_iou(metrics.iou, classes, out_dir / "per_class_iou.png", palette=palette),
    ]
