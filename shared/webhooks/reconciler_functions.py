"""The webhook reconciler's door: a timer (``WEBHOOK_RECONCILE_SCHEDULE``, resolved by the host) and an
admin route that runs it now, each a thin call of ``shared.webhooks.reconciler``.

``POST /api/webhooks-admin/reconcile`` (admin key) takes an optional body ``{"tables": ["account", ...]}``
(routed tables only) and answers the run's report as JSON: 200 with each table's status and counts, 400
naming the field for bad input, 503 when a dependency a retry can fix failed before any table ran
(``shared.failure_answers``). The reconciler and the SDKs it needs are imported on first use, not while
the host indexes.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import azure.functions as func

from shared.composition import traced
from shared.failure_answers import failure_answer
from shared.http_input import RequestRejected, json_object, preview, query
from shared.logging import log_event
from shared.settings_registry import EnvVars

if TYPE_CHECKING:
    from shared.storage import Storage
    from shared.webhooks.reconciler import AppliedVersions, Reconciler

logger = logging.getLogger(__name__)
bp = func.Blueprint()  # type: ignore[no-untyped-call]
JSON = "application/json"
SCHEDULE_SETTING = EnvVars.WEBHOOK_RECONCILE_SCHEDULE
MAX_BODY_BYTES = 16 * 1024  # a list of table names; anything larger is no such list
MAX_TABLES = 200  # names one request may list
MAX_TABLE_CHARS = 128  # a table's logical name is far shorter
EXAMPLE = '{"tables": ["account"]}'


def _answer(status: int, body: Any) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body, default=str), status_code=status, mimetype=JSON)


def applied_versions(storage: Storage) -> AppliedVersions:
    """The ordering guard's view of what the processors applied (``shared.webhooks.ordering``)."""
    from shared.webhooks.ordering import guard

    return guard(storage)


def reconciler() -> Reconciler:
    """The reconciler on the worker's objects."""
    from shared.composition import worker
    from shared.webhooks.reconciler import Reconciler
    from shared.webhooks.routes_file import routes

    root = worker()
    storage = root.storage()
    return Reconciler(storage, root.dataverse(), root.metadata(), routes(), applied_versions(storage))


@bp.timer_trigger(arg_name="timer", schedule=f"%{SCHEDULE_SETTING}%")
@traced
def webhook_reconcile_timer(timer: func.TimerRequest) -> None:
    """Reconcile every routed table; a table that failed fails the invocation (what monitoring alerts on),
    after the others ran."""
    if timer.past_due:
        log_event(logger, "webhook_reconcile_past_due")
    report = reconciler().run()
    if report.failed:
        raise RuntimeError(f"webhook reconciliation failed for: {', '.join(report.failed)} (see the run's log)")


def _tables(raw: bytes) -> list[str] | None:
    """The body's ``tables``: None (every routed table) or a list of table names."""
    body = json_object(raw, limit_bytes=MAX_BODY_BYTES, fields=("tables",), example=EXAMPLE)
    tables = body.get("tables")
    if tables is None:
        return None
    if not isinstance(tables, list) or not tables:
        raise RequestRejected(400, f"tables must be a non-empty list of table names such as {EXAMPLE}")
    if len(tables) > MAX_TABLES:
        raise RequestRejected(400, f"tables must be a list of at most {MAX_TABLES} names, not {len(tables):,}")
    for name in tables:
        if not isinstance(name, str) or not name or len(name) > MAX_TABLE_CHARS:
            raise RequestRejected(400, f"tables must be a list of table logical names; {preview(name)} is not one")
    return list(dict.fromkeys(tables))


@bp.route(route="webhooks-admin/reconcile", methods=["POST"], auth_level=func.AuthLevel.ADMIN)
@traced
def webhook_reconcile(req: func.HttpRequest) -> func.HttpResponse:
    """Run the reconciler now (all routed tables, or the body's ``tables``) and answer its report."""
    try:
        query(req.params, ())
        tables = _tables(req.get_body())
    except RequestRejected as exc:
        field = "tables" if exc.reason.startswith("tables ") else None
        return _answer(exc.status, {"error": exc.reason, **({"field": field} if field else {})})
    try:
        runner = reconciler()
        if tables is not None:
            routed = runner.tables()
            unknown = [name for name in tables if name not in routed]
            if unknown:
                names = ", ".join(preview(name) for name in unknown[:5])
                known = ", ".join(routed) or "none"
                reason = f"tables must be routed tables; {names} is not one (the routed tables: {known})"
                return _answer(400, {"error": reason, "field": "tables"})
        report = runner.run(tables)
    except Exception as exc:  # a dependency's failure: 503/502 naming it; anything else is a bug (500)
        return failure_answer(exc, "webhook_reconcile_unavailable").response()
    return _answer(200, report.to_dict())
