"""Progress of long loops, and fcnkit's loggers: a tqdm bar on a terminal, log lines everywhere else.

fcnkit's modules log through the ``"fcnkit"`` logger and its children (``"fcnkit.train"``, ``"fcnkit.eval"``,
...); the application decides where records go (the ``fcnkit`` command: INFO and above on stderr, one line
per record). A library user who configured no logging at all would see nothing below WARNING, so the long
running functions call :func:`ensure_handler`, which then adds one handler on stderr for ``"fcnkit"``.

:class:`Progress` shows a loop in one of two ways, picked once from ``sys.stderr.isatty()``:

* on a terminal, a tqdm bar with the latest values (loss, lr, ...) after it; log records emitted meanwhile
  are printed above the bar instead of through it;
* anywhere else (a file, a pipe, ``nohup``, CI), one INFO line every ``log_every`` updates with the values,
  the elapsed time and, when the length of the loop is known, the time left. A stream handler flushes each
  record, so ``tail -f`` sees every line as it happens.

Base layer: imports nothing of fcnkit but :mod:`fcnkit.errors`, :mod:`fcnkit.utils` and :mod:`fcnkit.version`.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

__all__ = ["LOGGER_NAME", "Progress", "ensure_handler", "format_duration", "get_logger", "stderr_is_terminal"]

LOGGER_NAME = "fcnkit"


def get_logger(name: str | None = None) -> logging.Logger:
    """``"fcnkit"``, or its child ``"fcnkit.<name>"``."""
    return logging.getLogger(f"{LOGGER_NAME}.{name}" if name else LOGGER_NAME)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record (it may be replaced after set-up)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:  # StreamHandler.__init__ assigns it; sys.stderr is read instead
        pass


def ensure_handler() -> None:
    """Make fcnkit's INFO records visible on stderr when nothing is configured to receive them.

    Does nothing when ``"fcnkit"`` or one of its ancestors (the root logger, e.g. after
    ``logging.basicConfig``) already has a handler: the application's choice stands.
    """
    logger = get_logger()
    if logger.hasHandlers():
        return
    logger.addHandler(_StderrHandler())
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False


def format_duration(seconds: float) -> str:
    """``75`` -> ``"01:15"``, ``3725`` -> ``"1:02:05"``."""
    s = max(0, int(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


def _is_console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stdout, sys.stderr)


def _format_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class Progress:
    """A loop of ``total`` updates (``None``: length unknown), shown as a bar or as periodic log lines.

    Args:
        total: number of updates the loop makes in all, when known.
        desc: the loop's name; it starts each line (``"step 40/600 ..."``) and labels the bar.
        unit: what is counted, for the bar's rate (``"step/s"``).
        logger: where the lines go (INFO); ``"fcnkit"`` by default.
        log_every: without a terminal, a line every this many updates (and at the first and the last).
        min_interval: without a terminal, at least this many seconds between two lines (the first and the last
            line excepted), so that a loop which turns out fast does not fill a log with lines.
        initial: updates already made (a resumed run); the count continues from there.
        elapsed: seconds already spent before this call (a resumed run's training clock).
        enabled: ``False`` shows nothing (e.g. every rank but the first).
        bar: force the bar on or off; by default it is on when stderr is a terminal.

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        *,
        unit: str = "it",
        logger: logging.Logger | None = None,
        log_every: int = 1,
        min_interval: float = 0.0,
        initial: int = 0,
        elapsed: float = 0.0,
        enabled: bool = True,
        bar: bool | None = None,
    ) -> None:
        self.total, self.desc, self.count = total, desc, initial
        self.logger = logger or get_logger()
        self.log_every = max(1, int(log_every))
        self.min_interval, self._last_line = float(min_interval), -float("inf")
        self.enabled = enabled
        self.initial, self._elapsed0, self._start = initial, elapsed, time.perf_counter()
        self._bar: tqdm | None = None
        self._redirect: contextlib.ExitStack | None = None
        if enabled and (stderr_is_terminal() if bar is None else bar):
            self._redirect = contextlib.ExitStack()
            # records logged while the bar is shown are written above it, not through it (tqdm puts its handler
            # on every logger it is given: only those with a console handler of their own)
            consoles = [lg for lg in (logging.getLogger(), get_logger()) if any(map(_is_console, lg.handlers))]
            self._redirect.enter_context(logging_redirect_tqdm(consoles))
            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)

    def update(
        self,
        n: int = 1,
        values: Mapping[str, Any] | None = None,
        *,
        elapsed: float | None = None,
        eta: float | None = None,
        log: bool | None = None,
    ) -> None:
        """Count ``n`` updates and show ``values`` (e.g. ``{"loss": 0.41, "lr": 1e-3}``).

        Args:
            elapsed: seconds spent so far in all (default: ``elapsed`` of the constructor plus the wall-clock
                since then). A loop whose pauses should not count (evaluation) passes its own clock.
            eta: seconds left (default: from the rate of this call's updates, when ``total`` is known).
            log: without a terminal, whether to write a line now (default: at the first update of this call,
                every ``log_every`` updates and at the last one).
        """
        self.count += n
        if not self.enabled:
            return
        values = dict(values or {})
        if self._bar is not None:
            self._bar.set_postfix({k: _format_value(v) for k, v in values.items()}, refresh=False)
            self._bar.update(n)
            return
        if log is None:
            first, last = self.count - n == self.initial, self.count == self.total
            due = self.count % self.log_every == 0 and time.perf_counter() - self._last_line >= self.min_interval
            log = first or last or due
        if not log:
            return
        self._last_line = time.perf_counter()
        if elapsed is None:
            elapsed = self._elapsed0 + time.perf_counter() - self._start
        if eta is None and self.total is not None and self.count > self.initial:
            eta = (elapsed - self._elapsed0) / (self.count - self.initial) * max(0, self.total - self.count)
        head = f"{self.desc} {self.count}" + (f"/{self.total}" if self.total is not None else "")
        parts = [head, *(f"{k} {_format_value(v)}" for k, v in values.items()), f"elapsed {format_duration(elapsed)}"]
        if eta is not None:
            parts.append(f"eta {format_duration(eta)}")
        self.logger.info("  ".join(parts))

    def write(self, message: str, file: TextIO | None = None) -> None:
        """Print ``message`` (stderr by default) without breaking the bar."""
        with self.suspended():
            print(message, file=file or sys.stderr, flush=True)

    def suspended(self) -> contextlib.AbstractContextManager[Any]:
        """A block that may print freely: the bar is cleared first and drawn again after it."""
        if self._bar is None:
            return contextlib.nullcontext()
        return self._bar.external_write_mode(file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._redirect is not None:
            self._redirect.close()
            self._redirect = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
