"""One Dataverse budget for every instance of the app.

Dataverse's service protection limits count per application user (and web server), however many callers
there are: with Flex Consumption scaling a queue backlog out to tens of instances, a per-instance limit
cannot keep the app inside them. So the instances share one budget through the storage account they
already share (no new server):

* **Concurrency.** One ETag-guarded Table row holds every live instance's *share*: its claim (requests it
  may have in flight), its want (the demand it saw) and when the share expires. Each instance renews its
  own share every third of the lease; the split is max-min fair over the wants, an instance grows only
  into budget nobody claims, and it lowers its claim only once its requests in flight fit under the lower
  figure. So the claims never add up to more than the budget, and no instance has more requests in
  flight than it claims. A dead instance's share expires one lease after its last renewal. An idle
  instance publishes a want of 0, then stops renewing: idle instances cost no storage calls.
* **Throttling.** A 429 seen by one instance raises one shared marker, "paused until T" (it only ever
  moves later); every instance that is sending reads it every :data:`THROTTLE_POLL_S` and waits until T
  (plus its own jitter, so the instances do not all return together), instead of each one discovering
  the same throttle with requests of its own.

Storage calls: in steady state one read and one write per instance per third of a lease, and at most one
renewal per :data:`URGENT_RENEW_FRACTION` of a lease while demand changes; one marker read per
:data:`THROTTLE_POLL_S` while the instance is sending, and one write per throttle episode. Never one per
Dataverse request. Expiry times are wall-clock: the instances' clocks must agree to well within a lease
(NTP-synchronised hosts do).
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from shared.logging import log_event

logger = logging.getLogger(__name__)

RENEW_FRACTION = 1 / 3  # a share is renewed when a third of its lease has passed: two renewals may fail
# A change of demand (a starving or idle instance, a release) is published at most this often, as a
# fraction of the lease: prompt enough that a freed share is taken within a few seconds, and a bounded
# number of storage calls per lease whatever the workload does.
URGENT_RENEW_FRACTION = 1 / 6
# A share stops being used this fraction of a lease before it expires, so a renewal that keeps failing
# never lets this instance run on a share that others already count as free.
EXPIRY_MARGIN_FRACTION = 1 / 6
THROTTLE_POLL_S = 0.5  # while sending, the shared 429 marker is read this often (others stop within ~1 s)
IDLE_AFTER_S = 1.0  # no request for this long: the instance stops reading the marker
OFFLINE_CONCURRENCY = 1  # requests in flight while the shared row cannot be reached and the share has lapsed
WRITE_ATTEMPTS = 5  # ETag conflicts (another instance wrote first) retried per renewal
PAUSE_JITTER_FRACTION = 0.2  # up to 20 % of a shared pause added, so paused instances do not resume together
PAUSE_EPSILON_S = 0.05  # a 429 whose pause ends this close to the published one does not write again
RETRY_UNREACHABLE_S = 1.0
FIRST_WANT_GATHER_S = 0.05  # after a failed storage call, the next try waits at least this long


@dataclass(frozen=True)
class Share:
    """One instance's part of the budget, as stored in the shared row."""

    claim: int  # requests this instance may have in flight
    want: int  # the demand it saw since its last renewal (in flight plus waiting), capped by its own ceiling
    expires: float  # wall-clock seconds (Unix time): after this the claim counts as free


class BudgetStore(Protocol):
    """The shared row and marker (``shared.storage.budget`` on Table storage; an in-memory fake in tests)."""

    def read_shares(self) -> tuple[dict[str, Share], str | None]:
        """Every stored share and the row's ETag (None when there is no row yet)."""
        ...

    def write_shares(self, shares: Mapping[str, Share], etag: str | None) -> bool:
        """Replace the row if it still has ``etag`` (create it when None); False when another wrote first."""
        ...

    def read_pause(self) -> float:
        """The shared "paused until" (Unix seconds; 0 when there has been none)."""
        ...

    def raise_pause(self, until: float) -> None:
        """Move the shared pause to ``until`` unless it already ends later."""
        ...


def fair_shares(budget: int, wants: Mapping[str, int]) -> dict[str, int]:
    """Max-min fair split of ``budget`` over the wants: nobody gets more than they want, and what one does
    not want is split among the others. Whole requests; a remainder goes to the lowest ids, so every
    instance computes the same split."""
    result = dict.fromkeys(wants, 0)
    remaining = max(0, budget)
    active = sorted(k for k, w in wants.items() if w > 0)
    while remaining > 0 and active:
        per, extra = divmod(remaining, len(active))
        if per == 0:
            for key in active[:extra]:
                result[key] += 1
            break
        still: list[str] = []
        for key in active:
            take = min(wants[key] - result[key], per)
            result[key] += take
            remaining -= take
            if result[key] < wants[key]:
                still.append(key)
        active = still
    return result


