"""A one-line progress bar with ETA that stays silent when stderr is not a terminal."""

from __future__ import annotations

import sys
import time


def _fmt_seconds(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


class Progress:
    def __init__(self, total: int, desc: str, enabled: bool = True) -> None:
        self.total, self.desc, self.count = total, desc, 0
        self.enabled = enabled and sys.stderr.isatty()
        self.start = time.perf_counter()
        self.postfix = ""

    def update(self, n: int = 1, **values: float | str) -> None:
        self.count += n
        if values:
            self.postfix = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        eta = elapsed / self.count * (self.total - self.count) if self.count else 0.0
        width = 24
        filled = int(width * self.count / max(self.total, 1))
        bar = "#" * filled + "." * (width - filled)
        line = f"\r{self.desc} [{bar}] {self.count}/{self.total} {_fmt_seconds(elapsed)}<{_fmt_seconds(eta)} {self.postfix}"
        sys.stderr.write(line[:200])
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()
