"""Service protection (Dataverse's three limits: requests, execution time, concurrency) and the cost model.

Per (user, web server): a sliding window of request timestamps and of execution time, and an
in-flight counter. Every request costs network latency plus server time (single operation, each
operation of a ``$batch`` in sequence, or a bulk message's fixed + per-record cost); only server time
accrues to the execution-time limit. ``time_scale`` shrinks every time and every window together, so
ratios (and the ceiling formula) hold at any scale.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Limits:
    latency_ms: float = 40.0
    single_op_ms: float = 80.0
    batch_op_ms: float = 80.0
    bulk_fixed_ms: float = 100.0
    bulk_per_record_ms: float = 6.5
    web_servers: int = 1
    requests_per_window: int = 6000
    execution_ms_per_window: float = 1_200_000.0
    window_s: float = 300.0
    concurrency: int = 52
    dop_hint: int | None = None  # default 4 x web servers
    time_scale: float = 1.0

    @classmethod
    def from_scenario(cls, section: dict[str, Any], time_scale: float | None) -> Limits:
        known = {k: v for k, v in section.items() if k in cls.__dataclass_fields__}
        limits = cls(**known)
        if time_scale is not None:
            limits.time_scale = time_scale
        return limits

    @property
    def hint(self) -> int:
        return self.dop_hint or 4 * self.web_servers


@dataclass
class _Window:
    requests: deque[float] = field(default_factory=deque)
    executions: deque[tuple[float, float]] = field(default_factory=deque)  # (finished at, model ms)
    execution_ms: float = 0.0
    in_flight: int = 0


@dataclass
class Throttle:
    code: str
    message: str
    retry_after_s: int


class Governor:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._turn = itertools.count()
        self._windows: dict[tuple[str, int], _Window] = {}
        self._lock = threading.Lock()
        self.peak_in_flight = 0  # the most requests of one user on one server admitted at once

    @property
    def server_ids(self) -> list[str]:
        """Stable ARRAffinity values, one per web server (the count can change at run time)."""
        return [uuid.uuid5(uuid.NAMESPACE_DNS, f"server{i}").hex for i in range(self.limits.web_servers)]

    def pick_server(self, affinity: str | None) -> int:
        ids = self.server_ids
        if affinity and affinity in ids:
            return ids.index(affinity)
        with self._lock:
            return next(self._turn) % len(ids)

    def _window(self, user: str, server: int, now: float) -> _Window:
        window = self._windows.setdefault((user, server), _Window())
        horizon = now - self.limits.window_s * self.limits.time_scale
        while window.requests and window.requests[0] <= horizon:
            window.requests.popleft()
        while window.executions and window.executions[0][0] <= horizon:
            window.execution_ms -= window.executions.popleft()[1]
        return window

    def reset_windows(self) -> None:
        """Forget every window (benchmarks start each configuration from a quiet server)."""
        with self._lock:
            self._windows.clear()
            self.peak_in_flight = 0

    def admit(self, user: str, server: int) -> Throttle | None:
        """Check the three limits; on success the request is counted and in flight."""
        lim = self.limits
        now = time.monotonic()
        with self._lock:
            window = self._window(user, server, now)
            if window.in_flight >= lim.concurrency:
                return Throttle(
                    "0x80072326", f"Number of concurrent requests exceeded the limit of {lim.concurrency}.", 1
                )
            span = lim.window_s * lim.time_scale
            if len(window.requests) >= lim.requests_per_window:
                wait = window.requests[0] + span - now
                return Throttle(
                    "0x80072322",
                    f"Number of requests exceeded the limit of {lim.requests_per_window} over time window of"
                    f" {lim.window_s:g} seconds.",
                    max(1, math.ceil(wait)),
                )
            if window.execution_ms >= lim.execution_ms_per_window:
                wait = window.executions[0][0] + span - now if window.executions else span
                return Throttle(
                    "0x80072321",
                    f"Combined execution time of incoming requests exceeded limit of"
                    f" {lim.execution_ms_per_window:,.0f}  milliseconds over time window of {lim.window_s:g} seconds."
                    " Decrease number of concurrent requests or reduce the duration of requests and try again later.",
                    max(1, math.ceil(wait)),
                )
            window.requests.append(now)
            window.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, window.in_flight)
            return None

    async def spend(self, server_ms: float, *, already_s: float = 0.0) -> None:
        """Wait out the request's latency and server time (scaled), minus the real time the emulator
        already spent doing the work: its own CPU time is part of the modeled server time, not extra."""
        delay_s = (self.limits.latency_ms + server_ms) * self.limits.time_scale / 1000 - already_s
        if delay_s > 0:
            await asyncio.sleep(delay_s)

    def finish(self, user: str, server: int, server_ms: float) -> None:
        now = time.monotonic()
        with self._lock:
            window = self._window(user, server, now)
            window.in_flight -= 1
            window.executions.append((now, server_ms))
            window.execution_ms += server_ms

    def remaining(self, user: str, server: int) -> tuple[int, float]:
        """(requests left in the window, execution seconds left) for the informational headers."""
        with self._lock:
            window = self._window(user, server, time.monotonic())
            left_requests = max(0, self.limits.requests_per_window - len(window.requests))
            left_s = max(0.0, (self.limits.execution_ms_per_window - window.execution_ms) / 1000)
        return left_requests, left_s

    def server_cost_ms(self, *, operations: int, bulk_records: int | None) -> float:
        if bulk_records is not None:
            return self.limits.bulk_fixed_ms + self.limits.bulk_per_record_ms * bulk_records
        if operations > 1:
            return self.limits.batch_op_ms * operations
        return self.limits.single_op_ms
