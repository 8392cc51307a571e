"""Queue-side processing of acknowledged webhooks: dispatch by (source, table, message) to handlers.

Handlers are idempotent, so a redelivery (queue retry, replay) has one effect: the blob handler writes one
blob per event key (overwrite), the upsert handler upserts by key, and the HTTP forwarder signs each
delivery with the event key as its nonce so the receiver can deduplicate.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from typing import Any

from shared.errors import DataverseError
from shared.logging import log_event
from shared.sync.engine import SyncContext
from shared.sync.jobs import InboundJob
from shared.sync.mapping import Mapper, Rejection
from shared.webhooks.routes import BlobHandler, HttpForwardHandler, RoutesFile, UpsertHandler

logger = logging.getLogger(__name__)

EVENT_QUEUE = "webhook-events"
DEAD_LETTER_CONTAINER = "webhook-deadletters"
FORWARD_ATTEMPTS = 4
FORWARD_BACKOFF_S = 0.5
_entity_sets: dict[str, str] = {}


def process(message: dict[str, Any], routes: RoutesFile, ctx: SyncContext) -> list[str]:
    """Run every handler routed for this event once; return what each did. Raises to have the queue retry.

    An event already processed (a second copy enqueued by a sender's retry racing the first) is skipped.
    The mark is written after the effects, so a crash in between repeats them, idempotently."""
    from shared.webhooks.dedupe import DEDUPE_TABLE, Dedupe, processed_scope

    source = str(message["source"])
    key = str(message["key"])
    done = Dedupe(ctx.storage.table(DEDUPE_TABLE))
    if done.seen(processed_scope(source), key):
        log_event(logger, "webhook_already_processed", source=source)
        return []
    effects = _run_handlers(source, key, message, routes, ctx)
    done.mark(processed_scope(source), key)
    return effects


def _run_handlers(source: str, key: str, message: dict[str, Any], routes: RoutesFile, ctx: SyncContext) -> list[str]:
    event: dict[str, Any] = message.get("event") or {}
    payload: dict[str, Any] = message.get("payload") or {}
    table, verb = event.get("table"), event.get("message")
    handlers = routes.handlers_for(source, table, verb)
    if handlers and event.get("size_exceeded") and verb != "Delete":
        try:
            event["attributes"] = _fetch(ctx, str(table), str(event["record_id"]))  # the context was stripped
        except DataverseError as exc:
            if exc.status != 404:
                raise  # throttling, outage: the queue retries
            # No such table: every retry would fail the same way, so keep the event with the reason.
            reason = f"the stripped context names table {table!r}, which Dataverse does not have: {exc.message}"
            _dead_letter(ctx, source, key, event, Rejection("unknown_table", reason, "PrimaryEntityName"))
            return [f"dead-lettered (unknown_table {table})"]
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
    log_event(logger, "webhook_processed", source=source, table=table or "-", message=verb or "-", effects=len(effects))
    return effects


def _fetch(ctx: SyncContext, table: str, record_id: str) -> dict[str, Any]:
    if table not in _entity_sets:
        metadata = ctx.client.request(
            "GET", f"EntityDefinitions(LogicalName='{table}')", params={"$select": "EntitySetName"}
        )
        _entity_sets[table] = str(metadata.json()["EntitySetName"])
    record = ctx.client.get(_entity_sets[table], record_id)
    return {k: v for k, v in (record or {}).items() if not k.startswith("@")}


def _event_name(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def _to_blob(ctx: SyncContext, handler: BlobHandler, source: str, key: str, body: dict[str, Any]) -> str:
    container = ctx.storage.container(handler.container)
    subject = f"{body.get('table', source)}/{body.get('record_id', _event_name(key))}"
    name = f"{source}/{subject}/{_event_name(key)}.json"
    container.upload_blob(name, json.dumps({"key": key, "event": body}, default=str).encode(), overwrite=True)
    return f"blob {handler.container}/{name}"


def _forward(ctx: SyncContext, handler: HttpForwardHandler, key: str, body: dict[str, Any]) -> str:
    import requests

    from shared.webhooks.signing import NONCE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

    data = json.dumps(body, default=str).encode()
    for attempt in range(1, FORWARD_ATTEMPTS + 1):
        headers = {"Content-Type": "application/json"}
        if handler.secret and ctx.secret:
            timestamp = int(time.time())
            nonce = _event_name(key)
            headers |= {
                TIMESTAMP_HEADER: str(timestamp),
                NONCE_HEADER: nonce,
                SIGNATURE_HEADER: sign(ctx.secret(handler.secret), timestamp, nonce, data),
            }
        try:
            response = requests.post(handler.url, data=data, headers=headers, timeout=30)
            if response.status_code < 300:
                return f"forwarded to {handler.url} ({response.status_code})"
            if response.status_code not in (408, 429, 500, 502, 503, 504):
                raise RuntimeError(f"{handler.url} refused the event with {response.status_code}")
        except requests.RequestException as exc:
            if attempt == FORWARD_ATTEMPTS:
                raise RuntimeError(f"{handler.url} unreachable: {type(exc).__name__}") from exc
        time.sleep(FORWARD_BACKOFF_S * 2 ** (attempt - 1))
    raise RuntimeError(f"{handler.url} kept failing; the queue retries, then the poison queue keeps the event")


def _upsert(ctx: SyncContext, handler: UpsertHandler, source: str, key: str, row: dict[str, Any]) -> str:
    job = InboundJob.model_validate(
        {
            "direction": "inbound",
            "source": {"kind": "blob_csv", "container": "-"},  # unused: the row comes from the webhook
            "table": handler.table,
            "entity_set": handler.entity_set,
            "key": list(handler.key),
            "mapping": {k: v.model_dump(exclude_defaults=True) for k, v in handler.mapping.items()},
        }
    )
    columns = Mapper(job, ctx.schema(handler.table)).map(row)
    if isinstance(columns, Rejection):
        _dead_letter(ctx, source, key, row, columns)  # a retry would fail the same way: keep it with the reason
        return f"dead-lettered ({columns.code})"
    record_key = {k: columns[k] for k in handler.key}
    body = {k: v for k, v in columns.items() if k not in handler.key}
    created = ctx.client.upsert(handler.entity_set, record_key, body)
    return f"{'created' if created else 'updated'} {handler.table} {record_key}"


def _dead_letter(ctx: SyncContext, source: str, key: str, row: dict[str, Any], rejection: Rejection) -> None:
    container = ctx.storage.container(DEAD_LETTER_CONTAINER)
    record = {"key": key, "record": row, "code": rejection.code, "reason": rejection.reason, "field": rejection.field}
    container.upload_blob(f"{source}/{_event_name(key)}.json", json.dumps(record, default=str).encode(), overwrite=True)


def new_key() -> str:
    return str(uuid.uuid4())
