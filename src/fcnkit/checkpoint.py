"""fcnkit checkpoints: the state dict plus everything needed to rebuild and feed the model.

A checkpoint is a plain dict (``weights_only``-loadable): ``format``, ``version``, ``arch`` (registry
name, num_classes, options), ``preprocessing``, ``classes``, ``state_dict`` and any extra entries the
caller adds (optimizer state, epoch...). Files are written atomically: a temporary file in the same
directory, flushed to disk, then renamed over the destination, so a crash never leaves half a file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError
from .hub import load_file
from .models import Segmenter, create_model
from .preprocessing import Preprocessing

FORMAT, VERSION = "fcnkit", 1


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
        "arch": model.arch,
        "preprocessing": model.preprocessing.to_dict(),
        "classes": list(model.classes) if model.classes else None,
        "palette": [list(c) for c in model.palette] if model.palette else None,
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


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Segmenter:
    """Rebuild the model stored in an fcnkit checkpoint, with its weights, preprocessing and classes."""
    ckpt = read_checkpoint(path)
    arch = ckpt["arch"]
    model = create_model(arch["name"], num_classes=arch["num_classes"], **arch.get("options", {}))
    model.load_state_dict(ckpt["state_dict"], strict=True)
    model.preprocessing = Preprocessing.from_dict(ckpt["preprocessing"])
    model.classes = ckpt.get("classes")
    model.palette = [tuple(c) for c in ckpt["palette"]] if ckpt.get("palette") else None
    return model.to(map_location)
