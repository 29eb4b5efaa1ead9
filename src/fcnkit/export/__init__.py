"""ONNX: the exporter with its ONNX Runtime parity check (:mod:`.onnx`), and exported files run as models
(:mod:`.runtime`). Layer: above models and data, below inference (which runs ONNX Runtime as a backend)."""

from ..errors import ExportError, ExportVerificationError
from .onnx import DYNAMIC_AXES, ExportReport, ParityCheck, export_onnx, verify_onnx
from .runtime import INPUT_NAME, METADATA_VERSION, OUTPUT_NAME, OnnxRuntimeModel, read_metadata, require_onnx

__all__ = [
    "DYNAMIC_AXES",
    "INPUT_NAME",
    "METADATA_VERSION",
    "OUTPUT_NAME",
    "ExportError",
    "ExportReport",
    "ExportVerificationError",
    "OnnxRuntimeModel",
    "ParityCheck",
    "export_onnx",
    "read_metadata",
    "require_onnx",
    "verify_onnx",
]
