"""The expiry blueprint: a daily sweep, Key Vault's Event Grid events, and the credentials API."""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime, timedelta
from typing import Any

import azure.functions as func

from shared.composition import traced
from shared.expiry.settings import ExpirySettings
from shared.failure_answers import failure_answer
from shared.http_input import RequestRejected, preview, query
from shared.logging import log_event
from shared.settings_registry import EnvVars
from shared.silences import refusal_text, silence_body

logger = logging.getLogger(__name__)
bp = func.Blueprint()  # type: ignore[no-untyped-call]
JSON = "application/json"
# The host resolves %EXPIRY_SWEEP_SCHEDULE% from its app settings (main.bicep and local.settings.json set
# it, to DEFAULT_SWEEP_SCHEDULE unless changed): the worker cannot default it, and unset the sweep is disabled.
SWEEP_SCHEDULE_SETTING = EnvVars.EXPIRY_SWEEP_SCHEDULE
# Longer than any credential lifetime the sweep watches (Entra caps secrets at 2 years): beyond it a
# silence is switching the monitor off, and the datetime arithmetic stays far from year 9999.
MAX_SILENCE_DAYS = 3660
MAX_CREDENTIAL_ID_CHARS = 512  # "entra-password:<app id>:<key id>" is 88; Table Storage caps a RowKey at 1 KiB
_ID_UNSAFE = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")  # characters Table Storage forbids in a RowKey
ExpirySettings.from_env()  # validated at start-up: a bad threshold list stops the app with the fix


def _answer(status: int, body: Any, headers: dict[str, str] | None = None) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body, default=str), status_code=status, mimetype=JSON, headers=headers)


@bp.timer_trigger(arg_name="timer", schedule=f"%{SWEEP_SCHEDULE_SETTING}%")
@traced
def expiry_sweep(timer: func.TimerRequest) -> None:
    """Every credential against the thresholds; alerts once per threshold; drift; the live probe."""
    from shared.expiry.wiring import monitor

    report = monitor().sweep()
    if report.problems:
        raise RuntimeError("; ".join(report.problems))  # a failed invocation is what monitoring alerts on


@bp.event_grid_trigger(arg_name="event")
@traced
def expiry_event(event: func.EventGridEvent) -> None:
    """Key Vault's SecretNearExpiry/SecretExpired/CertificateNearExpiry/CertificateExpired, through the
    same policy and state as the sweep (one alert per threshold, whichever sees it first)."""
    from shared.expiry.eventgrid import EventRejected, parse_vault_event
    from shared.expiry.wiring import monitor

    raw = {"id": event.id, "topic": event.topic, "subject": event.subject, "eventType": event.event_type,
           "data": event.get_json()}  # fmt: skip
    try:
        watch = monitor()
        parsed = parse_vault_event(raw, watch.settings.event_topics)
    except EventRejected as exc:  # acknowledged (no retry would change it) and logged
        log_event(logger, "expiry_event_ignored", logging.WARNING, reason=str(exc), event_id=str(event.id))
        return
    alerts = watch.on_event(parsed) if parsed.stage != "new" else []
    log_event(logger, "expiry_event", event_type=parsed.event_type, name=parsed.object_name, alerts=len(alerts))
    _rotate_on(parsed)


def _rotate_on(parsed: Any) -> None:
    """The Dataverse credential's near-expiry or expiry event, or its certificate's new version, starts the rotation now
    (the sweep would within ROTATION_SCHEDULE; the two take turns through the rotation's lease)."""
    from shared.expiry.wiring import build_rotator

    rotator = build_rotator()
    wanted = "certificate" if rotator.settings.kind == "certificate" else "secret"
    if parsed.object_name != rotator.settings.credential_name or parsed.kind != wanted:
        return
    # Even an expired secret is rotated: Graph is reached with the managed identity, not with the old secret.
    report = rotator.tick("event")
    log_event(logger, "rotation_tick", outcome=report.outcome, reason="event",
              phase=report.state.phase if report.state else "-")  # fmt: skip


@bp.route(route="credentials", methods=["GET"])
@traced
def credentials_list(req: func.HttpRequest) -> func.HttpResponse:
    """Every credential the sweep knows, with its end date, days left and alert state."""
    from shared.expiry.policy import current_level
    from shared.expiry.wiring import monitor

    try:
        query(req.params, ())
        watch = monitor()
        now = watch.clock()
        listed = watch.states.all()
    except RequestRejected as exc:
        return _answer(exc.status, {"error": exc.reason})
    except Exception as exc:
        return failure_answer(exc, "credentials_list_unavailable").response()
    rows = []
    for state, row in listed:
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


def _silence_request(req: func.HttpRequest, action: str) -> tuple[str, dict[str, Any]]:
    """The credential id and the checked body, before any dependency is called: bad input is a 400 even
    while storage is down. Every refusal names the field; ``_silence`` adds a good body to it."""
    query(req.params, ())
    credential_id = req.route_params.get("id", "")
    if not credential_id or len(credential_id) > MAX_CREDENTIAL_ID_CHARS or _ID_UNSAFE.search(credential_id):
        raise RequestRejected(
            400,
            f"id must be a credential id of 1..{MAX_CREDENTIAL_ID_CHARS} characters without / \\ # ? or control"
            f" characters, got {preview(credential_id)}; GET /api/credentials lists the ids",
        )
    checked = silence_body(req.get_body(), action, max_days=MAX_SILENCE_DAYS)
    return credential_id, checked


def _until(checked: dict[str, Any], now: datetime) -> datetime | None:
    """The end of the silence: ``until``, or ``days`` from the monitor's now (None: the monitor's default)."""
    return now + timedelta(days=checked["days"]) if checked["days"] is not None else checked["until"]


def _silence(req: func.HttpRequest, action: str) -> func.HttpResponse:
    from shared.expiry.wiring import monitor

    try:
        credential_id, checked = _silence_request(req, action)  # before any dependency: bad input is a 400
        watch = monitor()
        until = _until(checked, watch.clock())
        if action == "ack":
            state = watch.acknowledge(credential_id, checked["by"], until)
        elif until is not None:  # always, for a snooze: _silence_request required until or days
            state = watch.snooze(credential_id, until)
        else:
            raise RequestRejected(400, "field 'until' or 'days' is required")
    except RequestRejected as exc:
        return _answer(exc.status, {"error": refusal_text(exc, action)})
    except Exception as exc:  # StateConflict (lost every claim race) is a DvbridgeError: a 503
        return failure_answer(exc, f"credential_{action}_unavailable").response()
    if state is None:
        return _answer(404, {"error": f"no credential {preview(credential_id)}; GET /api/credentials lists the ids"})
    log_event(logger, f"credential_{action}", credential=credential_id, by=checked["by"] or "-")
    silence = {k: getattr(state, k) for k in ("acknowledged_by", "acknowledged_until", "snoozed_until")}
    return _answer(200, {"id": state.id, **silence})


@bp.route(route="credentials/{id}/ack", methods=["POST"])
@traced
def credentials_ack(req: func.HttpRequest) -> func.HttpResponse:
    """Acknowledge: silent until ``until`` (default 7 days), recorded with who acknowledged."""
    return _silence(req, "ack")


@bp.route(route="credentials/{id}/snooze", methods=["POST"])
@traced
def credentials_snooze(req: func.HttpRequest) -> func.HttpResponse:
    """Snooze until ``until`` (or for ``days``)."""
    return _silence(req, "snooze")
