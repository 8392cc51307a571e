"""Claims in Table Storage with a TTL: of N copies of one piece of work, exactly one wins.

A claim is one conditional write, an insert-if-absent
(``create_entity``; the loser gets ``ResourceExistsError``) or, to take over a claim that expired or whose
holder stopped renewing it (:class:`LeaseKeeper`), an ETag-conditional replace (``IfNotModified``; the
loser gets a 412). A check followed by a separate write would let every copy that reads before the first
write see "not seen".

Two kinds of row, both with ``Expires``:

* a **record** is written settled: the receiver enqueues first, then records the delivery ``accepted``
  (:meth:`Claims.record`). The copy whose insert wins answers 202; a copy that finds the record knows that
  its winner's message is already on the queue, so it withdraws its own message and answers as a replay at
  once, with no waiting;
* a **claim** moves ``<in progress>`` (with a lease) -> ``<settled>`` (no lease): the processor claims
  ``processing``, runs the handlers, then settles ``done``; it gives up its claim when a handler fails, so
  the queue's retry can win.

Nothing is lost: a record is written only after its message is on the queue, and a claim is settled only
*after* the work it stands for; a holder that crashed in between leaves an in-progress claim that any copy
takes over once its lease has run out. What a crash can cost is a second message or a repetition of
idempotent work, never the event.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared.errors import DvbridgeError

_logger = logging.getLogger(__name__)
# A claim row churning between delete and insert (holders giving up while others arrive) is re-read at
# most this many times per attempt before the caller is told it is busy.
CONTENTION_ATTEMPTS = 4
POLL_FIRST_S = 0.05  # a holder usually settles within a few storage calls
POLL_MAX_S = 0.5
LEASE_RENEW_FRACTION = 1 / 3  # a lease is renewed when a third of it has passed: two renewals may fail


def _row_key(key: str) -> str:
    # fixed length, no characters Table keys forbid; surrogatepass: a key may hold any JSON text
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:40]


PARTITION_SPREAD_HEX_CHARS = 2  # 256 partitions per scope


def partition_key(scope: str, row_key: str) -> str:
    """A scope's claims spread over partitions by the row key's leading hex digits: one partition holding
    every claim of a busy source would cap its throughput (Table storage serves a partition from one
    server) and makes each point operation costlier as it grows."""
    return f"{scope}-{row_key[:PARTITION_SPREAD_HEX_CHARS]}"


@dataclass(frozen=True)
class Claim:
    """A claim this caller won. Its ETag lets the caller settle or give it up only while nobody has taken
    it over (a takeover changes the ETag)."""

    scope: str
    row_key: str
    etag: str
    claimed_at: float


@dataclass(frozen=True)
class Held:
    """A claim another copy holds, as read. ``in_progress``: its holder has neither settled nor given it up
    and its lease has not run out (else this caller would have taken it over)."""

    state: str
    in_progress: bool


class ClaimLost(DvbridgeError):
    """The claim was taken over (or deleted) since this caller won it: the ETag no longer matches."""


class Claims:
    """Claims in one table, each remembered for ``ttl_s`` (its ``Expires``)."""

    def __init__(
        self,
        table_client: Any,
        *,
        ttl_s: float,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._table = table_client
        self.ttl_s = ttl_s
        self._clock = clock
        self._sleep = sleep

    def claim(self, scope: str, key: str, *, state: str, lease_s: float, wait_s: float = 0.0) -> Claim | Held:
        """Win ``key`` in ``scope`` with an in-progress ``state`` held for ``lease_s``, or say who holds it.

        An absent row, an expired one (``Expires`` passed) and an in-progress one whose lease ran out are
        won; a settled row is returned as :class:`Held` at once. An in-progress row held by another copy is
        polled for up to ``wait_s``: until it is settled (returned), given up (claimed again) or its lease
        runs out (taken over). After ``wait_s`` it is returned as in progress."""
        row = _row_key(key)
        deadline = time.monotonic() + wait_s
        delay = POLL_FIRST_S
        while True:
            outcome = self._try_claim(scope, row, state, lease_s)
            if isinstance(outcome, Claim) or not outcome.in_progress:
                return outcome
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return outcome
            self._sleep(min(delay, remaining))
            delay = min(delay * 2, POLL_MAX_S)

    def record(self, scope: str, key: str, *, state: str) -> Claim | Held:
        """Write ``key`` in ``scope`` as settled in ``state`` if no copy has (an absent or expired row is
        won), else say what is there. Never waits: a settled row is final, and an in-progress row (a claim
        of the same scope, taken by a caller of :meth:`claim`) is returned as it is."""
        return self._try_claim(scope, _row_key(key), state, None)

    def _try_claim(self, scope: str, row: str, state: str, lease_s: float | None) -> Claim | Held:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        for _ in range(CONTENTION_ATTEMPTS):
            now = self._clock()
            entity = {
                "PartitionKey": partition_key(scope, row),
                "RowKey": row,
                "State": state,
                "ClaimedAt": now,
                "LeaseUntil": 0.0 if lease_s is None else now + lease_s,  # 0: settled, no lease
                "Expires": now + self.ttl_s,
            }
            try:
                return self._won(scope, row, self._table.create_entity(entity), now)
            except ResourceExistsError:
                pass
            try:
                current = self._table.get_entity(partition_key(scope, row), row)
            except ResourceNotFoundError:
                continue  # given up between our insert and our read: insert again
            if not _stale(current, now):
                return Held(str(current.get("State", "settled")), _leased(current))
            try:  # expired, or its holder stopped before settling: one taker wins the ETag
                metadata = self._table.update_entity(
                    entity,
                    mode=UpdateMode.REPLACE,
                    etag=current.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                )
            except (ResourceModifiedError, ResourceNotFoundError):
                continue  # another copy took it over or gave it up first: read again
            return self._won(scope, row, metadata, now)
        return Held(state, True)  # churning: busy, as far as this caller can tell

    @staticmethod
    def _won(scope: str, row: str, metadata: dict[str, Any], now: float) -> Claim:
        return Claim(scope, row, str(metadata["etag"]), now)

    def settle(self, claim: Claim, state: str) -> Claim:
        """Move a won claim to a settled ``state`` (no lease), renewing its TTL. Raises :class:`ClaimLost`
        when another copy took it over meanwhile; other storage errors propagate."""
        return self._replace(claim, state, lease_s=None, doing="settled")

    def renew(self, claim: Claim, state: str, lease_s: float) -> Claim:
        """Extend a won, in-progress claim's lease (ETag-guarded). Raises :class:`ClaimLost` when another
        copy took it over meanwhile."""
        return self._replace(claim, state, lease_s=lease_s, doing="renewed")

    def _replace(self, claim: Claim, state: str, *, lease_s: float | None, doing: str) -> Claim:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        now = self._clock()
        entity = {
            "PartitionKey": partition_key(claim.scope, claim.row_key),
            "RowKey": claim.row_key,
            "State": state,
            "ClaimedAt": claim.claimed_at,
            "LeaseUntil": 0.0 if lease_s is None else now + lease_s,  # 0: settled, no lease
            "Expires": now + self.ttl_s,
        }
        try:
            metadata = self._table.update_entity(
                entity, mode=UpdateMode.REPLACE, etag=claim.etag, match_condition=MatchConditions.IfNotModified
            )
        except (ResourceModifiedError, ResourceNotFoundError) as exc:
            raise ClaimLost(f"the {claim.scope} claim was taken over before it was {doing}") from exc
        return Claim(claim.scope, claim.row_key, str(metadata["etag"]), claim.claimed_at)

    def release(self, claim: Claim) -> bool:
        """Give up a won claim (delete it) unless another copy took it over; True when it was deleted.

        Deleting an absent row succeeds, so True can also mean that it was already gone."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError

        try:
            self._table.delete_entity(
                partition_key(claim.scope, claim.row_key),
                claim.row_key,
                etag=claim.etag,
                match_condition=MatchConditions.IfNotModified,
            )
        except ResourceModifiedError:
            return False
        return True


