"""int8 models: static post-training quantization of an exported ONNX file with ONNX Runtime, calibrated on
real images, and the file's own record of how it was made and what it costs.

``quantize_onnx(model, calib_images, out)`` exports ``model`` (fp32, BatchNorm folded), runs ONNX Runtime's
shape inference and graph pre-processing, then ``quantize_static`` in the QDQ format: weights int8 per output
channel, activations uint8 per tensor with ranges from the calibration images (preprocessed as the model
expects, each at its own size). Afterwards the int8 graph and the fp32 one are run on ``check_images`` (default:
the calibration images) and the arg-max agreement is measured. The output file carries the fp32 export's
``fcnkit.*`` metadata (so ``fcnkit predict`` / ``eval`` and :class:`~fcnkit.Predictor` run it like any model)
and ``fcnkit.quantization``: method, settings, calibration images, agreement, ORT version.

On AVX2 CPUs without VNNI, ONNX Runtime's u8s8 kernels can saturate (a pair of products overflows int16);
``reduce_range=True`` (7-bit weights) avoids it at some cost in precision. ONNX Runtime's documentation
(quantization, "When and why do I need to try U8U8?") describes it.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.io import read_image
from ..errors import ConfigError, DataError
from ..export import OnnxRuntimeModel, add_labels_output, export_onnx, require_onnx
from ..utils import compare_logits
from .files import expand_inputs
from .optimize import fold_batchnorm

log = logging.getLogger("fcnkit.quantize")

__all__ = ["CALIBRATION_METHODS", "QuantizeReport", "quantize_onnx"]

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


@dataclass
class QuantizeReport:
    path: Path
    method: str
    per_channel: bool
    reduce_range: bool
    calibration_images: int
    #: arg-max agreement of int8 with fp32 on the check images, and the largest |logit| difference
    argmax_agreement: float
    max_abs_diff: float
    check_images: int
    seconds: float
    skipped: list[str] = field(default_factory=list)

    def as_metadata(self) -> dict[str, Any]:
        """The record stored in the file (everything but its path)."""
        record = asdict(self)
        record.pop("path")
        return record


def _load(files: Sequence[Path], preprocessing: Any, max_side: int | None) -> tuple[list[np.ndarray], list[str]]:
    """Preprocessed ``(1, 3, H, W)`` float32 arrays of the readable files, and the names of the others."""
    arrays, skipped = [], []
    for path in files:
        try:
            image = read_image(path)  # (3, H, W) uint8 RGB
        except (DataError, OSError, ValueError) as e:
            skipped.append(f"{path.name}: {e}")
            continue
        x = image.float().unsqueeze(0)  # (1, 3, H, W), 0-255
        if max_side and max(x.shape[-2:]) > max_side:
            s = max_side / max(x.shape[-2:])
            size = [max(1, round(x.shape[-2] * s)), max(1, round(x.shape[-1] * s))]
            x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        arrays.append(preprocessing(x).numpy().astype(np.float32))
    return arrays, skipped


class _Reader:
    """ONNX Runtime's ``CalibrationDataReader`` protocol over preprocessed arrays."""

    def __init__(self, input_name: str, arrays: Sequence[np.ndarray]) -> None:
        self.input_name, self.arrays = input_name, list(arrays)
        self._it: Iterator[np.ndarray] = iter(self.arrays)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        return None if x is None else {self.input_name: x}

    def rewind(self) -> None:
        self._it = iter(self.arrays)


