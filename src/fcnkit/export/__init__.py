"""ONNX: the exporter with its ONNX Runtime parity check (:mod:`.onnx`), and exported files run as models
(:mod:`.runtime`), and the on-disk cache of exports (:mod:`.cache`). Layer: above models and data, below inference (which runs ONNX Runtime as a backend)."""

from ..errors import ExportError, ExportVerificationError
from .cache import CachedExport, cached_onnx, export_key, onnx_cache_dir, weights_digest
from .onnx import DYNAMIC_AXES, ExportReport, ParityCheck, add_labels_output, export_onnx, verify_onnx
from .runtime import (
    INPUT_NAME,
    LABELS_NAME,
    METADATA_VERSION,
    OUTPUT_NAME,
    OnnxRuntimeModel,
    read_metadata,
    require_onnx,
)

__all__ = [
    "DYNAMIC_AXES",
    "INPUT_NAME",
    "LABELS_NAME",
    "METADATA_VERSION",
    "OUTPUT_NAME",
    "CachedExport",
    "ExportError",
    "ExportReport",
    "ExportVerificationError",
    "OnnxRuntimeModel",
    "ParityCheck",
    "add_labels_output",
    "cached_onnx",
    "export_key",
    "export_onnx",
    "onnx_cache_dir",
    "read_metadata",
    "require_onnx",
    "verify_onnx",
    "weights_digest",
]
