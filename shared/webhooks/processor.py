"""Queue-side processing of acknowledged webhooks: dispatch by (source, table, message) to handlers.

Dataverse events are ordered per record (shared.webhooks.ordering): one is applied only when its row
version (``RowVersion`` from the context, else ``versionnumber`` of the record fetched now) is newer than
the last applied for that record; an older or repeated one is counted and dropped, and a deletion wins over
older updates. That guard also reduces copies of one delivery (Dataverse's retry after a lost 202, the
reconciler's copy of a delivered change) to one effect, so the receiver only enqueues them.

For the signed sources, of N copies of one event (a sender's retry racing its first copy, a replayed poison
message, a queue redelivery), one runs the handlers: the processor claims the event key
(shared.webhooks.dedupe) before it runs them and settles the claim after their effects.

Handlers are idempotent all the same, because a crash between effects and settling (or finishing the
ordering claim) repeats them: the blob handler writes one blob per event key (overwrite), the
upsert handler upserts by key, and the HTTP forwarder signs each delivery with the event key as its nonce
so the receiver can deduplicate.

Events too large for a queue message (claim check): the receiver writes the message to a blob in
``webhook-claims`` named by the hash of source and event key, and enqueues a reference
``{"claim": <blob name>, "source", "key"}``. The processor reads the blob, and deletes it once the event is
settled as done (a copy that finds the event done deletes it too).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.dataverse.addressing import KeyValueRefused, guid
from shared.dataverse.client import DataverseClient
from shared.dataverse.schema import TableMetadata, TableSchema
from shared.errors import DataverseError, DvbridgeError
from shared.logging import log_event
from shared.mapping.mapper import Mapper, Rejection
from shared.outgoing_http import HttpCaller
from shared.storage import Storage
from shared.storage.queues import QueuedMessage, queue_message_fits
from shared.telemetry import record_webhook
from shared.webhooks.dedupe import DEDUPE_TABLE, Claim, ClaimLost, Dedupe, LeaseKeeper, processed_scope
from shared.webhooks.routes import BlobHandler, Handler, HttpForwardHandler, RoutesFile, UpsertHandler

if TYPE_CHECKING:
    from shared.webhooks.ordering import Change

logger = logging.getLogger(__name__)

EVENT_QUEUE = "webhook-events"
DEAD_LETTER_CONTAINER = "webhook-deadletters"
_SAFE_NAME_PART = re.compile(r"[A-Za-z0-9_.-]{1,100}")
_CLAIM_BLOB = re.compile(r"[0-9a-f]{64}-[0-9a-f]{32}\.json")
CLAIM_CONTAINER = "webhook-claims"  # claim-check blobs: messages too large for the queue
PROCESSING, DONE = "processing", "done"  # the processed-scope claim's states
# A holder that has not settled within the lease is taken for crashed and its claim taken over; a holder
# still alive at that point (a slow forward) then runs alongside its taker, which idempotent handlers
# absorb. Shorter than the queue's retries (visibilityTimeout x maxDequeueCount in host.json), so that the
# redelivery of a crashed holder's message takes its claim over before the message is poisoned.
PROCESS_LEASE_S = 60
# A copy that finds another copy processing waits this long for it to settle before asking the queue to
# deliver it again later (one worker thread is held meanwhile).
PROCESS_WAIT_S = 5.0
BUSY_POLL_S = 0.25  # how often a copy waiting for another event of its record asks again
DATAVERSE = "dataverse"  # the source whose events carry row versions and go through the ordering guard


class EventInProgress(DvbridgeError):
    """Another copy of this event is being processed: raised so that the queue delivers this one again
    later, when that copy has settled (then it is skipped) or given up (then this one runs)."""


def claim_blob_name(source: str, key: str) -> str:
    """A new claim-check blob's name: a hash of source and event key (never raw input), then a part of its
    own, so that two copies of one delivery never share a blob and neither can delete the other's."""
    return f"{_event_hash(source, key)}-{uuid.uuid4().hex}.json"


