"""An exported ``.onnx`` file run by OpenVINO on the CPU, with the fcnkit model contract.

``OpenVINOModel(path)`` reads the ONNX file :func:`fcnkit.export.export_onnx` wrote (the export cache's, with
``backend="openvino"``) and compiles it for OpenVINO's CPU plugin: ``model(x)["out"]``, ``.preprocessing``,
``.num_classes``, ``.classes``, ``.palette`` as :class:`~fcnkit.export.OnnxRuntimeModel` has them (the same
metadata). Precision is pinned to f32 (``INFERENCE_PRECISION_HINT``): on CPUs with bf16 or AMX units the plugin
would otherwise run in bf16 and the logits would change. ``openvino`` is optional (``pip install
'fcnkit[openvino]'``) and imported when a model is built.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..card import CardAttributes
from ..errors import ConfigError, MissingFileError
from ..utils import require
from .runtime import card_in_file, read_metadata

__all__ = ["OpenVINOModel", "require_openvino"]

PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT")


def require_openvino() -> Any:
    return require("openvino", "openvino", "the OpenVINO inference backend")


class OpenVINOModel(CardAttributes, nn.Module):
    """An ONNX file compiled by OpenVINO for the CPU: ``model(x) -> {"out": logits}`` like any fcnkit model.

    Args:
        path: the ``.onnx`` file (fcnkit metadata give classes, palette and preprocessing).
        threads: OpenVINO's inference threads (default: its own choice, the physical cores).
        hint: ``"LATENCY"`` (one request at a time, the default) or ``"THROUGHPUT"``.
    """

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None, hint: str = "LATENCY") -> None:
        super().__init__()
        ov = require_openvino()
        if hint not in PERFORMANCE_HINTS:
            raise ConfigError(f"hint must be one of {PERFORMANCE_HINTS}, got {hint!r}")
        self.path = Path(path)
        if not self.path.is_file():
            raise MissingFileError(f"{self.path}: no such ONNX file")
        core = ov.Core()
        graph = core.read_model(os.fspath(self.path))
        config: dict[str, Any] = {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(graph, "CPU", config)
        # an infer request holds its own buffers: one per thread, so that a server's threads never share one
        self._requests = threading.local()
        self.output = self.compiled.outputs[0]
        meta = read_metadata(_metadata(self.path))
        self.num_classes: int | None = meta["num_classes"]
        self.card = card_in_file(meta, self.num_classes, self.path)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """``x``: preprocessed images ``(B, 3, H, W)`` -> ``{"out": (B, C, H, W)}`` float32 logits."""
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self.compiled.create_infer_request()
        result = request.infer({0: array})
        out = torch.from_numpy(result[self.output].copy())
        return {"out": out.to(x.device)}

    def extra_repr(self) -> str:
        return f"{self.path}, OpenVINO CPU"


def _metadata(path: Path) -> dict[str, str]:
    """The ONNX file's ``metadata_props`` (read with ``onnx``; the weights are parsed, not converted)."""
    onnx = require("onnx", "onnx", "reading ONNX metadata")
    model = onnx.load(os.fspath(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}
