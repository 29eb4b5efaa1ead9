"""The fast inference path: ``optimize_for_inference(model)`` -> a callable with the model's output contract.

What it does, each step kept only where it leaves the predictions unchanged:

* **BatchNorm folded into the preceding convolution** (eval-mode BN is an affine map per channel, so
  ``bn(conv(x)) == conv'(x)`` with rescaled weights and a new bias). Pairs are found on the traced graph
  (``torch.fx``) of each part of the model (backbone, neck, heads): a pair is folded only when the
  convolution's output feeds nothing but that BN. Parts that cannot be traced are left as they are.
* **Inference mode** and no autograd bookkeeping.
* **channels_last** memory format (default: on CUDA only; on CPU it measured between 0.96x and 1.10x).
* optional **torch.compile**, optional **bf16 / fp16 autocast** (opt-in: not exact).
* optional **ONNX Runtime** backend (``backend="onnxruntime"``), through :mod:`fcnkit.export`.

After optimising, the result is compared with the original model on a random input: the logits must be close
and the arg-max must agree on at least 99.9 % of the pixels (``check=True``); otherwise an error says which
option broke it. ``report`` on the returned object lists what was applied.
"""

from __future__ import annotations

import copy
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from ..errors import ConfigError
from ..utils import AMP_DTYPES, compare_logits, eval_mode

__all__ = ["OptimizedModel", "fold_batchnorm", "optimize_for_inference", "optimized_or_plain"]


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


@dataclass
class OptimizeReport:
    applied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    max_abs_diff: float | None = None
    argmax_agreement: float | None = None


class OptimizedModel(nn.Module):
    """A model prepared for inference, with the fcnkit contract: ``(B, 3, H, W) -> {"out": (B, C, H, W)}``.

    Carries ``preprocessing``, ``num_classes``, ``classes``, ``palette`` and ``arch`` of the original model,
    so :class:`fcnkit.Predictor` and :func:`fcnkit.engine.evaluate.evaluate` accept it in its place.
    """

    def __init__(
        self, model: Any, source: nn.Module, channels_last: bool, amp_dtype: torch.dtype | None, report: OptimizeReport
    ) -> None:
        super().__init__()
        self.model = model
        self.channels_last = channels_last
        self.amp_dtype = amp_dtype
        self.report = report
        for attr in ("preprocessing", "num_classes", "classes", "palette", "arch"):
            setattr(self, attr, getattr(source, attr, None))

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


def optimize_for_inference(
    model: nn.Module,
    *,
    fold_bn: bool = True,
    channels_last: bool | None = None,
    compile: bool = False,
    amp: str | None = None,
    backend: str = "torch",
    check: bool = True,
    check_size: tuple[int, int] = (97, 131),
    atol: float = 1e-3,
    rtol: float = 1e-4,
    onnx_path: str | None = None,
) -> OptimizedModel:
    """A copy of ``model`` prepared for fast inference; the original is left untouched.

    Args:
        fold_bn: fold eval-mode BatchNorm into the preceding convolutions (exact up to float rounding).
        channels_last: NHWC memory format; ``None`` = on for CUDA models, off on CPU.
        compile: ``torch.compile`` the result (first calls are slow while it compiles).
        amp: ``"bf16"`` or ``"fp16"`` autocast (opt-in; not exact, the check then only needs 99.9 % arg-max
            agreement, not close logits).
        backend: ``"torch"`` or ``"onnxruntime"`` (export to ONNX and run with ONNX Runtime on the CPU).
        check: compare with the original model on a random ``check_size`` input and raise if the logits differ
            by more than ``atol + rtol * max|logit|`` (skipped with ``amp``) or the arg-max agrees on less than
            99.9 % of the pixels.
        onnx_path: where the ONNX file goes with ``backend="onnxruntime"`` (default: a temporary file).

    Returns:
        An :class:`OptimizedModel`; ``.report`` says what was applied and what the check measured.
    """
    if backend not in ("torch", "onnxruntime"):
        raise ConfigError(f"backend must be 'torch' or 'onnxruntime', got {backend!r}")
    if amp is not None and amp not in AMP_DTYPES:
        raise ConfigError(f"amp must be None or one of {', '.join(AMP_DTYPES)}, got {amp!r}")
    source = model
    device = next(source.parameters()).device
    report = OptimizeReport()
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
        if backend == "onnxruntime":
            if channels_last or amp or compile:
                raise ConfigError("the onnxruntime backend takes no channels_last, amp or compile")
            if device.type != "cpu":
                raise ConfigError("the onnxruntime backend runs on the CPU; move the model to the CPU first")
            from ..export import OnnxRuntimeModel, export_onnx  # deferred: onnx and onnxruntime are optional

            if onnx_path is None:  # ONNX Runtime holds the graph in memory once the session exists
                with tempfile.TemporaryDirectory(prefix="fcnkit_") as folder:
                    path = os.path.join(folder, "model.onnx")
                    export_onnx(work, path, verify=False)
                    runner = OnnxRuntimeModel(path)
            else:
                export_onnx(work, onnx_path, verify=False)
                runner = OnnxRuntimeModel(onnx_path)
            report.applied.append("onnxruntime")
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


def optimized_or_plain(model: nn.Module, backend: str = "torch") -> nn.Module:
    """``optimize_for_inference(model, backend=backend)``, or ``model`` itself with a warning when the
    optimised copy does not reproduce its predictions. A model without parameters (an ONNX Runtime model) is
    returned as it is."""
    if next(model.parameters(), None) is None:
        return model
    try:
        return optimize_for_inference(model, backend=backend)
    except RuntimeError as exc:
        warnings.warn(f"using the model unoptimised: {exc}", stacklevel=2)
        return model