def _leased(entity: Any) -> bool:
    """In progress: a lease was taken and not yet cleared by settling. Rows written before claims existed
    (only ``Expires``) count as settled."""
    return float(entity.get("LeaseUntil", 0) or 0) > 0


def _stale(entity: Any, now: float) -> bool:
    if float(entity.get("Expires", 0) or 0) <= now:
        return True
    return _leased(entity) and float(entity["LeaseUntil"]) <= now


class LeaseKeeper:
    """Renews a claim's lease while its holder works (``with LeaseKeeper(...) as keeper``), so work that
    outlasts one lease (a handler waiting out Dataverse's throttling) is not taken over and run twice.
    ``keeper.claim`` is the latest claim (its ETag changes with each renewal); settle or give up that one."""

    def __init__(self, dedupe: Claims, claim: Claim, *, state: str, lease_s: float) -> None:
        self._dedupe, self._state, self._lease_s = dedupe, state, lease_s
        self._claim = claim
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_until_stopped, name="claim-lease", daemon=True)

    @property
    def claim(self) -> Claim:
        with self._lock:
            return self._claim

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        """No renewal after this returns (so none can race a release or a settle)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _renew_until_stopped(self) -> None:
        from shared.logging import log_event

        while not self._stop.wait(self._lease_s * LEASE_RENEW_FRACTION):
            try:
                renewed = self._dedupe.renew(self.claim, self._state, self._lease_s)
            except ClaimLost:
                return  # taken over: settling will say so; renewing further cannot help
            except Exception as exc:  # storage hiccup: the next renewal may still land within the lease
                log_event(
                    logging.getLogger(__name__), "webhook_lease_renew_failed", logging.WARNING, error=type(exc).__name__
                )
                continue
            with self._lock:
                self._claim = renewed
