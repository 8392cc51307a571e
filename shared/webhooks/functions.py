"""The webhook blueprint: receive, authenticate, validate, enqueue (and for signed sources record the
nonce), 202; process from the queue.

Receivers never answer 500: bad input is 400/401/413 with the reason; a dependency's failure is 503 when a
retry can fix it (storage down), which Dataverse and well-behaved senders retry, and 502 when it refused
(Key Vault denying the identity), each naming what failed (``shared.failure_answers.failure_answer``). Of
simultaneous copies of one signed delivery exactly one is accepted (shared.webhooks.dedupe): the others
withdraw their messages and are answered as replays; copies of a Dataverse delivery are all enqueued, and
the processor's ordering guard applies one. A message too large for the queue travels as a claim-check
blob (shared.webhooks.processor.enqueue_event).
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import azure.functions as func

from shared.composition import traced
from shared.errors import WebhookRejected
from shared.failure_answers import failure_answer, is_outage
from shared.http_input import preview
from shared.logging import log_event
from shared.settings_registry import EnvVars
from shared.telemetry import record_webhook, watch_queue
from shared.webhooks.context import MAX_BODY_BYTES
from shared.webhooks.routes_file import check_routes_at_start_up, routes

if TYPE_CHECKING:
    from shared.storage import Storage
    from shared.webhooks.dedupe import Dedupe
    from shared.webhooks.processor import HandlerContext

logger = logging.getLogger(__name__)
EVENT_QUEUE_NAME = "webhook-events"  # shared.webhooks.processor.EVENT_QUEUE, which a test keeps equal
bp = func.Blueprint()  # type: ignore[no-untyped-call]
JSON = "application/json"
ACCEPTED = "accepted"  # the receiver's record of a delivery on the queue
# A copy that finds a claim still in progress (left by a receiver that claimed before enqueueing, as
# earlier versions did) answers 503 with this Retry-After: by then that holder has settled or given up.
RETRY_AFTER_S = 5  # the Retry-After of that 503
check_routes_at_start_up()  # a broken routes file stops the app, naming file and field


def _answer(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body), status_code=status, mimetype=JSON, headers=headers)


def _unavailable(exc: Exception, source: str) -> func.HttpResponse:
    """A receiver's answer to a dependency's failure (503 or 502, naming it); anything else is 503 too,
    because a sender retries a 503 and a receiver never answers 500."""
    if is_outage(exc):
        return failure_answer(exc, "webhook_unavailable", source=source).response()
    log_event(logger, "webhook_unavailable", logging.ERROR, source=source, error=type(exc).__name__)
    return _answer(503, {"error": "temporarily unavailable; retry", "failed": "the webhook receiver", "retry": True})


def _secret(name: str) -> str:
    """A Key Vault secret through the worker's cached store (managed identity; no Dataverse credential)."""
    from shared.composition import worker

    return worker().secret(name)


def storage() -> Storage:
    """Storage alone (managed identity): receivers keep accepting while the Dataverse credential is broken."""
    from shared.composition import worker

    return worker().storage()


def handler_context() -> HandlerContext:
    """What the processor's handlers use, on the worker's objects."""
    from shared.composition import worker
    from shared.outgoing_http import FORWARD
    from shared.webhooks.processor import HandlerContext

    root = worker()
    return HandlerContext(root.storage(), root.dataverse(), root.metadata(), root.secret, root.caller(FORWARD))


def _dedupe() -> Dedupe:
    from shared.webhooks.dedupe import DEDUPE_TABLE, Dedupe

    return Dedupe(storage().table(DEDUPE_TABLE))


def _accept(scope: str, key: str, message: dict[str, Any]) -> func.HttpResponse | None:
    """Enqueue, then record the delivery as accepted (one conditional insert decides which copy of a
    delivery wins): 202. None when another copy was accepted first (the caller answers the replay).

    The message goes first, so that a record always stands for a message on the queue: a copy that finds
    the record answers as a replay at once (and withdraws its own message), with nothing to wait for. A
    failed enqueue answers 503 with nothing written, so the sender's retry starts afresh. When the record
    cannot be written, the message stays and the answer is 202: the event is on the queue, and a second copy
    of it, should the sender retry anyway, is reduced to one effect by the processor's claim."""
    from shared.webhooks.dedupe import Claim
    from shared.webhooks.processor import enqueue_event, withdraw_event

    store = storage()
    source = str(message["source"])
    enqueued = enqueue_event(store, {**message, "key": key, "received_at": time.time()})
    record_webhook(source, "received")
    if enqueued.blob:
        log_event(logger, "webhook_claim_checked", source=source)
    try:
        outcome = _dedupe().record(scope, key, state=ACCEPTED)
    except Exception as exc:
        log_event(logger, "webhook_record_failed", logging.WARNING, scope=scope, error=type(exc).__name__)
        return _answer(202, {"accepted": True})
    if isinstance(outcome, Claim):
        return _answer(202, {"accepted": True})
    withdraw_event(store, enqueued)
    record_webhook(source, "duplicate")
    if outcome.in_progress:
        log_event(logger, "webhook_claim_busy", logging.WARNING, scope=scope)
        return _answer(
            503,
            {"error": "an identical delivery is being accepted right now; retry"},
            {"Retry-After": str(RETRY_AFTER_S)},
        )
    return None