def _event_hash(source: str, key: str) -> str:
    return hashlib.sha256(f"{source}\n{key}".encode("utf-8", "surrogatepass")).hexdigest()


def _claim_blob(message: dict[str, Any], source: str, key: str) -> str | None:
    """The claim-check blob a queue message names, accepted only if it is a blob of this very event."""
    name = message.get("claim")
    if name is None:
        return None
    if not isinstance(name, str) or not _CLAIM_BLOB.fullmatch(name) or not name.startswith(_event_hash(source, key)):
        raise ValueError("the message names a claim-check blob that is not this event's")
    return name


@dataclass(frozen=True)
class HandlerContext:
    """What the handlers use: storage, the Dataverse client, table metadata (read once per worker) and
    Key Vault secrets (forwarding signatures)."""

    storage: Storage
    client: DataverseClient
    metadata: TableMetadata
    secret: Callable[[str], str] | None = None
    forwarder: HttpCaller | None = None  # the worker's caller for forward targets (FORWARD policy)

    def schema(self, table: str) -> TableSchema:
        return self.metadata.schema(table)


@dataclass(frozen=True)
class Enqueued:
    """An event this copy put on the queue: its message, and its claim-check blob when it needed one."""

    message: QueuedMessage
    blob: str | None


def enqueue_event(storage: Storage, message: dict[str, Any]) -> Enqueued:
    """Put an event message on the queue; one too large for a queue message goes to a blob and the queue
    carries a reference to it. A failed enqueue removes that blob."""
    text = json.dumps(message)
    if queue_message_fits(text):
        return Enqueued(storage.enqueue_text(EVENT_QUEUE, text), None)
    source, key = str(message["source"]), str(message["key"])
    name = claim_blob_name(source, key)
    storage.put_blob(CLAIM_CONTAINER, name, text.encode())
    try:
        sent = storage.enqueue(EVENT_QUEUE, {"claim": name, "source": source, "key": key})
    except BaseException:
        _drop_claim_blob(storage, name)  # this copy's own blob: nothing else references it
        raise
    return Enqueued(sent, name)


def withdraw_event(storage: Storage, enqueued: Enqueued) -> bool:
    """Take back a copy's message (another copy of the event is on the queue already), best effort: a
    message that stays, because it was received meanwhile or storage failed, is reduced to no effect by the
    processor's claim. True when the message was deleted (and with it the copy's claim-check blob)."""
    try:
        withdrawn = storage.withdraw(enqueued.message)
    except Exception as exc:
        log_event(logger, "webhook_withdraw_failed", logging.WARNING, error=type(exc).__name__)
        return False
    if withdrawn and enqueued.blob:
        _drop_claim_blob(storage, enqueued.blob)  # nothing references it any more
    return withdrawn


def process(message: dict[str, Any], routes: RoutesFile, ctx: HandlerContext) -> list[str]:
    """Run every handler routed for this event once; return what each did. Raises to have the queue retry.

    Dataverse events go through the ordering guard (:func:`_process_ordered`). For a signed source's event:
    an event another copy already processed is skipped; one another copy is processing raises
    :class:`EventInProgress` (after waiting briefly for it). A handler's failure gives the claim up and
    propagates, so the queue's retry runs the event again."""
    source = str(message["source"])
    key = str(message["key"])
    blob = _claim_blob(message, source, key)
    if source == DATAVERSE:
        return _process_ordered(key, message, blob, routes, ctx)
    claims = Dedupe(ctx.storage.table(DEDUPE_TABLE))
    claim = claims.claim(processed_scope(source), key, state=PROCESSING, lease_s=PROCESS_LEASE_S, wait_s=PROCESS_WAIT_S)
    if not isinstance(claim, Claim):
        if claim.in_progress:
            raise EventInProgress(f"another copy of this {source} event is being processed; the queue retries")
        log_event(logger, "webhook_already_processed", source=source)
        record_webhook(source, "duplicate")
        if blob:
            _drop_claim_blob(ctx.storage, blob)
        return []
    with LeaseKeeper(claims, claim, state=PROCESSING, lease_s=PROCESS_LEASE_S) as keeper:
        try:
            full = _load(ctx.storage, blob) if blob else message
            effects = _run_handlers(source, key, full, routes, ctx)
        except BaseException:
            keeper.stop()  # no renewal may race the release
            _give_up(claims, keeper.claim, source)
            raise
    claim = keeper.claim
    try:  # another storage error propagates: the retry finds our lease, waits it out, repeats idempotently
        claims.settle(claim, DONE)
    except ClaimLost:  # our lease ran out and a copy took over: it settles (and drops the blob) instead
        log_event(logger, "webhook_claim_taken_over", logging.WARNING, source=source)
        return effects
    if blob:
        _drop_claim_blob(ctx.storage, blob)
    record_webhook(source, "processed", message.get("received_at"))
    return effects