@dataclass(frozen=True)
class Plan:
    allowed: int  # requests this instance may have in flight: its fair share, within what others leave
    free: int  # the budget the others leave unclaimed (the most it may claim)
    fair: int  # its fair share (what it gets once the others have released)


def plan_share(me: str, live: Mapping[str, Share], budget: int, *, want: int) -> Plan:
    """This instance's share, given the live shares (expired ones already dropped): up to its fair share,
    but only within the budget the others leave unclaimed. It claims at least what it still has in flight
    (:meth:`SharedBudget._renew`): a lower claim is published once the requests above it have finished."""
    wants = {key: share.want for key, share in live.items() if key != me}
    wants[me] = want
    fair = fair_shares(budget, wants)[me]
    free = max(0, budget - sum(share.claim for key, share in live.items() if key != me))
    return Plan(allowed=min(fair, free), free=free, fair=fair)


def instance_name() -> str:
    """A name for this worker process: host, process id and a random part (a restarted process is new)."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class SharedBudget:
    """This worker's view of the shared budget; the throttle governor asks it how many requests it may
    have in flight and whether a shared pause is on. A background thread (started on first use) renews the
    share and reads the marker; the governor reports demand through :meth:`demand_changed`."""

    def __init__(
        self,
        store: BudgetStore,
        budget: int,
        lease_s: float,
        *,
        instance: str | None = None,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.budget = budget
        self.lease_s = lease_s
        self.instance = instance or instance_name()
        self._wall = wall
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security  # nosec B311
        self._lock = threading.Condition()
        self._allowed = 0
        self._published = 0
        self._published_want = 0
        self._expires = 0.0
        self._pause_until = 0.0  # wall clock, with this instance's jitter
        self._pause_seen = 0.0  # the marker as last read
        self._pause_published = 0.0
        self._demand: Callable[[], tuple[int, int, int]] = lambda: (0, 0, self.budget)
        self._on_change: Callable[[], None] = lambda: None
        self._last_renewal = float("-inf")
        self._last_poll = float("-inf")
        self._last_active = float("-inf")
        self._unreachable_since: float | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False
        # What coordination cost, for tests and the benchmark: storage calls of each kind.
        self.renewals = 0
        self.pause_reads = 0
        self.pause_writes = 0

    def __repr__(self) -> str:
        return f"SharedBudget(instance={self.instance!r}, budget={self.budget}, allowed={self._allowed})"

    # -- what the governor asks ---------------------------------------------------------------------------
    def attach(self, demand: Callable[[], tuple[int, int, int]], on_change: Callable[[], None]) -> None:
        """``demand()`` gives (in flight, waiting, the governor's own ceiling); ``on_change()`` wakes its
        waiters when this instance may send more or a pause ends."""
        self._demand, self._on_change = demand, on_change

    def allowed(self) -> int:
        """Requests this instance may have in flight now."""
        with self._lock:
            if self._wall() >= self._expires - self.lease_s * EXPIRY_MARGIN_FRACTION:
                return OFFLINE_CONCURRENCY if self._unreachable_since is not None else 0
            return self._allowed

    def pause_remaining(self) -> float:
        """Seconds until the shared pause ends (0 when there is none)."""
        with self._lock:
            return max(0.0, self._pause_until - self._wall())

    def touch(self) -> None:
        """A request is starting: the instance is active (it reads the shared marker while it is)."""
        self._last_active = self._clock()

    def demand_changed(self) -> None:
        """A request started waiting for a slot: wake the renewal thread (started on first use)."""
        with self._lock:
            self._last_active = self._clock()
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(target=self._run, name="dataverse-budget", daemon=True)
                self._thread.start()
            self._lock.notify_all()

    def share_pause(self, retry_after_s: float) -> None:
        """This instance got a 429: tell every instance to wait until it has passed."""
        until = self._wall() + retry_after_s
        with self._lock:
            self._pause_until = max(self._pause_until, until)
            if until <= max(self._pause_published, self._pause_seen) + PAUSE_EPSILON_S:  # already shared
                return
            self._pause_published = until
        try:
            self.store.raise_pause(until)
            self.pause_writes += 1
        except Exception as exc:  # the local pause holds; the others find the throttle themselves
            log_event(logger, "dataverse_budget_unreachable", level=logging.WARNING, call="raise_pause",
                      error=type(exc).__name__)  # fmt: skip

    def stop(self) -> None:
        """Stop the renewal thread (tests and benchmarks that build many budgets)."""
        with self._lock:
            self._stopped = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- the renewal thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        time.sleep(FIRST_WANT_GATHER_S)  # the first requests arrive together: count them all in the first want
        while True:
            with self._lock:
                if self._stopped:
                    return
            wait = self.step()
            with self._lock:
                if self._stopped:
                    return
                self._lock.wait(timeout=wait)

    def step(self) -> float:
        """Renew and poll what is due; returns how long until something may be due again."""
        now = self._clock()
        in_flight, waiting, ceiling = self._demand()
        want = min(ceiling, self.budget, in_flight + waiting)
        with self._lock:
            active = in_flight > 0 or waiting > 0 or now - self._last_active < IDLE_AFTER_S
            if in_flight or waiting:
                self._last_active = now
            since = now - self._last_renewal
            holding = self._published > 0 or self._published_want > 0
            urgent = since >= self.lease_s * URGENT_RENEW_FRACTION and (
                want > self._allowed  # waiting for more: others may have released since the last renewal
                or want < self._allowed  # demand fell below the share: give the rest back
                or want != self._published_want  # the others split by a demand that has changed
                or self._published > self._allowed  # a release still to publish
            )
            regular = since >= self.lease_s * RENEW_FRACTION and (holding or want > 0)
            unreachable = self._unreachable_since is not None and since < RETRY_UNREACHABLE_S
            poll_due = active and now - self._last_poll >= THROTTLE_POLL_S
        if (urgent or regular) and not unreachable:
            self._renew(want)
        if poll_due:
            self._poll_pause()
        with self._lock:
            next_renewal = self.lease_s * (URGENT_RENEW_FRACTION if active else RENEW_FRACTION)
            return min(next_renewal, THROTTLE_POLL_S) if active else next_renewal

    def _renew(self, want: int) -> None:
        self._last_renewal = self._clock()
        try:
            for _ in range(WRITE_ATTEMPTS):
                shares, etag = self.store.read_shares()
                now = self._wall()
                live = {key: share for key, share in shares.items() if share.expires > now}
                plan = plan_share(self.instance, live, self.budget, want=want)
                with self._lock:  # start no request beyond the new share while the write is out
                    self._allowed = min(self._allowed if now < self._expires else 0, plan.allowed)
                # read after lowering: a slot the governor grants from here on saw the lower figure
                in_flight = self._demand()[0]
                publish = min(plan.free, max(plan.allowed, in_flight))
                rest = {key: share for key, share in live.items() if key != self.instance}
                if publish or want:
                    rest[self.instance] = Share(publish, want, now + self.lease_s)
                self.renewals += 1
                if self.store.write_shares(rest, etag):
                    self._applied(plan, publish, want, now + self.lease_s)
                    return
        except Exception as exc:  # storage down: run on the share until it lapses, then trickle
            with self._lock:
                first = self._unreachable_since is None
                self._unreachable_since = self._unreachable_since or self._clock()
            if first:
                log_event(logger, "dataverse_budget_unreachable", level=logging.WARNING, call="renew",
                          error=type(exc).__name__)  # fmt: skip

    def _applied(self, plan: Plan, publish: int, want: int, expires: float) -> None:
        with self._lock:
            grew = plan.allowed > self._allowed
            self._allowed, self._published = plan.allowed, publish
            self._published_want, self._expires = want, expires
            if self._unreachable_since is not None:
                down_s = round(self._clock() - self._unreachable_since, 1)
                log_event(logger, "dataverse_budget_reachable", unreachable_s=down_s)
                self._unreachable_since = None
        if grew:
            self._on_change()

    def _poll_pause(self) -> None:
        self._last_poll = self._clock()
        try:
            until = self.store.read_pause()
        except Exception:  # the next poll tries again; a missed marker costs one 429 of our own
            return
        self.pause_reads += 1
        with self._lock:
            if until <= self._pause_seen:
                return
            self._pause_seen = until
            left = until - self._wall()
            if left > 0:
                jitter = left * self._rng.random() * PAUSE_JITTER_FRACTION
                self._pause_until = max(self._pause_until, until + jitter)
