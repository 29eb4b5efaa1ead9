"""Export to ONNX, checked with ONNX Runtime, and an ONNX Runtime model with the fcnkit contract.

``export_onnx`` writes one ``.onnx`` file: input ``"input"`` (preprocessed float32 images ``(B, 3, H, W)``),
output ``"out"`` (logits ``(B, C, H, W)``), batch, height and width dynamic, and the preprocessing, classes
and architecture in the file's ``metadata_props`` (keys ``fcnkit.*``), so whoever runs the file feeds it what
the weights expect. It then runs the file with ONNX Runtime at the export size and at an odd, non-square
size, and raises when the logits or the arg-max differ from PyTorch's.

The exporter is ``torch.onnx.export(..., dynamo=True)`` (``torch.export`` underneath). Dynamic height and
width need every size in the forward to stay symbolic: the Caffe FCN's crops and the final resize are
computed from ``input.shape`` inside the graph, never baked in from the traced size. When a capture fails,
``torch.onnx`` retries with other strategies, one of which applies ``torch.export``'s suggested shapes and can
fix an axis to the traced size without an error; the exported input shape is therefore checked and such an
export refused, and the parity check runs other, odd sizes to prove the graph follows the input.

Known limit (torch 2.14): ``nn.AdaptiveAvgPool2d`` to more than 1x1 cells, as in PSPNet's pyramid pooling
(bins 2, 3, 6), is exported with index tables of the traced size, so ``psp_*`` models give wrong logits or
fail at any other size. The parity check catches it; export such models with ``dynamic=False`` at the size
they will run at. Global pooling (1x1, DeepLabV3's image pooling) is exported correctly.

``onnx``, ``onnxscript`` and ``onnxruntime`` are regular dependencies of fcnkit, imported lazily (at the first export).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import ConfigError, ExportError, ExportVerificationError
from ..preprocessing import IMAGENET
from ..utils import Parity, compare_logits, eval_mode
from .runtime import INPUT_NAME, LABELS_NAME, OUTPUT_NAME, OnnxRuntimeModel, model_metadata, require_onnx

#: Dynamic axes of the input (and of the output): name per axis.
DYNAMIC_AXES = {0: "batch", 2: "height", 3: "width"}


@dataclass(frozen=True)
class ParityCheck(Parity):
    """ONNX Runtime against PyTorch on one random input of ``batch`` images of ``size`` (H, W)."""

    size: tuple[int, int] = (0, 0)
    batch: int = 1

    def format(self) -> str:
        h, w = self.size
        return (
            f"{f'{h}x{w}':>11} {self.batch:>5} {self.max_abs_diff:>17.3g} {self.max_abs_logit:>12.4g} "
            f"{self.argmax_agreement * 100:>16.3f} %"
        )


PARITY_HEADER = f"{'size (HxW)':>11} {'batch':>5} {'max |logit diff|':>17} {'max |logit|':>12} {'argmax agreement':>18}"


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and what the ONNX Runtime check measured (``checks``: empty with
    ``verify=False``)."""

    path: Path
    opset: int
    dynamic: bool
    export_seconds: float
    checks: list[ParityCheck] = field(default_factory=list)

    def format(self) -> str:
        size_mb = self.path.stat().st_size / 1e6 if self.path.exists() else float("nan")
        axes = "batch, height and width dynamic" if self.dynamic else "static shape"
        lines = [f"wrote {self.path} ({size_mb:.1f} MB, opset {self.opset}, {axes}) in {self.export_seconds:.1f} s"]
        if self.checks:
            lines += ["ONNX Runtime (CPUExecutionProvider) against PyTorch:", PARITY_HEADER]
            lines += [check.format() for check in self.checks]
            if all(check.max_abs_logit == 0 for check in self.checks):
                lines.append("note: every logit is 0 (untrained score layers?), so the check compares nothing")
        return "\n".join(lines)


