"""Exported models kept on disk, so a checkpoint is exported once and not at every ``predict`` or ``eval``.

An entry is ``$FCNKIT_CACHE/onnx/<key>.onnx`` with ``<key>.json`` beside it. The key is a digest of everything
the exported graph depends on: the weights (every tensor of the state dict, names, dtypes, shapes and bytes), the
model's class and its card without provenance (architecture, preprocessing, classes, passes: the file's
metadata), the export's input layout (dynamic axes, opset) and the versions of fcnkit, torch, onnx and onnxscript. The JSON records the file's
size and SHA-256; an entry whose file does not match them (a truncated write, a disk error, a file edited by
hand), or that ONNX Runtime cannot load, is rebuilt with a warning, never trusted.

Writers never clash: one process at a time builds an entry (a ``filelock`` lock file per key; a second writer
waits, then finds the entry built), into a temporary file in the cache folder moved into place with
``os.replace`` (atomic on POSIX and Windows), its record last. A reader that catches the file newer than its
record takes the lock and checks again before rebuilding anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from torch import nn

from ..card import card_of
from ..errors import ExportError
from ..hub import cache_dir
from ..version import __version__

__all__ = ["CachedExport", "cached_onnx", "export_key", "onnx_cache_dir", "weights_digest"]

#: bump when the layout of an entry or of the key changes: older entries are then simply not found
CACHE_FORMAT = 2


def onnx_cache_dir() -> Path:
    """``$FCNKIT_CACHE/onnx`` (default ``~/.cache/fcnkit/onnx``), beside the downloaded weights' ``weights/``."""
    return cache_dir().parent / "onnx"


def weights_digest(model: nn.Module) -> str:
    """BLAKE2b of the state dict: each entry's name, dtype, shape and raw bytes, in order."""
    h = hashlib.blake2b(digest_size=20)
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _versions() -> dict[str, str]:
    out = {"fcnkit": __version__, "torch": torch.__version__}
    for module in ("onnx", "onnxscript"):
        try:
            out[module] = __import__(module).__version__
        except ImportError:  # the export itself will name the missing extra
            out[module] = "missing"
    return out


def export_key(model: nn.Module, layout: dict[str, Any]) -> str:
    """The cache key of ``model`` exported with ``layout`` (e.g. ``{"dynamic": True, "opset": None}``)."""
    card = card_of(model).to_dict()
    card.pop("provenance")  # where the weights were read from does not change the file (the digest covers them)
    described = {
        "format": CACHE_FORMAT,
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "num_classes": getattr(model, "num_classes", None),
        "card": card,
        "layout": layout,
        "versions": _versions(),
        "weights": weights_digest(model),
    }
    text = json.dumps(described, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class CachedExport:
    """Where the exported file is, and whether this call exported it (``hit`` False) or found it."""

    path: Path
    key: str
    hit: bool
    #: seconds spent: the export when it was built, the integrity check when it was found
    seconds: float
    #: why an existing entry was rebuilt ("" when there was none or it was sound)
    rebuilt_because: str = ""


def _check_entry(path: Path, meta_path: Path) -> str:
    """ "" if the entry is sound, else what is wrong with it."""
    if not meta_path.is_file():
        return "its record is missing"
    try:
        meta = json.loads(meta_path.read_text())
        size, digest = int(meta["size"]), str(meta["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"its record is unreadable ({e})"
    actual = path.stat().st_size
    if actual != size:
        return f"the file has {actual} bytes, its record says {size}"
    if _file_sha256(path) != digest:
        return "the file's SHA-256 does not match its record"
    return ""


def cached_onnx(
    model: nn.Module,
    export: Callable[[nn.Module, Path], Any],
    layout: dict[str, Any],
    *,
    folder: Path | None = None,
    validate: Callable[[Path], Any] | None = None,
) -> CachedExport:
    """The cached ONNX file of ``model``, exported with ``export(model, path)`` if it is not there yet.

    ``layout`` describes the export's options and enters the key. ``validate(path)``, when given, is tried on a
    found entry (e.g. opening an ONNX Runtime session): if it raises, the entry is rebuilt.
    """
    folder = Path(folder) if folder is not None else onnx_cache_dir()
    key = export_key(model, layout)
    path, meta_path = folder / f"{key}.onnx", folder / f"{key}.json"
    start = time.perf_counter()
    if path.is_file() and not _problem(path, meta_path, validate):
        return CachedExport(path, key, True, time.perf_counter() - start)
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(folder / f"{key}.lock"):
        problem = _problem(path, meta_path, validate) if path.is_file() else ""
        if path.is_file() and not problem:  # another process built it while this one waited
            return CachedExport(path, key, True, time.perf_counter() - start)
        if problem:
            warnings.warn(f"rebuilding the cached export {path}: {problem}", stacklevel=2)
        start = time.perf_counter()
        return _build(model, export, layout, folder, key, problem, start)


def _problem(path: Path, meta_path: Path, validate: Callable[[Path], Any] | None) -> str:
    problem = _check_entry(path, meta_path)
    if not problem and validate is not None:
        try:
            validate(path)
        except Exception as e:  # whatever fails to load it, the entry is not to be trusted
            problem = f"it does not load ({type(e).__name__}: {e})"
    return problem


def _build(
    model: nn.Module,
    export: Callable[[nn.Module, Path], Any],
    layout: dict[str, Any],
    folder: Path,
    key: str,
    problem: str,
    start: float,
) -> CachedExport:
    path, meta_path = folder / f"{key}.onnx", folder / f"{key}.json"
    with tempfile.TemporaryDirectory(prefix=f".{key}.", dir=folder) as tmp:
        tmp_path = Path(tmp) / "model.onnx"
        export(model, tmp_path)
        if any(p.name != "model.onnx" for p in Path(tmp).iterdir()):
            # weights above 2 GB go to an external data file that the .onnx names: renamed, it would not be found
            raise ExportError(
                "this model's ONNX export keeps its weights in an external file (over 2 GB), which the export "
                "cache does not hold; export it with `fcnkit export` and run the .onnx file instead"
            )
        record = {
            "size": tmp_path.stat().st_size,
            "sha256": _file_sha256(tmp_path),
            "layout": layout,
            "versions": _versions(),
            "arch": getattr(model, "arch", None),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        meta_tmp = Path(tmp) / "record.json"
        meta_tmp.write_text(json.dumps(record, indent=1, default=str))
        os.replace(tmp_path, path)
        os.replace(meta_tmp, meta_path)
    return CachedExport(path, key, False, time.perf_counter() - start, problem)