def quantize_onnx(
    model: nn.Module,
    calib_images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    method: str = "minmax",
    per_channel: bool = True,
    reduce_range: bool = False,
    limit: int | None = 64,
    max_side: int | None = None,
    check_images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
) -> QuantizeReport:
    """Write an int8 ONNX file of ``model`` to ``out``, calibrated on ``calib_images`` (a folder or files).

    Args:
        method: activation ranges from the calibration images' ``"minmax"``, a ``"percentile"`` (99.999) or
            ``"entropy"`` (KL divergence, as TensorRT calibrates). ``minmax`` keeps only each tensor's extremes
            per image; the other two keep every activation of every calibration image (ONNX Runtime's histogram
            calibrators), so give them fewer or smaller images (``limit``, ``max_side``).
        per_channel: a scale per output channel of each weight (more precise, same speed).
        reduce_range: 7-bit weights, for AVX2 CPUs without VNNI where u8s8 products can saturate.
        limit: at most this many calibration images (the first, sorted by name).
        max_side: shrink larger images first so the long side is this (calibration memory grows with size).
        check_images: images to measure int8 against fp32 on (default: the calibration images).
    """
    require_onnx("onnxruntime")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    onnx = require_onnx("onnx")
    if method not in CALIBRATION_METHODS:
        raise ConfigError(f"method must be one of {CALIBRATION_METHODS}, got {method!r}")
    start = time.perf_counter()
    files = _files(calib_images, limit)
    preprocessing = model.preprocessing
    arrays, skipped = _load(files, preprocessing, max_side)
    if not arrays:
        where = calib_images if isinstance(calib_images, (str, os.PathLike)) else f"{len(files)} files"
        detail = f" ({'; '.join(skipped[:3])})" if skipped else ""
        raise DataError(f"no readable calibration image in {where}{detail}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fcnkit_int8_") as tmp:
        fp32, prepared = Path(tmp) / "fp32.onnx", Path(tmp) / "prepared.onnx"
        work, _ = fold_batchnorm(copy.deepcopy(model).eval())  # in place: on a copy
        export_onnx(work, fp32, verify=False)
        # in the temporary folder: when ORT's symbolic shape inference gives up it saves what it inferred as
        # sym_shape_infer_temp.onnx plus a weights file into the current directory, which would be the user's
        with contextlib.chdir(tmp):
            try:
                quant_pre_process(os.fspath(fp32), os.fspath(prepared), skip_symbolic_shape=False)
            except Exception as exc:  # ORT raises a bare Exception
                # ORT's symbolic shape inference gives up on some graphs with symbolic H / W (the timm FCN-8s's
                # crop arithmetic, "Incomplete symbolic shape inference"); ONNX's own shape inference, which the
                # quantizer needs, still works there.
                log.info(f"symbolic shape inference failed ({exc}); using ONNX shape inference only")
                quant_pre_process(os.fspath(fp32), os.fspath(prepared), skip_symbolic_shape=True)
        reader = _Reader("input", arrays)
        calibrate = {
            "minmax": CalibrationMethod.MinMax,
            "percentile": CalibrationMethod.Percentile,
            "entropy": CalibrationMethod.Entropy,
        }[method]
        quantize_static(
            os.fspath(prepared),
            os.fspath(out),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=calibrate,
            # minmax reads each tensor's min and max (ReduceMin / ReduceMax added to the graph): little memory; the
            # histogram methods keep every activation of every calibration image until the end
            extra_options={} if method == "minmax" else {"CalibPercentile": 99.999},
        )
        fp32_model = OnnxRuntimeModel(fp32)
        checks = arrays if check_images is None else _load(_files(check_images, None), preprocessing, max_side)[0]
        if not checks:
            raise DataError(f"no readable image in {check_images} to check the int8 model on")
        int8_model = OnnxRuntimeModel(out, preprocessing=preprocessing)
        agreement, worst = _agreement(fp32_model, int8_model, checks)
        metadata = {p.key: p.value for p in onnx.load(os.fspath(fp32), load_external_data=False).metadata_props}
    report = QuantizeReport(
        out, method, per_channel, reduce_range, len(arrays), agreement, worst, len(checks),
        time.perf_counter() - start, skipped,
    )  # fmt: skip
    quantized = onnx.load(os.fspath(out))
    record = {**report.as_metadata(), "onnxruntime": require_onnx("onnxruntime").__version__}
    metadata["fcnkit.quantization"] = json.dumps({**record, "format": "QDQ u8 activations, s8 weights"}, default=str)
    del quantized.metadata_props[:]
    for key, value in metadata.items():
        entry = quantized.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(quantized, os.fspath(out))
    add_labels_output(out)  # the arg-max in the graph: predict and serve take uint8 labels out of it
    return report


def _files(images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], limit: int | None) -> list[Path]:
    """Image files of a folder (sorted, as ``fcnkit predict`` lists them), a file, or a list of them."""
    items = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    for item in items:
        if not Path(item).exists():
            raise DataError(f"{item}: no such folder of calibration images")
    files = expand_inputs([os.fspath(item) for item in items])
    return files[:limit] if limit else files


def _agreement(fp32: nn.Module, int8: nn.Module, arrays: Sequence[np.ndarray]) -> tuple[float, float]:
    """Pixel-weighted arg-max agreement of the two models over ``arrays``, and the largest |logit| difference."""
    agree = total = 0
    worst = 0.0
    for a in arrays:
        x = torch.from_numpy(a)
        parity = compare_logits(fp32(x)["out"], int8(x)["out"])
        pixels = a.shape[-2] * a.shape[-1]
        agree += parity.argmax_agreement * pixels
        total += pixels
        worst = max(worst, parity.max_abs_diff)
    return agree / total, worst
