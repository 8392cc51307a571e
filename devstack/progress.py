"""Progress for the first runs, read from the emulators while the work itself runs in the host's worker.

A first run is one blocking call to the local host (a sync run answers when the job is done); it runs in a
thread while the main thread polls cheap counters about once a second (the Dataverse emulator's
``/_devstack/stats``, a queue's message count) and moves a rich progress bar. Nothing here runs app code:
the bars show what the emulators saw, not what the app says it did.
"""

from __future__ import annotations

import json
import ssl
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager, suppress
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

POLL_S = 1.0
STATS_TIMEOUT_S = 30


class DataverseStats:
    """``GET /_devstack/stats`` of the Dataverse emulator: counters and records per table."""

    def __init__(self, env: dict[str, str]) -> None:
        self.url = f"{env['DEVSTACK_DATAVERSE_URL']}/_devstack/stats"
        self.context = ssl.create_default_context(cafile=env["DEVSTACK_CA_CERT"])

    def snapshot(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url, timeout=STATS_TIMEOUT_S, context=self.context) as response:  # noqa: S310
            loaded: dict[str, Any] = json.loads(response.read())
        return loaded

    def records(self, table: str) -> int:
        return int(self.snapshot().get("records_per_table", {}).get(table, 0))


def counter(snapshot: dict[str, Any], name: str) -> int:
    return int(snapshot.get("counters", {}).get(name, 0))


def throttles(snapshot: dict[str, Any]) -> int:
    """Every 429 the emulator answered (its counters are ``throttled <code>``)."""
    return sum(int(n) for k, n in snapshot.get("counters", {}).items() if k.startswith("throttled "))


def bar(console: Console | None = None, *, extra: str = "") -> Progress:
    """The bar every first run shows: label, bar, done/total, elapsed, and an optional text field."""
    columns: list[Any] = [TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    if extra:
        columns.append(TextColumn(extra))
    return Progress(*columns, console=console or Console())


@contextmanager
def in_thread[T](call: Callable[[], T]) -> Iterator[Future[T]]:
    """Run ``call`` in a thread of its own; the caller polls the future (``done()``) and reads its result."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="first-run")
    try:
        yield pool.submit(call)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def poll_until_done(future: Future[Any], poll: Callable[[], None], interval_s: float = POLL_S) -> None:
    """``poll()`` about every ``interval_s`` until ``future`` is done, and once after that. A failing poll (an
    emulator busy past the timeout) skips one update: the call's own outcome decides the step."""
    while True:
        done = future.done()
        with suppress(OSError, ValueError):  # an emulator busy past the timeout, a half-read answer
            poll()
        if done:
            return
        wait([future], timeout=interval_s)
