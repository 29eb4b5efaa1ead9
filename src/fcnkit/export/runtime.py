"""An exported ``.onnx`` file run by ONNX Runtime, with the fcnkit model contract, and its metadata.

``OnnxRuntimeModel`` reads a file written by :func:`fcnkit.export.export_onnx` back as a model:
``model(x)["out"]``, ``.card`` (so ``.preprocessing``, ``.classes``, ``.palette``, the recipe's passes) and
``.num_classes``, so
:class:`fcnkit.Predictor` runs it in place of a torch model. ``onnxruntime`` is a regular dependency,
imported when a model is built.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..card import CardAttributes, ModelCard, card_of
from ..errors import ConfigError, MissingFileError
from ..preprocessing import Preprocessing
from ..utils import require
from ..version import __version__

INPUT_NAME, OUTPUT_NAME = "input", "out"
#: the optional second output of the files fcnkit exports for its own inference: each pixel's class, uint8 (B, H, W)
LABELS_NAME = "labels"
#: Version of the ``fcnkit.*`` metadata layout written into the ONNX file.
METADATA_VERSION = 2
GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")


def require_onnx(module: str) -> Any:
    """``onnx``, ``onnxscript`` or ``onnxruntime``; in an install made without them (``--no-deps``), an error
    naming the ``fcnkit[onnx]`` extra that brings them."""
    return require(module, "onnx", "ONNX export and ONNX Runtime inference")


def model_metadata(model: nn.Module, num_classes: int | None) -> dict[str, str]:
    """The ``fcnkit.*`` entries of an exported file: the model card (``fcnkit.card``, JSON: what every fcnkit
    reader takes) and, for readers that are not fcnkit, its parts as separate keys."""
    card = card_of(model)
    if num_classes and not card.arch.get("num_classes"):
        card = card.replace(arch={**card.arch, "num_classes": num_classes})
    return {
        "fcnkit.metadata_version": str(METADATA_VERSION),
        "fcnkit.version": __version__,
        "fcnkit.card": card.to_json(),
        "fcnkit.arch": json.dumps(card.arch, default=str),
        "fcnkit.num_classes": str(num_classes) if num_classes else "",
        "fcnkit.classes": json.dumps(list(card.classes) if card.classes else None),
        "fcnkit.palette": json.dumps([list(c) for c in card.palette] if card.palette else None),
        "fcnkit.preprocessing": json.dumps(card.preprocessing.to_dict()),
        "fcnkit.test": json.dumps(dataclasses.asdict(card.test)),
        "fcnkit.input": (
            f"{INPUT_NAME!r}: float32 (B, 3, H, W) = (reorder(rgb) * scale - mean) / std, "
            "rgb in 0-255, parameters in fcnkit.preprocessing"
        ),
        "fcnkit.output": f"{OUTPUT_NAME!r}: float32 logits (B, C, H, W), the input size",
    }


def read_metadata(props: dict[str, str]) -> dict[str, Any]:
    """The ``fcnkit.*`` metadata of an exported file, decoded: ``card`` (a :class:`ModelCard`, or ``None`` for a
    file fcnkit did not write), ``arch``, ``num_classes``, ``classes``, ``palette``, ``preprocessing`` (a
    :class:`Preprocessing`); absent keys are ``None``. Files of metadata version 1 (no card) get a card built
    from their separate keys."""
    out: dict[str, Any] = {k: None for k in ("card", "arch", "num_classes", "classes", "palette", "preprocessing")}
    if props.get("fcnkit.num_classes"):
        out["num_classes"] = int(props["fcnkit.num_classes"])
    if props.get("fcnkit.card"):
        card = ModelCard.from_json(props["fcnkit.card"])
    elif props.get("fcnkit.preprocessing") or props.get("fcnkit.arch"):  # version 1: the card's keys one by one
        keys = ("arch", "preprocessing", "classes", "palette")
        card = ModelCard.from_dict({k: json.loads(props.get(f"fcnkit.{k}") or "null") for k in keys})
    else:
        return out
    out.update(
        card=card,
        arch=card.arch,
        classes=list(card.classes) if card.classes else None,
        palette=list(card.palette) if card.palette else None,
        preprocessing=card.preprocessing if (props.get("fcnkit.card") or props.get("fcnkit.preprocessing")) else None,
    )
    return out


class OnnxRuntimeModel(CardAttributes, nn.Module):
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
        spinning: let ONNX Runtime's threads spin (busy-wait) between and after runs, as it does by default. Off
            by default here: spinning threads hold the cores for a while after each run, which starves the
            decoding, encoding and file threads that run beside the model in ``fcnkit predict`` and ``serve``
            (on 2 cores, video went from 21 to 25 frames/s with it off, while a bare loop of forwards lost 9 %).
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | Any,
        *,
        intra_op_threads: int | None = None,
        graph_optimization: str = "all",
        providers: Sequence[str] | None = None,
        preprocessing: Preprocessing | None = None,
        spinning: bool = False,
    ) -> None:
        super().__init__()
        ort = require_onnx("onnxruntime")
        if isinstance(model, ort.InferenceSession):
            session, self.path = model, None
        else:
            if graph_optimization not in GRAPH_OPTIMIZATION_LEVELS:
                raise ConfigError(
                    f"graph_optimization must be one of {GRAPH_OPTIMIZATION_LEVELS}, got {graph_optimization!r}"
                )
            options = ort.SessionOptions()
            level = {
                "disable": "ORT_DISABLE_ALL",
                "basic": "ORT_ENABLE_BASIC",
                "extended": "ORT_ENABLE_EXTENDED",
                "all": "ORT_ENABLE_ALL",
            }[graph_optimization]
            options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
            if intra_op_threads:
                options.intra_op_num_threads = int(intra_op_threads)
            options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
            self.path = Path(model)
            if not self.path.is_file():
                raise MissingFileError(f"{self.path}: no such ONNX file")
            session = ort.InferenceSession(
                os.fspath(self.path), options, providers=list(providers or ["CPUExecutionProvider"])
            )
        # what with_threads needs to open the same file again
        self._options = {"graph_optimization": graph_optimization, "providers": providers, "spinning": spinning}
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name
        #: the graph's arg-max output, when it has one (see :func:`fcnkit.export.add_labels_output`)
        self.labels_name = LABELS_NAME if LABELS_NAME in [o.name for o in session.get_outputs()] else None
        meta = read_metadata(session.get_modelmeta().custom_metadata_map)
        channels = session.get_outputs()[0].shape[1]
        self.num_classes: int | None = meta["num_classes"] or (channels if isinstance(channels, int) else None)
        if preprocessing is None and meta["preprocessing"] is None:
            warnings.warn(
                f"{self.path or 'this ONNX model'} has no fcnkit preprocessing metadata: assuming "
                "ImageNet RGB mean/std (pass preprocessing=... if that is wrong)",
                stacklevel=2,
            )
        self.card = card_in_file(meta, self.num_classes, self.path, preprocessing)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """``x``: preprocessed images ``(B, 3, H, W)`` -> ``{"out": (B, C, H, W)}`` float32 logits."""
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (out,) = self.session.run([self.output_name], {self.input_name: array})
        return {"out": torch.from_numpy(out).to(x.device)}

    def labels(self, x: Tensor) -> Tensor | None:
        """Each pixel's class, ``uint8`` ``(B, H, W)``, computed inside the graph (the first largest logit, as
        ``logits.argmax(1)``), so only one byte a pixel leaves the runtime; ``None`` when the graph has no such
        output."""
        if self.labels_name is None:
            return None
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (labels,) = self.session.run([self.labels_name], {self.input_name: array})
        return torch.from_numpy(labels).to(x.device)

    def with_threads(self, threads: int) -> OnnxRuntimeModel | None:
        """The same file in a new session whose operators run on ``threads`` threads, with the same card and
        options; several threads may run it at once (ONNX Runtime sessions allow concurrent runs), each batch on
        its own cores. ``None`` when this model was made from a session instead of a file, or runs on a provider
        other than the CPU's."""
        if self.path is None or self.session.get_providers() != ["CPUExecutionProvider"]:
            return None
        clone = OnnxRuntimeModel(
            self.path, intra_op_threads=threads, preprocessing=self.card.preprocessing, **self._options
        )
        clone.card = self.card
        return clone

    def extra_repr(self) -> str:
        return f"{self.path or 'InferenceSession'}, providers={self.session.get_providers()}"


def card_in_file(
    meta: dict[str, Any], num_classes: int | None, path: Path | None, preprocessing: Preprocessing | None = None
) -> ModelCard:
    """The card of an exported file from its decoded metadata (defaults for a file fcnkit did not write), with
    the file named in its provenance and ``preprocessing`` (when given) in place of the file's."""
    card = meta["card"] or ModelCard(arch={"num_classes": num_classes} if num_classes else {})
    provenance = {**card.provenance, "file": str(path)} if path is not None else card.provenance
    return card.replace(preprocessing=preprocessing or card.preprocessing, provenance=provenance)