def _accept_dataverse(message: dict[str, Any]) -> func.HttpResponse:
    """Enqueue, then 202. A failed enqueue answers 503 with nothing written, which Dataverse retries. Copies
    of one delivery (Dataverse's retry after a lost 202) are not looked up here: the processor's ordering
    guard finds their row version applied and drops them (shared.webhooks.ordering)."""
    from shared.webhooks.processor import enqueue_event

    enqueued = enqueue_event(storage(), {**message, "received_at": time.time()})
    record_webhook("dataverse", "received")
    if enqueued.blob:
        log_event(logger, "webhook_claim_checked", source="dataverse")
    return _answer(202, {"accepted": True})


def _accept_signed(source: str, nonce: str, message: dict[str, Any]) -> func.HttpResponse:
    """A nonce is good once: the copy that wins its claim is enqueued, every other copy is a replay."""
    from shared.webhooks.dedupe import nonce_scope

    accepted = _accept(nonce_scope(source), nonce, message)
    if accepted is None:
        raise WebhookRejected(401, "this nonce was already used (a replayed delivery)")
    return accepted


@bp.route(route="webhooks/dataverse", methods=["POST"])
@traced
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
        return _accept_dataverse({"source": "dataverse", "key": event.dedupe_key, "event": event.to_dict()})
    except WebhookRejected as exc:
        log_event(logger, "webhook_rejected", logging.WARNING, source="dataverse", status=exc.status, reason=exc.reason)
        return _answer(exc.status, {"error": exc.reason})
    except Exception as exc:  # never 500: the sender retries a 503
        return _unavailable(exc, "dataverse")


@bp.route(route="webhooks/{source}", methods=["POST"])
@traced
def signed_webhook(req: func.HttpRequest) -> func.HttpResponse:
    """Signed generic webhooks: HMAC-SHA256 over timestamp, nonce and body with the source's secret."""
    from shared.webhooks.context import parse_json_payload
    from shared.webhooks.signing import verify

    source = req.route_params.get("source", "")
    try:
        spec = routes().sources.get(source)
        if spec is None:
            return _answer(404, {"error": f"no webhook source named {preview(source)}"})
        body = req.get_body()
        if len(body) > MAX_BODY_BYTES:
            raise WebhookRejected(413, f"the body is {len(body):,} bytes; at most {MAX_BODY_BYTES:,} are accepted")
        secret = _secret(spec.secret)
        nonce = verify(secret, dict(req.headers), body)
        payload = parse_json_payload(body)  # numbers Dataverse cannot take are a 400 here, not a dead end later
        return _accept_signed(source, nonce, {"source": source, "payload": payload})
    except WebhookRejected as exc:
        log_event(logger, "webhook_rejected", logging.WARNING, source=source, status=exc.status, reason=exc.reason)
        return _answer(exc.status, {"error": exc.reason})
    except Exception as exc:
        return _unavailable(exc, source)


watch_queue(EVENT_QUEUE_NAME)  # its backlog, and its poison queue's, in the telemetry


@bp.queue_trigger(arg_name="item", queue_name=EVENT_QUEUE_NAME, connection=EnvVars.STORAGE)
@traced
def webhook_processor(item: func.QueueMessage) -> None:
    """Dispatch to the routed handlers; failures retry per host.json, then ``webhook-events-poison``."""
    from shared.webhooks.processor import process

    process(json.loads(item.get_body()), routes(), handler_context())


@bp.route(route="webhooks-admin/replay", methods=["POST"], auth_level=func.AuthLevel.ADMIN)
@traced
def webhook_replay(req: func.HttpRequest) -> func.HttpResponse:
    """Move poisoned webhook events back onto the processing queue (after a fix)."""
    from shared.webhooks.processor import EVENT_QUEUE

    try:
        moved = storage().move_messages(f"{EVENT_QUEUE}-poison", EVENT_QUEUE)
    except Exception as exc:
        return failure_answer(exc, "webhook_replay_unavailable").response()
    return _answer(200, {"replayed": moved})
