"""fcnkit checkpoints: the state dict plus everything needed to rebuild and feed the model.

A checkpoint is a plain dict (``weights_only``-loadable): ``format``, ``version``, ``card`` (the
:class:`~fcnkit.card.ModelCard`: architecture, classes, palette, preprocessing, test-time passes, which weights,
provenance), ``state_dict`` and any extra entries the caller adds (a training run's ``last.pth`` adds the
optimiser state, its ``ema`` weights, the RNG states, its progress and its ``config``). Version 1 files (loose
``arch`` / ``preprocessing`` / ``classes`` / ``palette`` entries, no ``card``) still load. Files are written atomically: a temporary file in the same
directory, flushed to disk, then renamed over the destination, so a crash never leaves half a file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .card import ModelCard
from .errors import CheckpointError, ConfigError
from .hub import load_file
from .models import Segmenter, create_model

FORMAT, VERSION = "fcnkit", 2
#: the most classes a checkpoint may declare (ADE20K-full has 847 and LVIS 1203; a huge count is an attack on memory)
MAX_CLASSES = 4096
#: model options that fetch or read weights: never taken from a file (its state dict holds the weights)
WEIGHT_SOURCES = (
    "pretrained",
    "weights",
    "backbone_weights",
    "weights_backbone",
    "init_from",
    "checkpoint_path",
    "pretrained_cfg",
    "pretrained_cfg_overlay",
    "cache_dir",
    "url",
    "hf_hub_id",
    "file",
)
#: what ``backbone_kwargs`` (passed on to timm) may hold in a checkpoint
BACKBONE_KWARGS = (
    "drop_rate",
    "drop_path_rate",
    "drop_block_rate",
    "out_indices",
    "act_layer",
    "norm_layer",
    "layers",
    "stem_type",
    "stem_width",
    "global_pool",
)
#: ``weights`` choices of :func:`load_checkpoint` and of every command's ``--weights``
WEIGHT_CHOICES = ("auto", "ema", "raw")


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to ``path`` via a temporary file + fsync + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def checkpoint_dict(model: Segmenter, **extra: Any) -> dict[str, Any]:
    if not model.arch:
        raise CheckpointError(
            "this model was not built by fcnkit.create_model, so it cannot be rebuilt from a checkpoint"
        )
    return {
        "format": FORMAT,
        "version": VERSION,
        "card": model.card.to_dict(),
        "state_dict": model.state_dict(),
        **extra,
    }


def save_checkpoint(path: str | os.PathLike[str], model: Segmenter, **extra: Any) -> Path:
    """Write ``model`` (and ``extra`` entries) as an fcnkit checkpoint, atomically."""
    return atomic_save(checkpoint_dict(model, **extra), path)


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    obj = load_file(path)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not an fcnkit checkpoint (no 'format': 'fcnkit' entry); weights of other projects load "
            "with create_model(name, weights=path)"
        )
    if obj.get("version", 0) > VERSION:
        raise CheckpointError(f"{path} was written by a newer fcnkit (checkpoint version {obj['version']})")
    return obj


def read_card(ckpt: dict[str, Any]) -> ModelCard:
    """The model card of a checkpoint dict read by :func:`read_checkpoint` (built from the loose entries of a
    version 1 file, with the ``test:`` section of its training config when it has one)."""
    if ckpt.get("card") is not None:
        return ModelCard.from_dict(ckpt["card"])
    # a version 1 file holds the card's first four entries under the same names, the passes in its config
    loose = {key: ckpt.get(key) for key in ("arch", "preprocessing", "classes", "palette")}
    progress = ckpt.get("progress") or {}
    return ModelCard.from_dict(
        {
            **loose,
            "test": (ckpt.get("config") or {}).get("test"),
            "provenance": {"step": progress["step"]} if "step" in progress else {},
        }
    )


def select_weights(
    ckpt: dict[str, Any], weights: str = "auto", path: str | os.PathLike[str] = "the checkpoint"
) -> tuple[dict[str, torch.Tensor], ModelCard]:
    """The state dict and card that ``weights`` names in a checkpoint dict.

    ``"auto"`` (the default everywhere) takes the weights that were evaluated: the EMA of a ``last.pth`` written
    with ``ema_decay``, else the file's own. ``"ema"`` insists on the average (a ``best.pth`` of an EMA run holds
    it as its weights), ``"raw"`` on the weights as trained (only a ``last.pth`` has both)."""
    if weights not in WEIGHT_CHOICES:
        raise ConfigError(f"weights must be one of {', '.join(WEIGHT_CHOICES)}, got {weights!r}")
    card = read_card(ckpt)
    ema = (ckpt.get("ema") or {}).get("module")
    if ema is not None and weights in ("auto", "ema"):
        return ema, card.replace(weights="ema")
    if weights == "ema" and card.weights != "ema":
        raise CheckpointError(
            f"{path} holds no EMA weights: the run had no ema_decay (its weights are the raw ones; use --weights raw "
            "or auto)"
        )
    if weights == "raw" and card.weights == "ema":
        raise CheckpointError(
            f"{path} holds only the EMA weights (a best.pth keeps the weights that were evaluated); the raw ones "
            "are in the run's last.pth"
        )
    return ckpt["state_dict"], card


def check_arch(arch: dict[str, Any], path: str | os.PathLike[str] = "the checkpoint") -> None:
    """Refuse (:class:`CheckpointError`) a model card's architecture that a file from a stranger could use to fetch
    or read something or to exhaust memory: a class count outside 1..:data:`MAX_CLASSES`, an option that names a
    weights source (:data:`WEIGHT_SOURCES`, at any depth), ``backbone_kwargs`` beyond :data:`BACKBONE_KWARGS`, or
    a value that is not plain data (numbers, text, lists, mappings). Unknown options are refused by the model's
    factory when it is built."""
    n = arch.get("num_classes")
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_CLASSES:
        raise CheckpointError(f"{path}: num_classes must be a whole number from 1 to {MAX_CLASSES}, got {n!r}")
    options = arch.get("options") or {}
    if not isinstance(options, dict):
        raise CheckpointError(f"{path}: the model options must be a mapping, got {type(options).__name__}")

    def walk(value: Any, where: str) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                if not isinstance(key, str):
                    raise CheckpointError(f"{path}: option {where} has a key that is not text: {key!r}")
                if key in WEIGHT_SOURCES:
                    raise CheckpointError(
                        f"{path}: model option {where}{key} would fetch or read weights; a checkpoint's weights are "
                        "its state dict, so the file is refused"
                    )
                walk(inner, f"{where}{key}.")
        elif isinstance(value, list | tuple):
            for inner in value:
                walk(inner, where)
        elif not (value is None or isinstance(value, bool | int | float | str)):
            raise CheckpointError(f"{path}: model option {where.rstrip('.')} holds a {type(value).__name__}")

    walk(options, "")
    extra = set(options.get("backbone_kwargs") or {}) - set(BACKBONE_KWARGS)
    if extra:
        raise CheckpointError(
            f"{path}: backbone_kwargs {sorted(extra)} are not among those a checkpoint may set ({', '.join(BACKBONE_KWARGS)})"
        )


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu", weights: str = "auto"
) -> Segmenter:
    """Rebuild the model stored in an fcnkit checkpoint: its weights (``weights``: see :func:`select_weights`)
    and its card (classes, palette, preprocessing, test-time passes, provenance)."""
    ckpt = read_checkpoint(path)
    state_dict, card = select_weights(ckpt, weights, path)
    arch = card.arch
    if not arch.get("name"):
        raise CheckpointError(f"{path}: its model card names no architecture")
    check_arch(arch, path)
    model = create_model(arch["name"], num_classes=arch["num_classes"], **arch.get("options", {}))
    model.load_state_dict(state_dict, strict=True)
    model.card = card.replace(provenance={**card.provenance, "file": os.fspath(path)})
    return model.to(map_location)
