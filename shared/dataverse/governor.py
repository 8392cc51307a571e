"""One throttle governor per application user and worker.

Dataverse's service protection limits count per user, so every request of the worker
goes through one governor. On any 429 all workers pause for ``Retry-After`` (plus jitter so they do
not return in lock-step) and the allowed concurrency halves; successes ramp it back up one step at
a time. Concurrency never exceeds the server's ``x-ms-dop-hint`` or the hard limit of 52.

With a :class:`~shared.dataverse.budget.SharedBudget` the worker also stays within its share of the
budget every instance of the app shares, and waits out a 429 any instance has seen.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.dataverse.budget import SharedBudget

MAX_CONCURRENCY = 52  # Dataverse's concurrent-request limit per user per server
JITTER_FRACTION = 0.2  # up to 20 % extra pause, so paused workers do not all resume together
# After a throttle, add one slot of concurrency per success. The pause already waited out Retry-After, and a
# halved limit that is still too high meets the next 429 and halves again; ramping one slot per 4 successes
# lost much of the throughput after isolated 429s (BENCHMARKS.md, production-like).
SUCCESSES_PER_RAMP_STEP = 1


class ThrottleGovernor:
    def __init__(
        self,
        max_concurrency: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        budget: SharedBudget | None = None,
    ) -> None:
        self.ceiling = max(1, min(max_concurrency, MAX_CONCURRENCY))
        self.limit = self.ceiling
        self.in_flight = 0
        self.waiting = 0
        self.budget = budget
        self.paused_until = 0.0
        self.throttles = 0
        self._successes = 0
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security  # nosec B311
        self._cond = threading.Condition()
        if budget is not None:
            budget.attach(self._demand, self._wake)

    def __repr__(self) -> str:
        return f"ThrottleGovernor(limit={self.limit}, ceiling={self.ceiling}, in_flight={self.in_flight})"

    def _demand(self) -> tuple[int, int, int]:
        with self._cond:
            return self.in_flight, self.waiting, self.ceiling

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _allowed(self) -> int:
        return self.limit if self.budget is None else min(self.limit, self.budget.allowed())

    def _pause_left(self) -> float:
        local = self.paused_until - self._clock()
        return local if self.budget is None else max(local, self.budget.pause_remaining())

    def apply_dop_hint(self, hint: int) -> None:
        """Never exceed the server's recommended degree of parallelism."""
        with self._cond:
            self.ceiling = max(1, min(self.ceiling, hint, MAX_CONCURRENCY))
            self.limit = min(self.limit, self.ceiling)

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one concurrency slot; waits out any pause (this worker's or the shared one) first."""
        budget = self.budget
        with self._cond:
            counted = False
            try:
                while True:
                    wait = self._pause_left()
                    if wait > 0:
                        self._cond.release()
                        try:
                            self._sleep(wait)
                        finally:
                            self._cond.acquire()
                        continue
                    if self.in_flight < self._allowed():
                        break
                    if not counted:
                        counted = True
                        self.waiting += 1
                        if budget is not None:
                            budget.demand_changed()
                    self._cond.wait(timeout=0.5)
            finally:
                if counted:
                    self.waiting -= 1
            self.in_flight += 1
        if budget is not None:
            budget.touch()
        try:
            yield
        finally:
            with self._cond:
                self.in_flight -= 1
                self._cond.notify()

    def throttled(self, retry_after_s: float) -> None:
        with self._cond:
            self.throttles += 1
            pause = retry_after_s * (1 + self._rng.random() * JITTER_FRACTION)
            self.paused_until = max(self.paused_until, self._clock() + pause)
            self.limit = max(1, self.limit // 2)
            self._successes = 0
        if self.budget is not None:
            self.budget.share_pause(retry_after_s)

    def succeeded(self) -> None:
        with self._cond:
            if self.limit >= self.ceiling:
                return
            self._successes += 1
            if self._successes >= SUCCESSES_PER_RAMP_STEP:
                self._successes = 0
                self.limit += 1
                self._cond.notify()