def _process_ordered(
    key: str, message: dict[str, Any], blob: str | None, routes: RoutesFile, ctx: HandlerContext
) -> list[str]:
    """A Dataverse event, applied only when newer than what was applied for its record
    (shared.webhooks.ordering): a stale or duplicate copy is dropped, one that must follow another event of
    its record in progress waits briefly, then raises :class:`EventInProgress` for the queue to retry."""
    from shared.webhooks.ordering import Verdict, guard

    full = _load(ctx.storage, blob) if blob else message
    event: dict[str, Any] = full.get("event") or {}
    table, verb = event.get("table"), event.get("message")
    handlers = routes.handlers_for(DATAVERSE, table, verb)
    if not handlers:
        log_event(logger, "webhook_processed", source=DATAVERSE, table=table or "-", message=verb or "-", effects=0)
        _done(ctx.storage, blob)
        record_webhook(DATAVERSE, "processed", message.get("received_at"))
        return []
    current = _current_state(ctx, key, event)
    if isinstance(current, str):  # dead-lettered or superseded: nothing to order
        _done(ctx.storage, blob)
        return [current]
    ordering = guard(ctx.storage)
    change = _change(key, event)
    decision = ordering.begin(change)
    deadline = time.monotonic() + PROCESS_WAIT_S
    while decision.verdict is Verdict.BUSY and time.monotonic() < deadline:
        time.sleep(BUSY_POLL_S)
        decision = ordering.begin(change)
    if decision.verdict is Verdict.BUSY:
        raise EventInProgress(f"another event of this {table} record is being applied; the queue retries")
    if decision.ticket is None:  # stale or duplicate: never applied
        name = "webhook_stale" if decision.verdict is Verdict.STALE else "webhook_duplicate"
        log_event(logger, name, source=DATAVERSE, table=str(table), message=str(verb), version=change.version,
                  applied_version=decision.applied_version, reconciled=bool(event.get("reconciled")))  # fmt: skip
        _done(ctx.storage, blob)
        record_webhook(DATAVERSE, "stale" if decision.verdict is Verdict.STALE else "duplicate")
        return []
    try:
        effects = _apply_handlers(DATAVERSE, key, event, {}, handlers, ctx)
    except BaseException:
        try:
            ordering.abandon(decision.ticket)
        except Exception as exc:  # the claim's lease runs out instead; the queue's retry waits for it
            log_event(logger, "webhook_claim_release_failed", logging.WARNING, source=DATAVERSE,
                      error=type(exc).__name__)  # fmt: skip
        raise
    if not ordering.finish(decision.ticket):  # outlived the lease: the taker records; effects are idempotent
        log_event(logger, "webhook_claim_taken_over", logging.WARNING, source=DATAVERSE)
    _done(ctx.storage, blob)
    record_webhook(DATAVERSE, "processed", message.get("received_at"))
    return effects


