"""The fast inference path: ``optimize_for_inference(model)`` -> a callable with the model's output contract.

What it does, each step kept only where it leaves the predictions unchanged:

* **BatchNorm folded into the preceding convolution** (eval-mode BN is an affine map per channel, so
  ``bn(conv(x)) == conv'(x)`` with rescaled weights and a new bias). Pairs are found on the traced graph
  (``torch.fx``) of each part of the model (backbone, neck, heads): a pair is folded only when the
  convolution's output feeds nothing but that BN. Parts that cannot be traced are left as they are.
* **Inference mode** and no autograd bookkeeping.
* **channels_last** memory format (default: on CUDA only; on CPU it measured between 0.96x and 1.10x).
* optional **torch.compile**, optional **bf16 / fp16 autocast** (opt-in: not exact).
* the **ONNX Runtime** backend (``backend="onnxruntime"``), through :mod:`fcnkit.export`; the exported file is
  cached under ``$FCNKIT_CACHE/onnx`` (:mod:`fcnkit.export.cache`), so a checkpoint is exported once.
  ``backend="auto"`` (what ``Predictor``, ``fcnkit eval`` and ``fcnkit predict`` use) takes ONNX Runtime for a
  CPU model when onnx, onnxscript and onnxruntime are installed, PyTorch otherwise and on CUDA
  (``FCNKIT_BACKEND=torch`` or ``onnxruntime`` makes that choice for every ``auto``).

After optimising, the result is compared with the original model on a random input: the logits must be close
and the arg-max must agree on at least 99.9 % of the pixels (``check=True``); otherwise an error says which
option broke it. ``report`` on the returned object lists what was applied.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from ..card import CardAttributes, card_of
from ..errors import ConfigError
from ..utils import AMP_DTYPES, compare_logits, eval_mode

__all__ = [
    "BACKENDS",
    "OptimizedModel",
    "describe_backend",
    "fold_batchnorm",
    "onnxruntime_available",
    "optimize_for_inference",
    "optimized_or_plain",
    "resolve_backend",
]

#: how the cached exports are made (part of their cache key): dynamic batch, height and width, default opset
ONNX_LAYOUT = {
    "dynamic": True,
    "opset": None,
    "input": "float32 NCHW preprocessed",
    "output": "logits, and uint8 labels (arg-max)",
}


def _fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold ``bn`` (eval mode) into ``conv`` in place (PyTorch's own formula, ``fuse_conv_bn_weights``)."""
    conv.weight, conv.bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )


