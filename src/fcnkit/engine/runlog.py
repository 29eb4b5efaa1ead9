"""A run's ``metrics.jsonl``: one JSON object per line, appended as training goes, read back for the plots.

Training records carry ``step``, ``epoch``, ``lr``, ``loss_*``, ``images_per_s`` and ``train_minutes``;
evaluation records ``step``, ``epoch``, ``train_minutes`` and ``val`` (the metrics as a dict). With
``data.on_error: skip``, an epoch that left unreadable samples out adds ``step``, ``epoch`` and
``skipped_samples`` (their files). The writer and the reader live together here so the format has one owner.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from ..errors import DataError

__all__ = ["append_record", "read_run_log"]


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append ``record`` as one line and close the file, so a crash loses at most the line being written. A line
    a crash left torn (no newline at its end) is ended first, so that the new record starts a line of its own."""
    with open(path, "a+b") as f:
        torn = f.tell() > 0 and (f.seek(-1, 2), f.read(1))[1] != b"\n"
        f.write((b"\n" if torn else b"") + json.dumps(record).encode() + b"\n")


def read_run_log(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Training and evaluation records of a ``metrics.jsonl``, each sorted by step.

    A resumed run appends records for steps it had already logged before the crash; keeping the last
    record per step follows the history that produced the final weights and draws one clean line. A line that a
    crash cut short (the start of a JSON object that does not parse) is skipped with a warning, wherever it is.
    """
    lines = path.read_text().splitlines()
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    train: dict[int, dict[str, Any]] = {}
    val: dict[int, dict[str, Any]] = {}
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if i == last or line.lstrip().startswith("{"):  # a line a crash (or a run still writing) cut short
                where = "last line" if i == last else "line (a run stopped while writing it, then resumed)"
                warnings.warn(f"{path}:{i + 1}: skipping an incomplete {where}", stacklevel=3)
                continue
            raise DataError(f"{path}:{i + 1}: not a JSON record ({e.msg})") from None
        if not isinstance(record, dict) or "step" not in record:
            raise DataError(f"{path}:{i + 1}: expected a JSON object with a 'step' key")
        step = int(record["step"])
        if isinstance(record.get("val"), dict):
            val[step] = record
        elif "loss_total" in record or "lr" in record:
            train[step] = record
        # skipped_samples records, and kinds added later, are left alone rather than refused: they are no curve
    return [train[s] for s in sorted(train)], [val[s] for s in sorted(val)]
