"""The expiry blueprint: a daily sweep, Key Vault's Event Grid events, and the credentials API."""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import azure.functions as func

from shared.expiry.settings import DEFAULT_SWEEP_SCHEDULE, ExpirySettings
from shared.logging import log_event

logger = logging.getLogger(__name__)
bp = func.Blueprint()  # type: ignore[no-untyped-call]
JSON = "application/json"
SWEEP_SCHEDULE_SETTING = "EXPIRY_SWEEP_SCHEDULE"
MAX_SILENCE_BODY_BYTES = 4 * 1024  # {"by": ..., "until": ...}: a few dozen bytes; anything large is not ours
os.environ.setdefault(SWEEP_SCHEDULE_SETTING, DEFAULT_SWEEP_SCHEDULE)  # the deployment may set another
ExpirySettings.from_env()  # validated at start-up: a bad threshold list stops the app with the fix


def _answer(status: int, body: Any) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body, default=str), status_code=status, mimetype=JSON)


@bp.timer_trigger(arg_name="timer", schedule=f"%{SWEEP_SCHEDULE_SETTING}%")
def expiry_sweep(timer: func.TimerRequest) -> None:
    """Every credential against the thresholds; alerts once per threshold; drift; the live probe."""
    from shared.expiry.worker import monitor

    report = monitor().sweep()
    if report.problems:
        raise RuntimeError("; ".join(report.problems))  # a failed invocation is what monitoring alerts on


@bp.event_grid_trigger(arg_name="event")
def expiry_event(event: func.EventGridEvent) -> None:
    """Key Vault's SecretNearExpiry/SecretExpired/CertificateNearExpiry/CertificateExpired, through the
    same policy and state as the sweep (one alert per threshold, whichever sees it first)."""
    from shared.expiry.eventgrid import EventRejected, parse_vault_event
    from shared.expiry.worker import monitor

    raw = {"id": event.id, "topic": event.topic, "subject": event.subject, "eventType": event.event_type,
           "data": event.get_json()}  # fmt: skip
    try:
        parsed = parse_vault_event(raw, monitor().settings.event_topics)
    except EventRejected as exc:  # acknowledged (no retry would change it) and logged
        log_event(logger, "expiry_event_ignored", logging.WARNING, reason=str(exc), event_id=str(event.id))
        return
    alerts = monitor().on_event(parsed)
    log_event(logger, "expiry_event", event_type=parsed.event_type, name=parsed.object_name, alerts=len(alerts))


@bp.route(route="credentials", methods=["GET"])
def credentials_list(req: func.HttpRequest) -> func.HttpResponse:
    """Every credential the sweep knows, with its end date, days left and alert state."""
    from shared.expiry.policy import current_level
    from shared.expiry.worker import monitor

    watch = monitor()
    now = watch.clock()
    rows = []
    for state, row in watch.states.all():
        days = (state.expires_on - now).total_seconds() / 86400 if state.expires_on else None
        level = None
        if state.expires_on is not None:
            from shared.expiry.model import Credential

            cred = Credential(state.id, str(row.get("name")), "keyvault-secret", state.expires_on, "")
            level = current_level(cred, now, watch.levels)
        rows.append({
            "id": state.id, "name": row.get("name"), "source": row.get("source"), "owner": row.get("owner"),
            "expires_on": state.expires_on, "days_left": round(days, 1) if days is not None else None,
            "state": level.name if level else _idle_state(state, row),
            "last_alert": state.last_level, "last_alert_at": state.last_notified,
            "acknowledged_by": state.acknowledged_by, "acknowledged_until": state.acknowledged_until,
            "snoozed_until": state.snoozed_until, "undelivered": state.undelivered,
        })  # fmt: skip
    rows.sort(key=lambda r: (r["days_left"] is None, r["days_left"] if r["days_left"] is not None else 0))
    return _answer(200, {"credentials": rows})


def _idle_state(state: Any, row: dict[str, Any]) -> str:
    if row.get("source") == "probe":
        return "failing" if state.last_level else "ok"
    return "ok" if state.expires_on else "no expiry"


def _until(body: dict[str, Any], now: datetime) -> datetime | None:
    if "until" in body:
        value = datetime.fromisoformat(str(body["until"]).replace("Z", "+00:00"))
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if "days" in body:
        return now + timedelta(days=float(body["days"]))
    return None


def _silence(req: func.HttpRequest, action: str) -> func.HttpResponse:
    from shared.expiry.worker import monitor

    credential_id = req.route_params.get("id", "")
    raw = req.get_body()
    if len(raw) > MAX_SILENCE_BODY_BYTES:
        return _answer(413, {"error": f"the body is {len(raw):,} bytes; at most {MAX_SILENCE_BODY_BYTES:,}"})
    try:
        body = json.loads(raw) if raw else {}
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        watch = monitor()
        until = _until(body, watch.clock())
    except (ValueError, OverflowError, RecursionError) as exc:  # OverflowError: {"days": 1e300}
        return _answer(400, {"error": f'{exc}; send {{"until": "2026-12-01T00:00:00Z"}} or {{"days": 3}}'})
    if action == "ack":
        by = str(body.get("by") or "").strip()
        if not by:
            return _answer(400, {"error": "field 'by' is required: who acknowledges (a name or e-mail)"})
        state = watch.acknowledge(credential_id, by, until)
    else:
        if until is None:
            return _answer(400, {"error": "field 'until' or 'days' is required"})
        state = watch.snooze(credential_id, until)
    if state is None:
        return _answer(404, {"error": f"no credential {credential_id!r}; GET /api/credentials lists the ids"})
    log_event(logger, f"credential_{action}", credential=credential_id, by=str(body.get("by") or "-"))
    silence = {k: getattr(state, k) for k in ("acknowledged_by", "acknowledged_until", "snoozed_until")}
    return _answer(200, {"id": state.id, **silence})


@bp.route(route="credentials/{id}/ack", methods=["POST"])
def credentials_ack(req: func.HttpRequest) -> func.HttpResponse:
    """Acknowledge: silent until ``until`` (default 7 days), recorded with who acknowledged."""
    return _silence(req, "ack")


@bp.route(route="credentials/{id}/snooze", methods=["POST"])
def credentials_snooze(req: func.HttpRequest) -> func.HttpResponse:
    """Snooze until ``until`` (or for ``days``)."""
    return _silence(req, "snooze")
