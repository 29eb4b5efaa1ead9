"""Fetching weight files: cache directory, checksums, local paths and an offline mode.

* Files land in ``$FCNKIT_CACHE`` (default ``~/.cache/fcnkit``) under ``weights/``.
* ``FCNKIT_OFFLINE=1`` never touches the network: a missing file fails at once, naming the URL and the
  path where a copy fetched elsewhere should be put.
* A download streams into a temporary file next to its destination and is renamed into place only after
  its checksum matched, so a mismatch or an interrupted transfer never leaves a partial file behind.
* Checksums are written ``"sha256:<hex>"`` or ``"md5:<hex>"``. A sha256 may be a prefix of at least 8 hex
  digits: torchvision publishes only the prefix embedded in its file names.
* Every ``torch.load`` uses ``weights_only=True``: a pickle that would run code is refused.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, ChecksumError, ConfigError, MissingFileError, OfflineError

__all__ = [
    "CheckpointError",
    "ChecksumError",
    "OfflineError",
    "cache_dir",
    "download",
    "file_digest",
    "is_offline",
    "load_file",
    "verify_file",
]

_CHUNK = 1 << 20


def cache_dir() -> Path:
    root = os.environ.get("FCNKIT_CACHE") or os.path.join("~", ".cache", "fcnkit")
    return Path(root).expanduser() / "weights"


def is_offline() -> bool:
    return os.environ.get("FCNKIT_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def _parse_checksum(checksum: str) -> tuple[str, str]:
    algo, sep, digest = checksum.partition(":")
    algo, digest = algo.lower(), digest.lower()
    if not sep or algo not in ("sha256", "md5") or not digest:
        raise ConfigError(f"checksum must look like 'sha256:<hex>' or 'md5:<hex>', got {checksum!r}")
    if any(c not in "0123456789abcdef" for c in digest):
        raise ConfigError(f"checksum digits must be hexadecimal, got {checksum!r}")
    if algo == "sha256" and not 8 <= len(digest) <= 64:
        raise ConfigError(f"a sha256 checksum has 8 to 64 hex digits, got {checksum!r}")
    if algo == "md5" and len(digest) != 32:
        raise ConfigError(f"an md5 checksum has 32 hex digits, got {checksum!r}")
    return algo, digest


def file_digest(path: str | os.PathLike[str], algo: str = "sha256") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _matches(digest: str, expected: str) -> bool:
    return digest.startswith(expected)


def verify_file(path: str | os.PathLike[str], checksum: str) -> None:
    """Raise ``ChecksumError`` unless ``path`` has the declared digest."""
    algo, expected = _parse_checksum(checksum)
    digest = file_digest(path, algo)
    if not _matches(digest, expected):
        raise ChecksumError(
            f"{path}: {algo} is {digest}, expected {expected}. The file is corrupt or not the "
            "one declared; delete it and fetch it again."
        )


def download(
    url: str,
    checksum: str,
    file_name: str | None = None,
    progress: Callable[[int, int | None], None] | None = None,
) -> Path:
    """Return the path of the verified local copy of ``url``, downloading it into the cache if needed.

    ``file://`` URLs are accepted (mirrors on a shared drive, and the tests).
    """
    algo, expected = _parse_checksum(checksum)
    name = file_name or os.path.basename(url.split("?")[0])
    dest = cache_dir() / name
    if dest.exists():
        verify_file(dest, checksum)
        return dest
    if is_offline():
        raise OfflineError(
            f"FCNKIT_OFFLINE is set and {name} is not in the cache. Download {url} elsewhere and put it at "
            f"{dest} (or pass the file's path instead of the weights name)."
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=dest.parent)
    try:
        h = hashlib.new(algo)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            total = response.headers.get("Content-Length")
            total = int(total) if total else None
            done = 0
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                out.write(chunk)
                h.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
            out.flush()
            os.fsync(out.fileno())
        digest = h.hexdigest()
        if not _matches(digest, expected):
            raise ChecksumError(f"download of {url} has {algo} {digest}, expected {expected}; nothing was kept")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def load_file(path: str | os.PathLike[str]) -> Any:
    """``torch.load`` on CPU with ``weights_only=True``.

    Raises:
        MissingFileError: ``path`` does not exist.
        CheckpointError: the file holds pickled code (refused, nothing runs), or it is truncated or not a
            PyTorch file at all; the message names the file and says which.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise MissingFileError(f"{path}: no such file") from None
    except pickle.UnpicklingError as e:
        # weights_only refuses every GLOBAL it does not know (a function or class to call on loading); other
        # unpickling failures (an unknown opcode, a cut-off stream) mean the file is damaged or not a pickle.
        found = re.search(r"(?:Unsupported global: |unsupported )GLOBAL ([\w.]+)", str(e))
        if found is None:
            detail = next((line for line in str(e).splitlines()[1:] if line.strip() and "issue" not in line), "")
            raise CheckpointError(f"{path} is truncated or not a PyTorch file ({detail.strip() or e})") from None
        raise CheckpointError(
            f"refused to load {path}: it holds pickled code objects ({found.group(1)}), which would run on loading. "
            "fcnkit only reads tensors and plain containers; if you trust the file, load it with "
            "torch.load(weights_only=False) yourself and save its state dict."
        ) from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as e:
        # torch reports a cut-off zip as RuntimeError (PytorchStreamReader), an empty file as EOFError and a
        # non-torch file as a bare KeyError or ValueError from the unpickler.
        if isinstance(e, EOFError):
            detail = "the file ends before its first record"
        elif isinstance(e, KeyError):  # the unpickler met a byte that is no opcode
            detail = "neither a zip archive nor a pickle"
        else:
            detail = str(e).split(". ")[0] or type(e).__name__
        raise CheckpointError(f"{path} is truncated or not a PyTorch file ({detail})") from None