class _LogitsOnly(nn.Module):
    """The exported graph: ``input`` -> ``out``. The aux and SE heads are training-time outputs; their
    nodes and weights are pruned from the ONNX graph because nothing reads them."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)["out"]


def _other_sizes(size: tuple[int, int]) -> list[tuple[int, int]]:
    """Two odd, non-square sizes, each smaller along one axis and larger along the other than ``size``:
    sizes baked in at export (index tables, crops) then give wrong logits or fail, and odd sizes exercise
    the rounding of strided layers."""
    h, w = size
    others = []
    for a, b in ((h * 3 // 4, w * 5 // 4), (h * 5 // 4, w * 3 // 4)):
        a, b = max(3, a) | 1, max(3, b) | 1
        other = (a, b + 2) if a == b else (a, b)
        if other not in others:
            others.append(other)
    return others


def verify_onnx(
    model: nn.Module,
    onnx_model: str | os.PathLike[str] | OnnxRuntimeModel,
    sizes: Sequence[tuple[int, int]],
    *,
    batch: int = 1,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    min_agreement: float = 0.999,
    seed: int = 0,
) -> list[ParityCheck]:
    """Run ``model`` (PyTorch, eval) and the ONNX file on the same random images at each of ``sizes``.

    The images are random RGB pixels passed through ``model.preprocessing``, so the logits have the scale
    real inputs give. Raises :class:`ExportVerificationError`, with every figure, when at some size the
    largest ``|logit difference|`` exceeds ``atol + rtol * max|logit|`` or the arg-max agrees on fewer than
    ``min_agreement`` of the pixels; otherwise returns the figures.
    """
    runner = onnx_model if isinstance(onnx_model, OnnxRuntimeModel) else OnnxRuntimeModel(onnx_model)
    preprocessing = getattr(model, "preprocessing", None) or IMAGENET
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    generator = torch.Generator().manual_seed(seed)
    checks = []
    with eval_mode(model):
        for size in sizes:
            rgb = torch.randint(0, 256, (batch, 3, *size), generator=generator, dtype=torch.uint8)
            x = preprocessing(rgb)
            with torch.inference_mode():
                expected = model(x.to(device))["out"].float().cpu()
            try:
                got = runner(x)["out"].float()
            except Exception as e:  # onnxruntime's own exception types: the graph does not run at this size
                raise ExportVerificationError(
                    f"ONNX Runtime failed on a {size[0]}x{size[1]} input: {e}. The graph probably keeps a size "
                    "of the export input (e.g. adaptive pooling to more than 1x1 cells)"
                ) from e
            if got.shape != expected.shape:
                raise ExportVerificationError(
                    f"ONNX Runtime returned {tuple(got.shape)} for a {size[0]}x{size[1]} input, PyTorch "
                    f"{tuple(expected.shape)}"
                )
            parity = compare_logits(expected, got)
            checks.append(ParityCheck(**dataclasses.asdict(parity), size=(int(size[0]), int(size[1])), batch=batch))
    if not all(c.passed(atol, rtol, min_agreement) for c in checks):
        table = "\n".join([PARITY_HEADER, *(c.format() for c in checks)])
        raise ExportVerificationError(
            f"ONNX Runtime's output differs from PyTorch's (allowed: max |logit diff| <= {atol:g} + {rtol:g} x "
            f"max |logit|, arg-max agreement >= {min_agreement * 100:g} %):\n{table}"
        )
    return checks


def add_labels_output(path: str | os.PathLike[str]) -> None:
    """Give the ONNX file at ``path`` a second output, ``"labels"``: the arg-max of ``"out"`` over the classes as
    ``uint8`` ``(B, H, W)`` (``int32`` beyond 256 classes), the first largest class of each pixel as
    ``torch.argmax`` gives it. A runtime asked for ``"labels"`` alone then hands over one byte a pixel instead of
    ``C`` floats. Weights kept in an external data file stay where they are."""
    onnx = require_onnx("onnx")
    from onnx import TensorProto, helper

    model = onnx.load(os.fspath(path), load_external_data=False)
    graph = model.graph
    if any(o.name == LABELS_NAME for o in graph.output):
        return
    logits = graph.output[0]
    dims = logits.type.tensor_type.shape.dim
    classes = dims[1].dim_value if len(dims) > 1 and dims[1].HasField("dim_value") else None
    dtype = TensorProto.UINT8 if classes is not None and classes <= 256 else TensorProto.INT32
    indices = f"{LABELS_NAME}_int64"
    graph.node.extend(
        [
            helper.make_node("ArgMax", [logits.name], [indices], axis=1, keepdims=0, select_last_index=0),
            helper.make_node("Cast", [indices], [LABELS_NAME], to=dtype),
        ]
    )
    shape = [d.dim_param or d.dim_value for i, d in enumerate(dims) if i != 1] if len(dims) == 4 else None
    graph.output.append(helper.make_tensor_value_info(LABELS_NAME, dtype, shape))
    onnx.save(model, os.fspath(path))


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    sample_size: tuple[int, int] = (256, 256),
    batch: int = 1,
    opset: int | None = None,
    dynamic: bool = True,
    verify: bool = True,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    min_agreement: float = 0.999,
    sizes_to_verify: Sequence[tuple[int, int]] | None = None,
    labels: bool = False,
) -> ExportReport:
    """Export ``model`` (in eval mode) to the ONNX file ``path`` and check it with ONNX Runtime.

    The graph has one input ``"input"``, preprocessed float32 images ``(B, 3, H, W)``, and one output
    ``"out"``, logits ``(B, C, H, W)``; ``"aux"``/``"se"`` outputs are dropped. With ``dynamic`` the batch,
    height and width are free (named ``batch``, ``height``, ``width``); ``sample_size`` and ``batch`` only
    shape the input traced. The file's ``metadata_props`` carry ``fcnkit.arch``, ``fcnkit.num_classes``,
    ``fcnkit.classes``, ``fcnkit.palette`` and ``fcnkit.preprocessing`` (JSON); see :func:`read_metadata`.
    Weights above 2 GB go to an external data file next to ``path``.

    Args:
        opset: ONNX opset, 16 or later (default: the exporter's own, 20 with torch 2.14). Older opsets fail:
            the ONNX version converter has no way down from 16 for some ops.
        verify: compare with PyTorch on ONNX Runtime's CPU provider at every size of ``sizes_to_verify``
            (default: ``sample_size`` and two odd, non-square other sizes, or only ``sample_size`` when not
            ``dynamic``) and raise :class:`ExportVerificationError` when the largest |logit difference|
            exceeds ``atol + rtol * max|logit|`` or the arg-max agrees on fewer than ``min_agreement`` of
            the pixels.

        labels: also the ``"labels"`` output, each pixel's class (:func:`add_labels_output`); fcnkit's own
            inference asks for it when it needs no probabilities.

    Returns:
        An :class:`ExportReport`: the path, opset, export time and the per-size figures.
    """
    require_onnx("onnx")
    require_onnx("onnxscript")
    sample_size = (int(sample_size[0]), int(sample_size[1]))
    if sizes_to_verify is None:
        sizes_to_verify = [sample_size, *_other_sizes(sample_size)] if dynamic else [sample_size]
    sizes_to_verify = [(int(h), int(w)) for h, w in sizes_to_verify]
    if not dynamic and any(s != sample_size for s in sizes_to_verify):
        raise ConfigError(f"a static export (dynamic=False) only runs at {sample_size}, not at {sizes_to_verify}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = torch.zeros(batch, 3, *sample_size, device=device)
    start = time.perf_counter()
    with eval_mode(model):
        program = torch.onnx.export(
            _LogitsOnly(model).eval(),
            (x,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=(dict(DYNAMIC_AXES),) if dynamic else None,
            opset_version=opset,
            verbose=False,
        )
    graph = program.model.graph
    got_opset = int(program.model.opset_imports.get("", 0))
    if opset is not None and got_opset != opset:  # torch.onnx keeps its own opset when conversion fails
        raise ExportError(
            f"could not export to opset {opset} (the exporter produced opset {got_opset}); use opset 16 or later"
        )
    if dynamic:
        # torch.onnx falls back to the traced size, without an error, when the forward makes an axis constant.
        shape = graph.inputs[0].shape
        fixed = {name: shape[axis] for axis, name in DYNAMIC_AXES.items() if isinstance(shape[axis], int)}
        if fixed:
            raise ExportError(
                f"the exported graph fixes {fixed} although dynamic axes were asked for: the model's forward "
                "turns the input size into a Python constant somewhere (e.g. int(x.shape[-1])). Keep sizes "
                "symbolic there, or export with dynamic=False to run at this size only."
            )
    out_shape = graph.outputs[0].shape
    channels = out_shape[1] if out_shape is not None and isinstance(out_shape[1], int) else None
    program.model.metadata_props.update(model_metadata(model, getattr(model, "num_classes", None) or channels))
    name = (getattr(model, "arch", None) or {}).get("name", type(model).__name__)
    program.model.doc_string = f"fcnkit {name}: {INPUT_NAME} (B, 3, H, W) preprocessed -> {OUTPUT_NAME} (B, C, H, W)"
    program.save(path)
    if labels:
        add_labels_output(path)
    report = ExportReport(path, got_opset, dynamic, time.perf_counter() - start)
    if verify:
        try:
            report.checks = verify_onnx(
                model, path, sizes_to_verify, batch=batch, atol=atol, rtol=rtol, min_agreement=min_agreement
            )
        except ExportVerificationError as e:
            raise ExportVerificationError(f"{path} was written, but {e}") from None
    return report
