"""The training clock, and the time budget it may be held to.

The clock counts training wall-clock only: it runs while an epoch's batches are loaded, trained and stepped,
and is stopped for evaluation, pictures and the checkpoint at the end of an epoch. It continues across
invocations of a run (a resumed run starts it at the seconds its checkpoint recorded).

Decisions are taken on a *reading*: :meth:`BudgetClock.mark`, called once per optimiser step, reads the clock
and every later question (how much of the budget is spent, is it used up) is answered from that reading.
Under ``torchrun`` the reading is rank 0's on every rank, so all ranks follow the same learning rate and stop
after the same step.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["BudgetClock"]


class BudgetClock:
    """Training seconds over every invocation of a run, against an optional budget.

    Args:
        budget: seconds the run may train for (``None``: no budget; the clock only measures).
        agree: turns this process's reading into the one every process uses (under ``torchrun``: rank 0's,
            broadcast); only called when there is a budget, since only the budget acts on the reading.
        seconds: seconds already trained (a resumed run's).
    """

    def __init__(
        self, budget: float | None = None, agree: Callable[[float], float] | None = None, seconds: float = 0.0
    ) -> None:
        if budget is not None and not budget > 0:
            raise ValueError(f"budget must be > 0 seconds, got {budget}")
        self.budget = budget
        self._agree = agree
        self.reset(seconds)

    def reset(self, seconds: float = 0.0) -> None:
        """Stop the clock and set it to ``seconds`` (and the reading with it)."""
        self._stopped_total, self._started, self.reading = float(seconds), None, float(seconds)

    def start(self) -> None:
        if self._started is None:
            self._started = time.perf_counter()

    def stop(self) -> None:
        if self._started is not None:
            self._stopped_total += time.perf_counter() - self._started
            self._started = None

    @property
    def running(self) -> bool:
        return self._started is not None

    @property
    def seconds(self) -> float:
        """Training seconds so far, this process's clock, read now."""
        running = time.perf_counter() - self._started if self._started is not None else 0.0
        return self._stopped_total + running

    def mark(self) -> float:
        """Take the reading the current step is judged by (every rank's the same with a budget); returns it."""
        seconds = self.seconds
        if self.budget is not None and self._agree is not None:
            seconds = self._agree(seconds)
        self.reading = seconds
        return seconds

    def fraction_spent(self) -> float:
        """The part of the budget the last reading used, 0 to 1 (0 without a budget)."""
        return min(1.0, max(0.0, self.reading / self.budget)) if self.budget is not None else 0.0

    @property
    def out_of_time(self) -> bool:
        """The last reading reached the budget."""
        return self.budget is not None and self.reading >= self.budget

    def __repr__(self) -> str:
        return f"BudgetClock(budget={self.budget}, reading={self.reading:.3f}, running={self.running})"
