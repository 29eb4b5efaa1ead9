"""Export to ONNX, checked with ONNX Runtime, and an ONNX Runtime model with the fcnkit contract.

``export_onnx`` writes one ``.onnx`` file: input ``"input"`` (preprocessed float32 images ``(B, 3, H, W)``),
output ``"out"`` (logits ``(B, C, H, W)``), batch, height and width dynamic, and the preprocessing, classes
and architecture in the file's ``metadata_props`` (keys ``fcnkit.*``), so whoever runs the file feeds it what
the weights expect. It then runs the file with ONNX Runtime at the export size and at an odd, non-square
size, and raises when the logits or the arg-max differ from PyTorch's.

``OnnxRuntimeModel`` reads such a file back as a model: ``model(x)["out"]``, ``.preprocessing``,
``.num_classes``, ``.classes``, ``.palette``, so :class:`fcnkit.Predictor` runs it in place of a torch model.

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

``onnx``, ``onnxscript`` and ``onnxruntime`` are optional (``pip install 'fcnkit[onnx]'``) and imported lazily.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .preprocessing import IMAGENET, Preprocessing

INPUT_NAME, OUTPUT_NAME = "input", "out"
#: Dynamic axes of the input (and of the output): name per axis.
DYNAMIC_AXES = {0: "batch", 2: "height", 3: "width"}
#: Version of the ``fcnkit.*`` metadata layout written into the ONNX file.
METADATA_VERSION = 1
GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")


class ExportError(ValueError):
    """The model could not be exported as asked (e.g. an axis meant to be dynamic was fixed)."""


class ExportVerificationError(ExportError):
    """ONNX Runtime's output differs from PyTorch's by more than the tolerance."""


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"ONNX export and ONNX Runtime inference need {module!r}: pip install 'fcnkit[onnx]' "
            "(onnx, onnxscript, onnxruntime)"
        ) from e


@dataclass(frozen=True)
class ParityCheck:
    """ONNX Runtime against PyTorch on one random input of ``batch`` images of ``size`` (H, W)."""

    size: tuple[int, int]
    batch: int
    max_abs_diff: float
    max_abs_logit: float
    argmax_agreement: float  # fraction of pixels, 0-1

    def passed(self, atol: float, rtol: float, min_agreement: float) -> bool:
        return self.max_abs_diff <= atol + rtol * self.max_abs_logit and self.argmax_agreement >= min_agreement

    def format(self) -> str:
        h, w = self.size
        return (f"{f'{h}x{w}':>11} {self.batch:>5} {self.max_abs_diff:>17.3g} {self.max_abs_logit:>12.4g} "
                f"{self.argmax_agreement * 100:>16.3f} %")  # fmt: skip


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


def _model_metadata(model: nn.Module, num_classes: int | None) -> dict[str, str]:
    from . import __version__

    arch = getattr(model, "arch", None) or {"name": type(model).__name__}
    preprocessing = getattr(model, "preprocessing", None) or IMAGENET
    palette = getattr(model, "palette", None)
    classes = getattr(model, "classes", None)
    return {
        "fcnkit.metadata_version": str(METADATA_VERSION),
        "fcnkit.version": __version__,
        "fcnkit.arch": json.dumps(arch, default=str),
        "fcnkit.num_classes": str(num_classes) if num_classes else "",
        "fcnkit.classes": json.dumps(list(classes) if classes else None),
        "fcnkit.palette": json.dumps([list(c) for c in palette] if palette else None),
        "fcnkit.preprocessing": json.dumps(preprocessing.to_dict()),
        "fcnkit.input": (
            f"{INPUT_NAME!r}: float32 (B, 3, H, W) = (reorder(rgb) * scale - mean) / std, "
            "rgb in 0-255, parameters in fcnkit.preprocessing"
        ),
        "fcnkit.output": f"{OUTPUT_NAME!r}: float32 logits (B, C, H, W), the input size",
    }


def read_metadata(props: dict[str, str]) -> dict[str, Any]:
    """The ``fcnkit.*`` metadata of an exported file, decoded: ``arch``, ``num_classes``, ``classes``,
    ``palette``, ``preprocessing`` (a :class:`Preprocessing`); absent keys are ``None``."""
    out: dict[str, Any] = {k: None for k in ("arch", "num_classes", "classes", "palette", "preprocessing")}
    if props.get("fcnkit.arch"):
        out["arch"] = json.loads(props["fcnkit.arch"])
    if props.get("fcnkit.num_classes"):
        out["num_classes"] = int(props["fcnkit.num_classes"])
    if props.get("fcnkit.classes"):
        out["classes"] = json.loads(props["fcnkit.classes"])
    if props.get("fcnkit.palette"):
        palette = json.loads(props["fcnkit.palette"])
        out["palette"] = [tuple(c) for c in palette] if palette else None
    if props.get("fcnkit.preprocessing"):
        out["preprocessing"] = Preprocessing.from_dict(json.loads(props["fcnkit.preprocessing"]))
    return out


class OnnxRuntimeModel(nn.Module):
    """An exported ``.onnx`` file run by ONNX Runtime, with the fcnkit model contract.

    ``model(x)`` maps preprocessed float images ``(B, 3, H, W)`` (a torch tensor, any device) to
    ``{"out": (B, C, H, W)}`` float32 logits on ``x``'s device. ``preprocessing``, ``num_classes``,
    ``classes``, ``palette`` and ``arch`` come from the file's fcnkit metadata, so :class:`fcnkit.Predictor`
    and :func:`fcnkit.inference.infer_logits` accept it in place of a torch model. It has no parameters:
    ``.to(device)`` and ``.eval()`` change nothing (the session runs on its execution providers).

    Args:
        model: a path to an ``.onnx`` file or an ``onnxruntime.InferenceSession``.
        intra_op_threads: ONNX Runtime's threads per operator (default: its own choice, the physical cores).
        graph_optimization: ``"disable"``, ``"basic"``, ``"extended"`` or ``"all"`` (ONNX Runtime's levels;
            ``"all"`` adds layout optimisations and fusions such as Conv+Add+Relu).
        providers: execution providers, default ``["CPUExecutionProvider"]``.
        preprocessing: override the file's metadata (needed for ONNX files not written by fcnkit, which
            otherwise get ImageNet preprocessing and a warning).
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | Any,
        *,
        intra_op_threads: int | None = None,
        graph_optimization: str = "all",
        providers: Sequence[str] | None = None,
        preprocessing: Preprocessing | None = None,
    ) -> None:
        super().__init__()
        ort = _require("onnxruntime")
        if isinstance(model, ort.InferenceSession):
            session, self.path = model, None
        else:
            if graph_optimization not in GRAPH_OPTIMIZATION_LEVELS:
                raise ValueError(f"graph_optimization must be one of {GRAPH_OPTIMIZATION_LEVELS}, got "
                                 f"{graph_optimization!r}")  # fmt: skip
            options = ort.SessionOptions()
            level = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
                     "all": "ORT_ENABLE_ALL"}[graph_optimization]  # fmt: skip
            options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
            if intra_op_threads:
                options.intra_op_num_threads = int(intra_op_threads)
            self.path = Path(model)
            if not self.path.is_file():
                raise FileNotFoundError(f"{self.path}: no such ONNX file")
            session = ort.InferenceSession(
                os.fspath(self.path), options, providers=list(providers or ["CPUExecutionProvider"])
            )
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name
        meta = read_metadata(session.get_modelmeta().custom_metadata_map)
        channels = session.get_outputs()[0].shape[1]
        self.num_classes: int | None = meta["num_classes"] or (channels if isinstance(channels, int) else None)
        self.classes: list[str] | None = meta["classes"]
        self.palette: list[tuple[int, int, int]] | None = meta["palette"]
        self.arch: dict[str, Any] = meta["arch"] or {}
        if preprocessing is None and meta["preprocessing"] is None:
            warnings.warn(f"{self.path or 'this ONNX model'} has no fcnkit preprocessing metadata: assuming "
                          "ImageNet RGB mean/std (pass preprocessing=... if that is wrong)", stacklevel=2)  # fmt: skip
        self.preprocessing: Preprocessing = preprocessing or meta["preprocessing"] or IMAGENET

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """``x``: preprocessed images ``(B, 3, H, W)`` -> ``{"out": (B, C, H, W)}`` float32 logits."""
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (out,) = self.session.run([self.output_name], {self.input_name: array})
        return {"out": torch.from_numpy(out).to(x.device)}

    def extra_repr(self) -> str:
        return f"{self.path or 'InferenceSession'}, providers={self.session.get_providers()}"


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
    was_training = model.training
    model.eval()
    checks = []
    try:
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
            agreement = float((got.argmax(1) == expected.argmax(1)).float().mean())
            checks.append(ParityCheck((int(size[0]), int(size[1])), batch, float((got - expected).abs().max()),
                                      float(expected.abs().max()), agreement))  # fmt: skip
    finally:
        model.train(was_training)
    if not all(c.passed(atol, rtol, min_agreement) for c in checks):
        table = "\n".join([PARITY_HEADER, *(c.format() for c in checks)])
        raise ExportVerificationError(
            f"ONNX Runtime's output differs from PyTorch's (allowed: max |logit diff| <= {atol:g} + {rtol:g} x "
            f"max |logit|, arg-max agreement >= {min_agreement * 100:g} %):\n{table}"
        )
    return checks


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

    Returns:
        An :class:`ExportReport`: the path, opset, export time and the per-size figures.
    """
    _require("onnx")
    _require("onnxscript")
    sample_size = (int(sample_size[0]), int(sample_size[1]))
    if sizes_to_verify is None:
        sizes_to_verify = [sample_size, *_other_sizes(sample_size)] if dynamic else [sample_size]
    sizes_to_verify = [(int(h), int(w)) for h, w in sizes_to_verify]
    if not dynamic and any(s != sample_size for s in sizes_to_verify):
        raise ValueError(f"a static export (dynamic=False) only runs at {sample_size}, not at {sizes_to_verify}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = torch.zeros(batch, 3, *sample_size, device=device)
    start = time.perf_counter()
    try:
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
    finally:
        model.train(was_training)
    graph = program.model.graph
    got_opset = int(program.model.opset_imports.get("", 0))
    if opset is not None and got_opset != opset:  # torch.onnx keeps its own opset when conversion fails
        raise ExportError(f"could not export to opset {opset} (the exporter produced opset {got_opset}); "
                          "use opset 16 or later")  # fmt: skip
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
    program.model.metadata_props.update(_model_metadata(model, getattr(model, "num_classes", None) or channels))
    name = (getattr(model, "arch", None) or {}).get("name", type(model).__name__)
    program.model.doc_string = f"fcnkit {name}: {INPUT_NAME} (B, 3, H, W) preprocessed -> {OUTPUT_NAME} (B, C, H, W)"
    program.save(path)
    report = ExportReport(path, got_opset, dynamic, time.perf_counter() - start)
    if verify:
        try:
            report.checks = verify_onnx(model, path, sizes_to_verify, batch=batch, atol=atol, rtol=rtol,
                                        min_agreement=min_agreement)  # fmt: skip
        except ExportVerificationError as e:
            raise ExportVerificationError(f"{path} was written, but {e}") from None
    return report


def add_export_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Declare ``fcnkit export`` on the ``fcnkit`` command's subparsers."""
    from .cli import _size

    p = subparsers.add_parser("export", help="export a model to ONNX and check it with ONNX Runtime")
    p.add_argument("model", help="an fcnkit checkpoint, '<model>.<weights tag>' such as fcn_resnet50_d8.coco_voc, "
                                 "or a registered model name (random weights, see --num-classes)")  # fmt: skip
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--size", type=_size, default=(256, 256), metavar="HxW",
                   help="the sample input traced and checked first (default 256x256); H and W stay dynamic")  # fmt: skip
    p.add_argument("--batch", type=int, default=1, help="batch of the sample input (the batch stays dynamic)")
    p.add_argument("--opset", type=int, help="ONNX opset, 16 or later (default: the exporter's, 20 in torch 2.14)")
    p.add_argument("--static", action="store_true", help="fix batch, height and width to --batch and --size")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime against PyTorch check")
    p.add_argument("--atol", type=float, default=1e-4,
                   help="largest |logit difference| accepted, plus 1e-4 x the largest |logit| (default 1e-4)")  # fmt: skip
    p.add_argument("--num-classes", type=int, help="classes of a bare model name's random weights (default 21)")
    p.set_defaults(func=cmd_export)
    return p


def cmd_export(args: argparse.Namespace) -> int:
    from .inference import is_bare_model_name, model_from_spec

    model = model_from_spec(args.model, args.num_classes)
    if is_bare_model_name(args.model):
        print(f"{args.model}: random weights ({model.num_classes} classes), for benchmarks and tests")
    try:
        report = export_onnx(model, args.out, sample_size=args.size, batch=args.batch, opset=args.opset,
                             dynamic=not args.static, verify=not args.no_verify, atol=args.atol)  # fmt: skip
    except ImportError as e:
        print(f"fcnkit: error: {e}", file=sys.stderr)
        return 2
    except torch.onnx.OnnxExporterError as e:
        print(f"fcnkit: error: torch.onnx could not export {args.model}: {e}", file=sys.stderr)
        return 2
    print(report.format())
    return 0