def _conv_bn_pairs(module: nn.Module, concrete_args: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """(conv, bn) qualified-name pairs of ``module`` where the conv's only consumer is the BN."""
    import torch.fx

    graph = torch.fx.symbolic_trace(module, concrete_args=concrete_args).graph
    modules = dict(module.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        source = node.args[0]
        if (
            isinstance(source, torch.fx.Node)
            and source.op == "call_module"
            and type(modules.get(source.target)) is nn.Conv2d
            and len(source.users) == 1
            and modules[source.target].out_channels == modules[node.target].num_features
        ):
            pairs.append((source.target, node.target))
    return pairs


def _set_submodule(root: nn.Module, name: str, value: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, value)


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """Fold every foldable BatchNorm of ``model`` (in eval mode) into its convolution, in place.

    Each direct child (for a Segmenter: backbone, neck, classifier, aux_classifier) is traced on its own, so a
    part that ``torch.fx`` cannot trace (data-dependent control flow) only keeps its BNs. Returns the model and
    the names of the parts that could not be traced.
    """
    model.eval()
    skipped = []
    for child_name, child in model.named_children():
        if child is None:
            continue
        try:
            pairs = _conv_bn_pairs(child)
        except Exception:  # torch.fx raises many kinds of errors on untraceable code; the BNs just stay
            skipped.append(child_name)
            continue
        for conv_name, bn_name in pairs:
            conv = child.get_submodule(conv_name)
            bn = child.get_submodule(bn_name)
            _fuse_conv_bn(conv, bn)
            _set_submodule(child, bn_name, nn.Identity())
    return model, skipped


BACKENDS = ("auto", "torch", "onnxruntime", "openvino")


@dataclass
class OptimizeReport:
    applied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    max_abs_diff: float | None = None
    argmax_agreement: float | None = None
    #: the backend that runs the model ("torch", "onnxruntime")
    backend: str = "torch"
    #: ONNX Runtime: the export cache entry used, whether it was found (True) or exported now, and the seconds
    #: that took (the export, or the check of a found entry)
    onnx_path: str | None = None
    cache_hit: bool | None = None
    export_seconds: float | None = None


def describe_backend(model: nn.Module, paths: bool = True) -> str:
    """What runs ``model``, in words, e.g. ``onnxruntime (cached export found in 0.31 s: PATH)`` (without the path
    when ``paths`` is False: what a server shows its clients)."""
    report = getattr(model, "report", None)
    if not isinstance(report, OptimizeReport):
        return f"{type(model).__name__}, as built (not optimised)"
    text = f"{report.backend} ({', '.join(report.applied) or 'nothing applied'})"
    if report.cache_hit is not None and report.export_seconds is not None:
        how = "cached export found" if report.cache_hit else "exported"
        where = f": {report.onnx_path}" if report.onnx_path and paths else ""
        text += f", {how} in {report.export_seconds:.2f} s{where}"
    return text


def onnxruntime_available() -> bool:
    """onnx, onnxscript (the exporter) and onnxruntime are importable."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxscript", "onnxruntime"))


def resolve_backend(backend: str, device: torch.device) -> str:
    """``"auto"`` made concrete for a model on ``device``: ``$FCNKIT_BACKEND`` when set, else ONNX Runtime on
    CPU when it is installed, else PyTorch."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend != "auto":
        return backend
    chosen = os.environ.get("FCNKIT_BACKEND", "").strip().lower()
    if chosen:
        if chosen not in BACKENDS:
            raise ConfigError(f"FCNKIT_BACKEND must be one of {', '.join(BACKENDS)}, got {chosen!r}")
        if chosen != "auto":
            return chosen
    return "onnxruntime" if device.type == "cpu" and onnxruntime_available() else "torch"


class OptimizedModel(CardAttributes, nn.Module):
    """A model prepared for inference, with the fcnkit contract: ``(B, 3, H, W) -> {"out": (B, C, H, W)}``.

    Carries the original model's ``card`` (preprocessing, classes, palette, passes...) and ``num_classes``, so :class:`fcnkit.Predictor` and :func:`fcnkit.engine.evaluate.evaluate` accept it in its place.
    """

    def __init__(
        self, model: Any, source: nn.Module, channels_last: bool, amp_dtype: torch.dtype | None, report: OptimizeReport
    ) -> None:
        super().__init__()
        self.model = model
        self.channels_last = channels_last
        self.amp_dtype = amp_dtype
        self.report = report
        self.card = card_of(source)
        self.num_classes = getattr(source, "num_classes", None)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        with torch.inference_mode():
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if self.amp_dtype is not None:
                with torch.autocast(x.device.type, dtype=self.amp_dtype):
                    out = self.model(x)["out"]
            else:
                out = self.model(x)["out"]
            return {"out": out.float().contiguous()}

    def labels(self, x: Tensor) -> Tensor | None:
        """Each pixel's class straight from the runtime when it computes the arg-max inside its graph (ONNX Runtime
        on a file with a ``labels`` output), else ``None``."""
        inside = getattr(self.model, "labels", None)
        return inside(x) if callable(inside) else None

    def with_threads(self, threads: int) -> OptimizedModel | None:
        """This model on a runtime whose operators run on ``threads`` threads, to be run from several threads at
        once (see :meth:`fcnkit.export.OnnxRuntimeModel.with_threads`); ``None`` when the runtime has no such
        copy (PyTorch, OpenVINO)."""
        copy = getattr(self.model, "with_threads", None)
        inner = copy(threads) if callable(copy) else None
        if inner is None:
            return None
        return OptimizedModel(inner, self, self.channels_last, self.amp_dtype, self.report)


def optimize_for_inference(
    model: nn.Module,
    *,
    fold_bn: bool = True,
    channels_last: bool | None = None,
    compile: bool = False,
    amp: str | None = None,
    backend: str = "auto",
    check: bool = True,
    check_size: tuple[int, int] = (97, 131),
    atol: float = 1e-3,
    rtol: float = 1e-4,
    onnx_path: str | None = None,
    cache: bool = True,
) -> OptimizedModel:
    """A copy of ``model`` prepared for fast inference; the original is left untouched.

    Args:
        fold_bn: fold eval-mode BatchNorm into the preceding convolutions (exact up to float rounding).
        channels_last: NHWC memory format; ``None`` = on for CUDA models, off on CPU.
        compile: ``torch.compile`` the result (first calls are slow while it compiles).
        amp: ``"bf16"`` or ``"fp16"`` autocast (opt-in; not exact, the check then only needs 99.9 % arg-max
            agreement, not close logits).
        check: compare with the original model on a random ``check_size`` input and raise if the logits differ
            by more than ``atol + rtol * max|logit|`` (skipped with ``amp``) or the arg-max agrees on less than
            99.9 % of the pixels.
        backend: ``"torch"``, ``"onnxruntime"`` (export to ONNX and run with ONNX Runtime on the CPU),
            ``"openvino"`` (the same ONNX file compiled by OpenVINO for the CPU, ``fcnkit[openvino]``) or
            ``"auto"``, the default: ONNX Runtime for a CPU model when it is installed, else PyTorch (and PyTorch
            whenever ``compile``, ``amp`` or ``channels_last`` is asked for).
        onnx_path: where the ONNX file goes with ONNX Runtime or OpenVINO (default: the export cache, or a temporary file
            with ``cache=False``).
        cache: with ONNX Runtime or OpenVINO and no ``onnx_path``, keep the export in ``$FCNKIT_CACHE/onnx`` keyed by the
            weights, the model and the versions, and reuse it next time (:func:`fcnkit.export.cache.cached_onnx`).

    Returns:
        An :class:`OptimizedModel`; ``.report`` says what was applied and what the check measured.
    """
    if amp is not None and amp not in AMP_DTYPES:
        raise ConfigError(f"amp must be None or one of {', '.join(AMP_DTYPES)}, got {amp!r}")
    source = model
    device = next(source.parameters()).device
    if backend == "auto" and (compile or amp or channels_last):
        backend = "torch"  # what only PyTorch does was asked for
    backend = resolve_backend(backend, device)
    report = OptimizeReport(backend=backend)
    with eval_mode(source):
        work = copy.deepcopy(source)
        if fold_bn:
            work, skipped = fold_batchnorm(work)
            report.applied.append("fold_bn")
            report.skipped += [f"fold_bn:{name}" for name in skipped]
        if channels_last is None:
            channels_last = device.type == "cuda"
        amp_dtype = AMP_DTYPES.get(amp) if amp is not None else None
        runner: Any = work
        if backend in ("onnxruntime", "openvino"):
            if channels_last or amp or compile:
                raise ConfigError(f"the {backend} backend takes no channels_last, amp or compile")
            if device.type != "cpu":
                raise ConfigError(f"the {backend} backend runs on the CPU; move the model to the CPU first")

            runner = _onnx_runner(work, backend, onnx_path, cache, report)
            report.applied.append(backend)
        else:
            if channels_last:
                work = work.to(memory_format=torch.channels_last)
                report.applied.append("channels_last")
            if amp_dtype is not None:
                report.applied.append(f"autocast_{amp}")
            if compile:
                # freezing: weights become constants, so inductor folds them and prepacks them for oneDNN / cuDNN.
                runner = torch.compile(work, options={"freezing": True})
                report.applied.append("compile")
        optimized = OptimizedModel(runner, source, channels_last, amp_dtype, report).eval()
        if check:
            x = torch.randn(1, 3, *check_size, generator=torch.Generator().manual_seed(0)).to(device)
            with torch.inference_mode():
                parity = compare_logits(source(x)["out"], optimized(x)["out"])
            report.max_abs_diff, report.argmax_agreement = parity.max_abs_diff, parity.argmax_agreement
            if not parity.passed(atol, rtol, 0.999, exact_logits=amp_dtype is None):
                tolerance = atol + rtol * parity.max_abs_logit
                raise RuntimeError(
                    f"optimize_for_inference({', '.join(report.applied)}) changed the predictions: max |logit "
                    f"diff| {parity.max_abs_diff:.3g} (allowed {tolerance:.3g}), arg-max agreement "
                    f"{parity.argmax_agreement:.4%}"
                )
    return optimized


def _onnx_runner(
    work: nn.Module, backend: str, onnx_path: str | None, cache: bool, report: OptimizeReport
) -> nn.Module:
    """``work`` exported to ONNX (to ``onnx_path``, the cache, or a temporary file) and opened by ONNX Runtime or
    compiled by OpenVINO (``backend``)."""
    from ..export import export_onnx  # deferred: the exporter imports onnx and onnxscript

    if backend == "openvino":
        from ..export.openvino import OpenVINOModel as runtime
    else:
        from ..export import OnnxRuntimeModel as runtime

    start = time.perf_counter()
    if onnx_path is not None:
        export_onnx(work, onnx_path, verify=False, labels=True)
        runner = runtime(onnx_path)
        report.onnx_path, report.cache_hit = str(onnx_path), False
    elif cache:
        from ..export import cached_onnx

        opened: dict[str, nn.Module] = {}

        def validate(path: Any) -> None:  # a found entry must open, else it is rebuilt
            opened["model"] = runtime(path)

        entry = cached_onnx(
            work, lambda m, p: export_onnx(m, p, verify=False, labels=True), ONNX_LAYOUT, validate=validate
        )
        runner = opened.get("model") if entry.hit else None
        runner = runner or runtime(entry.path)
        report.onnx_path, report.cache_hit = str(entry.path), entry.hit
    else:  # the runtimes hold the graph in memory once it is loaded
        with tempfile.TemporaryDirectory(prefix="fcnkit_") as folder:
            path = os.path.join(folder, "model.onnx")
            export_onnx(work, path, verify=False, labels=True)
            runner = runtime(path)
        report.cache_hit = False
    report.export_seconds = time.perf_counter() - start
    return runner


def optimized_or_plain(model: nn.Module, backend: str = "auto") -> nn.Module:
    """``optimize_for_inference(model, backend=backend)``, or ``model`` itself with a warning when the
    optimised copy does not reproduce its predictions. With ``"auto"``, a model ONNX Runtime cannot take (the
    export fails) runs on PyTorch's fast path instead, with a warning that names the export's error. A model
    without parameters (an ONNX Runtime model) is returned as it is."""
    first = next(model.parameters(), None)
    if first is None:
        return model
    chosen = resolve_backend(backend, first.device)
    try:
        return optimize_for_inference(model, backend=chosen)
    except Exception as exc:
        if backend == "auto" and chosen == "onnxruntime":
            warnings.warn(
                f"ONNX Runtime cannot run this model ({type(exc).__name__}: {exc}); using PyTorch", stacklevel=2
            )
            return optimized_or_plain(model, "torch")
        if not isinstance(exc, RuntimeError):
            raise
        warnings.warn(f"using the model unoptimised: {exc}", stacklevel=2)
        return model
