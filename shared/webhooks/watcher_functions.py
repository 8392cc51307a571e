"""The failed-delivery watcher's door: a timer (``WEBHOOK_WATCH_SCHEDULE``, resolved by the host), an admin
route that runs it now, and the incidents API; each a thin call of ``shared.webhooks.watcher``.

* ``POST /api/webhooks-admin/watch`` (admin key, no body, no query parameters) runs the watcher and answers
  its report: per step the failed jobs counted now and in all, the incident and the alerts sent.
* ``GET /api/webhooks-admin/incidents`` (function key): every incident, newest first, and every watched step
  with its cumulative count of failed jobs.
* ``POST /api/webhooks-admin/incidents/{id}/ack`` ``{"by": "ops@contoso.com", "days": 3}`` (or ``until``;
  default 7 days) and ``.../snooze`` ``{"until": "..."}`` (or ``days``), function key: as the credentials
  routes. Unknown incident 404, resolved 409.

Bad input is a 400 naming the field, decided before any dependency is called; a dependency's failure is
``shared.failure_answers`` (503 for what a retry fixes). Alerts go through the credential-expiry notifier
(``EXPIRY_CHANNELS``: its channels, payloads, retries); the watcher, the notifier and the SDKs they need are
imported on first use, not while the host indexes.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import azure.functions as func

from shared.composition import traced
from shared.failure_answers import failure_answer
from shared.http_input import RequestRejected, preview, query
from shared.logging import log_event
from shared.settings_registry import EnvVars
from shared.silences import MAX_SILENCE_BODY_BYTES, refusal_text, silence_body

if TYPE_CHECKING:
    from shared.composition import Worker
    from shared.webhooks.watcher import IncidentAlert, Incidents, Watcher

logger = logging.getLogger(__name__)
bp = func.Blueprint()  # type: ignore[no-untyped-call]
JSON = "application/json"
SCHEDULE_SETTING = EnvVars.WEBHOOK_WATCH_SCHEDULE
MAX_SILENCE_DAYS = 90  # an incident resolves after a quiet period; a longer silence is switching the watcher off
INCIDENT_ID = re.compile(r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
INCIDENT_ID_SHAPE = "an incident id such as 20261201T195925Z-<step id>"
# The credential-expiry notifier, found by name: a capability imports no other capability's modules, and this
# door is where the watcher is wired to the one set of alert channels the app has.
EXPIRY_NOTIFY_MODULE = "shared.expiry.notify"
EXPIRY_MODEL_MODULE = "shared.expiry.model"


def _answer(status: int, body: Any) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body, default=str), status_code=status, mimetype=JSON)


# -- wiring ----------------------------------------------------------------------------------------------------
class ExpiryChannels:
    """The expiry ``Notifier`` sending incident alerts: each becomes an expiry ``Alert`` whose subject is the
    step (id ``webhook-step:<step id>``, owner: the endpoint's host and path), so Teams, Slack and JSON get
    the card, blocks and object they get for a credential, with the incident's title, text and facts."""

    def __init__(self, notifier: Any, model: Any) -> None:
        self._notifier = notifier
        self._model = model

    def convert(self, alert: IncidentAlert) -> Any:
        incident = alert.incident
        subject = self._model.Credential(
            id=f"webhook-step:{incident.step_id}",
            name=incident.step_name or incident.step_id,
            source="webhook-step",
            expires_on=None,
            owner=incident.endpoint,
        )
        return self._model.Alert(
            kind=f"webhook_incident_{alert.kind}",
            level=alert.kind,
            severity=alert.severity,
            credential=subject,
            title=alert.title,
            text=alert.text,
            facts=dict(alert.facts),
            fix=alert.fix,
        )

    def send(self, alert: IncidentAlert, only: Sequence[str] | None = None) -> list[str]:
        return [str(name) for name in self._notifier.send(self.convert(alert), only=only)]


def expiry_channels(root: Worker) -> ExpiryChannels:
    """The alert channels of ``EXPIRY_CHANNELS`` (URLs from Key Vault), on the worker's HTTP session."""
    from shared.config import read_text

    notify = importlib.import_module(EXPIRY_NOTIFY_MODULE)
    model = importlib.import_module(EXPIRY_MODEL_MODULE)
    channels = notify.parse_channels(read_text(EnvVars.EXPIRY_CHANNELS))
    return ExpiryChannels(notify.Notifier(channels, root.secret, session=root.http_session()), model)


def watcher() -> Watcher:
    """The watcher on the worker's objects; its settings are checked first (a ConfigError names them)."""
    from shared.composition import worker
    from shared.webhooks.reconciler import ReconcileLog
    from shared.webhooks.watcher import Watcher, watch_settings

    settings = watch_settings()
    root = worker()
    storage = root.storage()
    return Watcher(
        storage,
        root.dataverse(),
        expiry_channels(root),
        ReconcileLog(storage),
        step_ids=settings.step_ids,
        app_host=settings.app_host,
        quiet_s=settings.quiet_s,
    )


def incidents() -> Incidents:
    from shared.composition import worker
    from shared.webhooks.watcher import Incidents

    return Incidents(worker().storage())


# -- the timer and the run route -----------------------------------------------------------------------------------
@bp.timer_trigger(arg_name="timer", schedule=f"%{SCHEDULE_SETTING}%")
@traced
def webhook_watch_timer(timer: func.TimerRequest) -> None:
    """Watch every step; a step that failed fails the invocation (what monitoring alerts on), after the others."""
    if timer.past_due:
        log_event(logger, "webhook_watch_past_due")
    report = watcher().run()
    if report.failed:
        raise RuntimeError(f"the failed-delivery watch failed for steps: {', '.join(report.failed)} (see the log)")


@bp.route(route="webhooks-admin/watch", methods=["POST"], auth_level=func.AuthLevel.ADMIN)
@traced
def webhook_watch(req: func.HttpRequest) -> func.HttpResponse:
    """Run the watcher now and answer its report."""
    try:
        query(req.params, ())
    except RequestRejected as exc:
        return _answer(exc.status, {"error": exc.reason})
    try:
        report = watcher().run()
    except Exception as exc:  # a dependency's failure (settings included): 503/502; anything else is a bug
        return failure_answer(exc, "webhook_watch_unavailable").response()
    return _answer(200, report.to_dict())


# -- the incidents API ---------------------------------------------------------------------------------------------
@bp.route(route="webhooks-admin/incidents", methods=["GET"])
@traced
def webhook_incidents(req: func.HttpRequest) -> func.HttpResponse:
    """Every incident and every watched step's cumulative count of failed jobs."""
    try:
        query(req.params, ())
    except RequestRejected as exc:
        return _answer(exc.status, {"error": exc.reason})
    try:
        listing = incidents().listing()
    except Exception as exc:
        return failure_answer(exc, "webhook_incidents_unavailable").response()
    return _answer(200, listing)


def _silence_request(req: func.HttpRequest, action: str) -> tuple[str, dict[str, Any]]:
    """The incident id and the checked body, before any dependency is called; every refusal names the field."""
    query(req.params, ())
    raw = req.get_body()
    if len(raw) > MAX_SILENCE_BODY_BYTES:  # first: no work for an oversized body
        raise RequestRejected(413, f"the body is {len(raw):,} bytes; at most {MAX_SILENCE_BODY_BYTES:,} are accepted")
    incident_id = req.route_params.get("id", "")
    if not INCIDENT_ID.fullmatch(incident_id):
        raise RequestRejected(
            400,
            f"id must be {INCIDENT_ID_SHAPE}, got {preview(incident_id)}; GET /api/webhooks-admin/incidents lists them",
        )
    checked = silence_body(raw, action, max_days=MAX_SILENCE_DAYS)
    return incident_id, checked


def _silence(req: func.HttpRequest, action: str) -> func.HttpResponse:
    from shared.webhooks.watcher import IncidentNotOpen

    try:
        incident_id, checked = _silence_request(req, action)  # before any dependency: bad input is a 400
        book = incidents()
        now = book.clock()
        until = now + timedelta(days=checked["days"]) if checked["days"] is not None else checked["until"]
        if action == "ack":
            incident = book.acknowledge(incident_id, checked["by"], until)
        elif until is not None:  # always, for a snooze: _silence_request required until or days
            incident = book.snooze(incident_id, until)
        else:
            raise RequestRejected(400, "field 'until' or 'days' is required")
    except RequestRejected as exc:
        return _answer(exc.status, {"error": refusal_text(exc, action)})
    except IncidentNotOpen:
        return _answer(409, {"error": f"incident {preview(incident_id)} is resolved: there is nothing to silence"})
    except Exception as exc:  # a lost claim race (WatchConflict) is a DvbridgeError: a 503
        return failure_answer(exc, f"webhook_incident_{action}_unavailable").response()
    if incident is None:
        return _answer(
            404, {"error": f"no incident {preview(incident_id)}; GET /api/webhooks-admin/incidents lists them"}
        )
    log_event(logger, f"webhook_incident_{action}", incident=incident_id, by=checked["by"] or "-")
    shown = incident.to_dict()
    return _answer(
        200, {k: shown[k] for k in ("id", "status", "acknowledged_by", "acknowledged_until", "snoozed_until")}
    )


@bp.route(route="webhooks-admin/incidents/{id}/ack", methods=["POST"])
@traced
def webhook_incident_ack(req: func.HttpRequest) -> func.HttpResponse:
    """Acknowledge an open incident: its reminder is withheld until ``until`` (default 7 days)."""
    return _silence(req, "ack")


@bp.route(route="webhooks-admin/incidents/{id}/snooze", methods=["POST"])
@traced
def webhook_incident_snooze(req: func.HttpRequest) -> func.HttpResponse:
    """Snooze an open incident until ``until`` (or for ``days``)."""
    return _silence(req, "snooze")