def _change(key: str, event: dict[str, Any]) -> Change:
    from shared.webhooks.ordering import Change

    version = event.get("row_version")
    return Change(
        source=DATAVERSE,
        table=str(event.get("table")),
        record_id=str(event.get("record_id")),
        version=version if isinstance(version, int) and not isinstance(version, bool) else None,
        deleted=event.get("message") == "Delete",
        key=key,
    )


def _current_state(ctx: HandlerContext, key: str, event: dict[str, Any]) -> str | None:
    """For an update without a row version (a stripped context, no post image): the record as it is now,
    with its ``versionnumber``, into ``event``. A string: what became of an event that cannot be applied
    (a dead letter, or a record deleted since, whose Delete supersedes this event)."""
    table, verb = str(event.get("table")), event.get("message")
    if verb == "Delete" or event.get("row_version") is not None:
        return None
    try:
        fetched = _fetch(ctx, table, str(event.get("record_id")))
    except KeyValueRefused as refused:  # a table or id no URL may carry: every retry would fail the same way
        _dead_letter(ctx, DATAVERSE, key, event, Rejection("invalid_reference", str(refused), refused.field))
        return f"dead-lettered (invalid_reference {refused.field})"
    except DataverseError as exc:
        if exc.status != 404:
            raise  # throttling, outage: the queue retries
        # No such table: every retry would fail the same way, so keep the event with the reason.
        reason = f"the event names table {table!r}, which Dataverse does not have: {exc.message}"
        _dead_letter(ctx, DATAVERSE, key, event, Rejection("unknown_table", reason, "PrimaryEntityName"))
        return f"dead-lettered (unknown_table {table})"
    if fetched is None:
        log_event(logger, "webhook_superseded", source=DATAVERSE, table=table, message=str(verb))
        return "superseded (the record was deleted since)"
    version = fetched.get("versionnumber")
    event["row_version"] = _row_version_of(version)
    event["attributes"] = fetched
    event["post_image"] = fetched
    return None


