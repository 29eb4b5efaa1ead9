"""``Predictor``: load a model once, segment many images of any size, mode or orientation.

It applies the preprocessing stored with the weights, runs whole images by default and large ones by
sliding-window tiling (overlapping tiles whose logits are averaged), and returns per-pixel class indices at
the input's resolution, optionally with class probabilities.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from ..card import card_of
from ..config import InferenceConfig
from ..data.io import read_image
from ..errors import DataError
from ..utils import as_pair, resolve_device
from .loading import load_model
from .optimize import optimized_or_plain
from .tta import banded_bytes, can_band, class_indices, infer_labels, infer_logits, is_plain

__all__ = ["ACTIVATION_BYTES_PER_PIXEL", "MAX_RUNS", "InOrder", "Prediction", "Predictor", "to_rgb_tensor"]

#: a rough allowance for the model's own activations per input pixel of one forward pass (a dilated ResNet-50
#: FCN at stride 8 keeps a few 2048-channel float32 maps of 1/64 of the pixels alive at once), used by
#: :meth:`Predictor.memory_bytes`
ACTIVATION_BYTES_PER_PIXEL = 512

#: the most batches :meth:`Predictor.concurrent` runs at once (each on ``cores // runs`` threads), which bounds the
#: memory of the batches in flight on machines with many cores
MAX_RUNS = 4


@dataclass
class Prediction:
    """``label``: (H, W) int64 class indices; ``probs``: (C, H, W) float32 softmax, when asked for."""

    label: Tensor
    probs: Tensor | None = None


class Predictor:
    """Load once, predict many.

    Args:
        model: an fcnkit checkpoint path, ``"<model>.<weights tag>"`` or a ``Segmenter``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        tile: shorthand for sliding-window inference in ``tile x tile`` windows (images smaller than a tile
            in both directions are run whole, which is the same thing).
        overlap: fraction of a tile shared by neighbouring windows.
        batch_size: images of identical size are batched together up to this many.
        inference: test-time passes (scales, flip, slide; see :class:`fcnkit.config.InferenceConfig`). ``None``
            (the default) runs the passes of the model's card, those its training recipe was measured with (the
            ``test:`` section; one whole-image pass for a model without a recipe); ``InferenceConfig()`` runs one
            whole-image pass. ``tile`` turns whole-image passes into sliding windows; an explicit slide setting
            wins.
        optimize: run through :func:`fcnkit.optimize_for_inference` with its exact defaults (BatchNorm folded
            into the convolutions, checked against the plain model on a random input); if that check fails
            the plain model is used and a warning says why.
        backend: for ``optimize``: ``"auto"`` (ONNX Runtime for a CPU model when it is installed, else PyTorch),
            ``"torch"`` or ``"onnxruntime"`` (the model exported to ONNX, the file cached under
            ``$FCNKIT_CACHE/onnx`` so that the next Predictor of the same weights does not export again).
        weights: which weights of a training run's ``last.pth``: ``"auto"`` (those that were evaluated: the EMA
            when the run kept one), ``"ema"`` or ``"raw"`` (see :func:`fcnkit.checkpoint.select_weights`).
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | nn.Module,
        device: str = "auto",
        tile: int | None = None,
        overlap: float = 1 / 3,
        batch_size: int = 1,
        inference: InferenceConfig | None = None,
        optimize: bool = True,
        backend: str = "auto",
        weights: str = "auto",
    ) -> None:
        self.device = resolve_device(device)
        self.model = load_model(model, weights).to(self.device).eval()
        if optimize:
            self.model = optimized_or_plain(self.model, backend)
        #: what the model is: classes, palette, preprocessing, the recipe's passes, which weights, provenance
        self.card = card_of(self.model)
        self.batch_size = max(1, batch_size)
        inference = self.card.test if inference is None else inference
        if tile and inference.mode == "whole":
            stride = max(1, round(tile * (1 - overlap)))
            inference = dataclasses.replace(inference, mode="slide", crop_size=[tile, tile], stride=[stride, stride])
        self.inference = inference
        self.num_classes = int(self.model.num_classes or 0)
        self.classes = list(self.model.classes or [f"class {i}" for i in range(self.num_classes)])

    def _logits(self, x: Tensor) -> Tensor:
        return infer_logits(self.model, x, self.inference, self.num_classes)

    @torch.inference_mode()
    def predict_labels(self, rgb: Tensor, stop: Callable[[], None] | None = None) -> Tensor:
        """Class indices ``(B, H, W)`` (``uint8`` for up to 256 classes, else ``int32``) of uint8 RGB ``rgb``
        ``(B, 3, H, W)`` or ``(3, H, W)``, in the least memory: sliding windows go band by band
        (:func:`~fcnkit.inference.tta.infer_labels`), with the same labels as :meth:`predict_tensor`. ``stop`` is
        called between windows and may raise to abandon the work."""
        if rgb.ndim == 3:
            rgb = rgb[None]
        rgb = rgb.to(self.device)
        if can_band(self.inference):
            return infer_labels(self.model, rgb, self.inference, self.num_classes, stop)
        if stop is not None:
            stop()
        return self.model_labels(self.model.preprocessing(rgb))

    @torch.inference_mode()
    def model_labels(self, x: Tensor) -> Tensor:
        """:meth:`predict_labels` of images already preprocessed, ``x`` ``(B, 3, H, W)``, its passes run whole (no
        band by band): the model's own arg-max for one plain pass on a runtime that computes it in its graph (one
        byte a pixel out), else the arg-max of the passes' logits."""
        inside = getattr(self.model, "labels", None) if is_plain(self.inference) else None
        labels = inside(x) if callable(inside) else None
        if labels is None:
            labels = class_indices(self._logits(x))
        return labels.to(torch.uint8 if self.num_classes <= 256 else torch.int32)

    def concurrent(self, images: int | None = None) -> tuple[Predictor, int]:
        """For streams of images: a predictor whose :meth:`predict_labels` and :meth:`predict_tensor` may be called
        from ``runs`` threads at once, and ``runs``. ``images``: how many the stream holds, when known (``None``
        for a video or camera); no more than one batch of them is not a stream (this predictor and 1).

        With ONNX Runtime on the CPU that is the same model in a session whose operators run on ``cores // runs``
        threads, ``runs = min(cores, MAX_RUNS)`` (``cores``: ``torch.get_num_threads()``, the physical cores unless
        limited): each batch then keeps its own cores, with no hand-over between cores inside every operator. On 2
        cores that gives 20-30 % more frames/s than one run on both cores, and files and video frames decoded and
        written beside the model disturb it less (``benchmarks/stream_speed.py``). One image still goes fastest
        through this predictor, on all cores. The copy is a second session of the same file, opened at the first
        call and kept (the weights are then in memory twice). Other runtimes, and a single core: this predictor
        and 1.
        """
        cores = torch.get_num_threads()
        runs = min(cores, MAX_RUNS)
        with_threads = getattr(self.model, "with_threads", None)
        one_batch = images is not None and images <= self.batch_size
        if runs < 2 or one_batch or self.device.type != "cpu" or not callable(with_threads):
            return self, 1
        opened = getattr(self, "_threaded", None)  # (model, its copy): opened once, reused by every stream
        if opened is None or opened[0] is not self.model:
            opened = self._threaded = (self.model, with_threads(max(1, cores // runs)))
        if opened[1] is None:
            return self, 1
        clone = copy.copy(self)
        clone.model = opened[1]
        return clone, runs

    def memory_bytes(self, height: int, width: int) -> int:
        """An estimate of the memory one ``height x width`` image takes in :meth:`predict_labels`, beyond the model:
        the pixels, the labels, the logits (one band of them for banded sliding windows, else several full copies,
        more with test-time passes) and :data:`ACTIVATION_BYTES_PER_PIXEL` for each pixel of one forward pass."""
        cfg, pixels = self.inference, height * width
        if can_band(cfg):
            ch, cw = as_pair(cfg.crop_size)
            window = ch * cw if cfg.pad else min(ch, height) * min(cw, width)
            logits = banded_bytes(cfg, self.num_classes, height, width)
        else:
            scaled = pixels * max(1.0, max(cfg.scales)) ** 2  # the largest scale's pixels
            window = min(scaled, math.prod(as_pair(cfg.crop_size))) if cfg.mode == "slide" else scaled
            # the float32 input and about three logit maps: the passes' sum, one pass's and a division's result
            logits = scaled * (12 + 12 * self.num_classes)
        return int(pixels * 4 + logits + window * ACTIVATION_BYTES_PER_PIXEL)

    @torch.inference_mode()
    def predict_tensor(self, rgb: Tensor, probs: bool = False) -> list[Prediction]:
        """``rgb``: uint8 ``(B, 3, H, W)`` or ``(3, H, W)`` RGB pixels -> one ``Prediction`` per image.

        Without ``probs``, sliding windows at scale 1 run band by band (see :meth:`predict_labels`)."""
        if rgb.ndim == 3:
            rgb = rgb[None]
        if not probs and can_band(self.inference):
            labels = self.predict_labels(rgb).long().cpu()
            return [Prediction(labels[i]) for i in range(labels.shape[0])]
        x = self.model.preprocessing(rgb.to(self.device))
        logits = self._logits(x)
        labels = class_indices(logits).cpu()
        soft = logits.softmax(1).cpu() if probs else None
        return [Prediction(labels[i], soft[i] if soft is not None else None) for i in range(labels.shape[0])]

    def predict(
        self, image: str | os.PathLike[str] | Image.Image | np.ndarray | Tensor, probs: bool = False
    ) -> Prediction:
        """One image: a file (EXIF orientation applied), a PIL image, an ``(H, W, 3)`` array or a tensor."""
        return self.predict_tensor(to_rgb_tensor(image), probs)[0]

    def predict_many(self, images: Iterable[Tensor], probs: bool = False) -> Iterator[Prediction]:
        """Predictions in order; consecutive images of the same size share a batch."""
        pending: list[Tensor] = []
        for image in images:
            if pending and (len(pending) == self.batch_size or pending[0].shape != image.shape):
                yield from self.predict_tensor(torch.stack(pending), probs)
                pending = []
            pending.append(image)
        if pending:
            yield from self.predict_tensor(torch.stack(pending), probs)


def to_rgb_tensor(image: str | os.PathLike[str] | Image.Image | np.ndarray | Tensor) -> Tensor:
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, Image.Image):
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise DataError(f"expected an (H, W, 3) RGB array, got shape {image.shape}")
        image = np.ascontiguousarray(image) if image.flags.writeable else image.copy()  # e.g. np.asarray(PIL image)
        return torch.from_numpy(image).permute(2, 0, 1).to(torch.uint8)
    if isinstance(image, Tensor) and image.ndim == 3 and image.shape[0] == 3:
        return image
    raise TypeError(f"cannot read an image from {type(image).__name__}")


T = TypeVar("T")
R = TypeVar("R")


class InOrder(Generic[T, R]):
    """Work on ``runs`` threads at once, handed back in the order it was given: the model stage of a pipeline.

    :meth:`submit` starts ``work()`` and returns the ``(tag, result)`` pairs of the oldest jobs that are done,
    waiting for the oldest when ``runs`` jobs are already running, so no more than ``runs`` are ever in flight;
    :meth:`drain` waits for the rest. With ``runs == 1`` the work runs at once in the caller's thread. An error in a
    job is raised by the call that hands its result back. Use it as a context manager: leaving waits for (and
    discards) the jobs still running, so none outlives the pipeline.
    """

    def __init__(self, runs: int, name: str = "fcnkit-model") -> None:
        self.runs = max(1, runs)
        self.pool = ThreadPoolExecutor(self.runs, thread_name_prefix=name) if self.runs > 1 else None
        self.pending: deque[tuple[T, Future[R]]] = deque()

    def submit(self, tag: T, work: Callable[[], R]) -> list[tuple[T, R]]:
        if self.pool is None:
            return [(tag, work())]
        self.pending.append((tag, self.pool.submit(work)))
        done = []
        while self.pending and (self.pending[0][1].done() or len(self.pending) > self.runs):
            first, future = self.pending.popleft()
            done.append((first, future.result()))
        return done

    def drain(self) -> Iterator[tuple[T, R]]:
        while self.pending:
            tag, future = self.pending.popleft()
            yield tag, future.result()

    def __enter__(self) -> InOrder[T, R]:
        return self

    def __exit__(self, *exc: Any) -> None:
        for _, future in self.pending:
            future.cancel()
        self.pending.clear()
        if self.pool is not None:
            self.pool.shutdown(wait=True)
