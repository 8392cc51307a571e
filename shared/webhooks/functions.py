"""The webhook blueprint: receive, authenticate, validate, deduplicate, enqueue, 202; process from the queue.

Receivers never answer 500: bad input is 400/401/413 with the reason; an internal failure (storage down)
is 503, which Dataverse and well-behaved senders retry.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from typing import Any

import azure.functions as func

from shared.errors import WebhookRejected
from shared.logging import log_event
from shared.webhooks.context import MAX_BODY_BYTES
from shared.webhooks.routes_file import check_routes_at_start_up, routes

logger = logging.getLogger(__name__)
bp = func.Blueprint()  # type: ignore[no-untyped-call]
JSON = "application/json"
check_routes_at_start_up()  # a broken routes file stops the app, naming file and field


def _answer(status: int, body: dict[str, Any]) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body), status_code=status, mimetype=JSON)


def _secret(name: str) -> str:
    """A Key Vault secret through the worker's cached store (managed identity; no Dataverse credential)."""
    from shared.identity.worker import secret_store

    return secret_store().get(name).value


def _enqueue(key: str, message: dict[str, Any]) -> None:
    from shared.sync.worker import storage
    from shared.webhooks.processor import EVENT_QUEUE

    storage().enqueue(EVENT_QUEUE, {**message, "key": key, "received_at": time.time()})


def _dedupe() -> Any:
    from shared.sync.worker import storage
    from shared.webhooks.dedupe import DEDUPE_TABLE, Dedupe

    return Dedupe(storage().table(DEDUPE_TABLE))


def _accept_dataverse(key: str, message: dict[str, Any]) -> func.HttpResponse:
    """A delivery already processed (Dataverse's retry after a lost 202) is acknowledged and dropped. A retry
    racing its first copy is enqueued again and skipped by the processor, which marks an event processed
    only after its effects: one table read here instead of a read and a write per delivery (p99
    acknowledgement 308 -> 227 ms at 100/s on 2 cores, see README), and no path that can lose an event."""
    from shared.webhooks.dedupe import processed_scope

    if _dedupe().seen(processed_scope("dataverse"), key):
        log_event(logger, "webhook_duplicate", source="dataverse")
        return _answer(202, {"accepted": True, "duplicate": True})
    _enqueue(key, message)
    return _answer(202, {"accepted": True})


def _accept_signed(source: str, nonce: str, message: dict[str, Any]) -> func.HttpResponse:
    """A nonce is good once: checked, enqueued, then marked. A crash between enqueue and mark lets the
    sender's retry enqueue again (the processor skips what it already did); marking first could lose it."""
    dedupe = _dedupe()
    scope = f"nonce-{source}"
    if dedupe.seen(scope, nonce):
        raise WebhookRejected(401, "this nonce was already used (a replayed delivery)")
    _enqueue(nonce, message)
    try:
        dedupe.mark(scope, nonce)
    except Exception as exc:  # queued is what counts: a retry would be skipped by the processor
        log_event(logger, "webhook_mark_failed", logging.WARNING, scope=scope, error=type(exc).__name__)
    return _answer(202, {"accepted": True})


@bp.route(route="webhooks/dataverse", methods=["POST"])
def dataverse_webhook(req: func.HttpRequest) -> func.HttpResponse:
    """Dataverse service endpoints (WebhookKey auth sends ``?code=``, the function key)."""
    from shared.webhooks.context import parse_remote_execution_context

    try:
        body = req.get_body()
        if len(body) > MAX_BODY_BYTES:  # before the header check: an oversized body costs no Key Vault read
            raise WebhookRejected(413, f"the body is {len(body):,} bytes; at most {MAX_BODY_BYTES:,} are accepted")
        header_auth = routes().dataverse_header_auth
        if header_auth is not None:
            expected = _secret(header_auth.secret)
            supplied = req.headers.get(header_auth.header, "")
            if not hmac.compare_digest(expected.encode(), supplied.encode("utf-8", "replace")):
                raise WebhookRejected(401, f"the {header_auth.header} header is missing or wrong")
        event = parse_remote_execution_context(body, dict(req.headers))
        return _accept_dataverse(event.dedupe_key, {"source": "dataverse", "event": event.to_dict()})
    except WebhookRejected as exc:
        log_event(logger, "webhook_rejected", logging.WARNING, source="dataverse", status=exc.status, reason=exc.reason)
        return _answer(exc.status, {"error": exc.reason})
    except Exception as exc:  # never 500: the sender retries a 503
        log_event(logger, "webhook_unavailable", logging.ERROR, source="dataverse", error=type(exc).__name__)
        return _answer(503, {"error": "temporarily unavailable; retry"})


@bp.route(route="webhooks/{source}", methods=["POST"])
def signed_webhook(req: func.HttpRequest) -> func.HttpResponse:
    """Signed generic webhooks: HMAC-SHA256 over timestamp, nonce and body with the source's secret."""
    from shared.webhooks.signing import verify

    source = req.route_params.get("source", "")
    try:
        spec = routes().sources.get(source)
        if spec is None:
            return _answer(404, {"error": f"no webhook source named {source!r}"})
        body = req.get_body()
        if len(body) > MAX_BODY_BYTES:
            raise WebhookRejected(413, f"the body is {len(body):,} bytes; at most {MAX_BODY_BYTES:,} are accepted")
        secret = _secret(spec.secret)
        nonce = verify(secret, dict(req.headers), body)
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            raise WebhookRejected(400, "the body is not JSON") from None
        if not isinstance(payload, dict):
            raise WebhookRejected(400, "the body must be a JSON object")
        return _accept_signed(source, nonce, {"source": source, "payload": payload})
    except WebhookRejected as exc:
        log_event(logger, "webhook_rejected", logging.WARNING, source=source, status=exc.status, reason=exc.reason)
        return _answer(exc.status, {"error": exc.reason})
    except Exception as exc:
        log_event(logger, "webhook_unavailable", logging.ERROR, source=source, error=type(exc).__name__)
        return _answer(503, {"error": "temporarily unavailable; retry"})


@bp.queue_trigger(arg_name="item", queue_name="webhook-events", connection="AzureWebJobsStorage")
def webhook_processor(item: func.QueueMessage) -> None:
    """Dispatch to the routed handlers; failures retry per host.json, then ``webhook-events-poison``."""
    from shared.sync.worker import sync_context
    from shared.webhooks.processor import process

    process(json.loads(item.get_body()), routes(), sync_context())


@bp.route(route="webhooks-admin/replay", methods=["POST"], auth_level=func.AuthLevel.ADMIN)
def webhook_replay(req: func.HttpRequest) -> func.HttpResponse:
    """Move poisoned webhook events back onto the processing queue (after a fix)."""
    from shared.sync.worker import storage
    from shared.webhooks.processor import EVENT_QUEUE

    moved = storage().move_messages(f"{EVENT_QUEUE}-poison", EVENT_QUEUE)
    return _answer(200, {"replayed": moved})
