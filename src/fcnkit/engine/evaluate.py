"""Evaluation over a whole split: one confusion matrix, at each label's original resolution."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..config import InferenceConfig
from ..data import EvalTransform, pad_collate
from ..inference import infer_logits, is_plain
from ..metrics import ConfusionMatrix, SegMetrics
from ..progress import Progress, get_logger
from ..utils import eval_mode
from .distributed import DistInfo, shard_indices


class _Transformed(Dataset):
    def __init__(self, base: Dataset, transform: Callable[[dict], dict]) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        return self.transform(self.base[i])


def eval_loader(
    dataset: Dataset, model: nn.Module, batch_size: int = 1, workers: int = 0, dist_info: DistInfo | None = None
) -> DataLoader:
    """Loader over this rank's share of ``dataset``, normalised with the model's preprocessing."""
    data = _Transformed(dataset, EvalTransform(model.preprocessing))
    if dist_info is not None and dist_info.enabled:
        data = Subset(data, shard_indices(len(dataset), dist_info))
    collate = functools.partial(pad_collate, ignore_index=dataset.ignore_index)
    return DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate)


@torch.inference_mode()
def predict_batch(
    model: nn.Module, images: Tensor, amp_dtype: torch.dtype | None = None, inference: InferenceConfig | None = None
) -> Tensor:
    """Logits ``(B, C, H, W)`` in float32 for a batch of normalised images ``(B, 3, H, W)``."""
    device_type = images.device.type
    with torch.autocast(device_type, dtype=amp_dtype, enabled=amp_dtype is not None):
        if inference is None:
            return model(images)["out"].float()
        return infer_logits(model, images, inference)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    device: torch.device | str = "cpu",
    batch_size: int = 1,
    workers: int = 0,
    dist_info: DistInfo | None = None,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    show_progress: bool = False,
    inference: InferenceConfig | None = None,
) -> SegMetrics:
    """Accumulate one confusion matrix over ``dataset`` and compute the standard metrics.

    With ``dist_info`` each rank evaluates its share and the matrices are summed, so the result equals a
    single-process evaluation exactly (integer counts). Batches larger than 1 pad images to a common size;
    logits are cropped back to each label's size, but border pixels may see the padding: batch 1 is exact.

    ``inference`` selects multi-scale / flip / sliding-window evaluation (:func:`fcnkit.inference.infer_logits`);
    those run image by image at each image's own size, so their batch size only affects loading.

    ``show_progress``: a bar on a terminal, else a log line (``"fcnkit.eval"``) every tenth of the batches.
    """
    device = torch.device(device)
    cm = ConfusionMatrix(dataset.num_classes, dataset.ignore_index, device=device)
    loader = eval_loader(dataset, model, batch_size, workers, dist_info)
    progress = Progress(
        len(loader),
        "eval",
        unit="batch",
        logger=get_logger("eval"),
        log_every=max(1, len(loader) // 10),
        min_interval=10.0,
        enabled=show_progress,
    )
    with eval_mode(model), progress:
        for batch in loader:
            images = batch["image"].to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            labels = batch["label"].to(device)
            if is_plain(inference):
                pred = predict_batch(model, images, amp_dtype).argmax(1)
                for i, (h, w) in enumerate(batch["size"]):
                    cm.update(pred[i, :h, :w], labels[i, :h, :w])
            else:
                for i, (h, w) in enumerate(batch["size"]):
                    pred_i = predict_batch(model, images[i : i + 1, :, :h, :w], amp_dtype, inference).argmax(1)[0]
                    cm.update(pred_i, labels[i, :h, :w])
            progress.update()
    if dist_info is not None and dist_info.enabled:
        cm.all_reduce()
    return cm.compute()