def _row_version_of(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


def _done(storage: Storage, blob: str | None) -> None:
    if blob:
        _drop_claim_blob(storage, blob)


def _load(storage: Storage, blob: str) -> dict[str, Any]:
    data = storage.get_blob(CLAIM_CONTAINER, blob)
    if data is None:  # written before the reference was enqueued and deleted only after "done": not ours
        raise RuntimeError(f"the claim-check blob {CLAIM_CONTAINER}/{blob} is missing")
    loaded: dict[str, Any] = json.loads(data)
    return loaded


def _give_up(claims: Dedupe, claim: Claim, source: str) -> None:
    try:
        claims.release(claim)
    except Exception as exc:  # the lease runs out instead: the retry waits for it, then takes over
        log_event(logger, "webhook_claim_release_failed", logging.WARNING, source=source, error=type(exc).__name__)


def _drop_claim_blob(storage: Storage, blob: str) -> None:
    try:
        storage.delete_blob(CLAIM_CONTAINER, blob)
    except Exception as exc:  # the event is done; a leftover blob costs storage, not correctness
        log_event(logger, "webhook_claim_blob_left", logging.WARNING, error=type(exc).__name__)


def _run_handlers(source: str, key: str, message: dict[str, Any], routes: RoutesFile, ctx: HandlerContext) -> list[str]:
    event: dict[str, Any] = message.get("event") or {}
    payload: dict[str, Any] = message.get("payload") or {}
    handlers = routes.handlers_for(source, event.get("table"), event.get("message"))
    return _apply_handlers(source, key, event, payload, handlers, ctx)


def _apply_handlers(
    source: str, key: str, event: dict[str, Any], payload: dict[str, Any], handlers: Sequence[Handler],
    ctx: HandlerContext,
) -> list[str]:  # fmt: skip
    effects = []
    for handler in handlers:
        if isinstance(handler, BlobHandler):
            effects.append(_to_blob(ctx, handler, source, key, event or payload))
        elif isinstance(handler, HttpForwardHandler):
            effects.append(_forward(ctx, handler, key, event or payload))
        elif isinstance(handler, UpsertHandler):
            effects.append(
                _upsert(ctx, handler, source, key, event.get("post_image") or event.get("attributes") or payload)
            )
    table, verb = event.get("table"), event.get("message")
    log_event(logger, "webhook_processed", source=source, table=table or "-", message=verb or "-", effects=len(effects))
    return effects


def _fetch(ctx: HandlerContext, table: str, record_id: str) -> dict[str, Any] | None:
    """The record's columns, or None when it no longer exists."""
    record = ctx.client.get(ctx.metadata.entity_set_name(table), guid(record_id, "PrimaryEntityId"))
    return None if record is None else {k: v for k, v in record.items() if not k.startswith("@")}


def _event_name(key: str) -> str:
    # surrogatepass: a key is whatever JSON text the sender chose, lone surrogates included
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def _name_part(value: Any) -> str:
    """A blob-name segment from event data: kept when plainly safe, else its hash, so a payload's
    ``table`` or ``record_id`` can never climb out of its folder (``..``) or add segments."""
    text = str(value)
    if _SAFE_NAME_PART.fullmatch(text) and text not in (".", ".."):
        return text
    return "h-" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def _to_blob(ctx: HandlerContext, handler: BlobHandler, source: str, key: str, body: dict[str, Any]) -> str:
    container = ctx.storage.container(handler.container)
    subject = f"{_name_part(body.get('table', source))}/{_name_part(body.get('record_id', _event_name(key)))}"
    name = f"{source}/{subject}/{_event_name(key)}.json"
    document = {"key": key, "event": body, "applied_at": time.time()}  # when: the order events were applied in
    container.upload_blob(name, json.dumps(document, default=str).encode(), overwrite=True)
    return f"blob {handler.container}/{name}"


def _forward(ctx: HandlerContext, handler: HttpForwardHandler, key: str, body: dict[str, Any]) -> str:
    from shared.webhooks.forward import forward_event
    from shared.webhooks.signing import NONCE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

    data = json.dumps(body, default=str).encode()

    def headers_for_attempt() -> dict[str, str]:  # signed afresh for each attempt: the timestamp moves on
        headers = {"Content-Type": "application/json"}
        if handler.secret and ctx.secret:
            timestamp = int(time.time())
            nonce = _event_name(key)
            headers |= {
                TIMESTAMP_HEADER: str(timestamp),
                NONCE_HEADER: nonce,
                SIGNATURE_HEADER: sign(ctx.secret(handler.secret), timestamp, nonce, data),
            }
        return headers

    return forward_event(handler.url, data, headers_for_attempt, caller=ctx.forwarder)


def _upsert(ctx: HandlerContext, handler: UpsertHandler, source: str, key: str, row: dict[str, Any]) -> str:
    columns = Mapper(handler.mapping, handler.key, ctx.schema(handler.table)).map(row)
    if isinstance(columns, Rejection):
        _dead_letter(ctx, source, key, row, columns)  # a retry would fail the same way: keep it with the reason
        return f"dead-lettered ({columns.code})"
    record_key = {k: columns[k] for k in handler.key}
    body = {k: v for k, v in columns.items() if k not in handler.key}
    created = ctx.client.upsert(handler.entity_set, record_key, body, table=handler.table)
    return f"{'created' if created else 'updated'} {handler.table} {record_key}"


def _dead_letter(ctx: HandlerContext, source: str, key: str, row: dict[str, Any], rejection: Rejection) -> None:
    container = ctx.storage.container(DEAD_LETTER_CONTAINER)
    record = {"key": key, "record": row, "code": rejection.code, "reason": rejection.reason, "field": rejection.field}
    container.upload_blob(f"{source}/{_event_name(key)}.json", json.dumps(record, default=str).encode(), overwrite=True)
    record_webhook(source, "dead_lettered")


def new_key() -> str:
    return str(uuid.uuid4())
