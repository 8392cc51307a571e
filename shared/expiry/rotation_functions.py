"""The rotation blueprint: the rotation sweep's timer, and the admin routes that show and start a rotation."""

from __future__ import annotations

import json
import logging
from typing import Any

import azure.functions as func

from shared.composition import traced
from shared.failure_answers import failure_answer
from shared.http_input import RequestRejected, query
from shared.logging import log_event
from shared.settings_registry import EnvVars

logger = logging.getLogger(__name__)
bp = func.Blueprint()  # type: ignore[no-untyped-call]
JSON = "application/json"
# The host resolves %ROTATION_SCHEDULE% from its app settings (main.bicep and local settings set it): the worker
# cannot default it, and unset the rotation sweep is disabled.
ROTATION_SCHEDULE_SETTING = EnvVars.ROTATION_SCHEDULE


def _answer(status: int, body: Any) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body, default=str), status_code=status, mimetype=JSON)


@bp.timer_trigger(arg_name="timer", schedule=f"%{ROTATION_SCHEDULE_SETTING}%")
@traced
def credential_rotation(timer: func.TimerRequest) -> None:
    """Start a rotation of the Dataverse credential when it is due, and move one in progress on."""
    from shared.expiry.wiring import build_rotator

    report = build_rotator().tick("sweep")
    log_event(logger, "rotation_tick", outcome=report.outcome, phase=report.state.phase if report.state else "-")
    if report.outcome == "failed":
        raise RuntimeError(f"credential rotation failed: {report.state.failure if report.state else '?'}")


@bp.route(route="rotation", methods=["GET"])
@traced
def rotation_status(req: func.HttpRequest) -> func.HttpResponse:
    """The Dataverse credential's last or current rotation (no secret is ever part of it)."""
    from shared.expiry.wiring import build_rotator

    try:
        query(req.params, ())
        rotator = build_rotator()
        state = rotator.states.get(rotator.settings.credential_name)
    except RequestRejected as exc:
        return _answer(exc.status, {"error": exc.reason})
    except Exception as exc:
        return failure_answer(exc, "rotation_status_unavailable").response()
    return _answer(200, {"enabled": rotator.settings.enabled, "rotation": state.to_dict() if state else None})


@bp.route(route="rotation/start", methods=["POST"], auth_level=func.AuthLevel.ADMIN)  # it changes the credential
@traced
def rotation_start(req: func.HttpRequest) -> func.HttpResponse:
    """Start a rotation now, whatever the end date (or resume the one in progress), and run it as far as it
    goes now: to the grace period, or its end."""
    from shared.expiry.wiring import build_rotator

    try:
        query(req.params, ())
        report = build_rotator().tick("admin", force=True)
    except RequestRejected as exc:
        return _answer(exc.status, {"error": exc.reason})
    except Exception as exc:
        return failure_answer(exc, "rotation_start_unavailable").response()
    if report.outcome == "disabled":
        return _answer(409, {"error": f"rotation is switched off ({EnvVars.ROTATION_ENABLED}=false)"})
    if report.outcome == "busy":
        return _answer(409, {"error": "a rotation of this credential is running now; GET /api/rotation shows it"})
    body = {"outcome": report.outcome, "notices": report.notices,
            "rotation": report.state.to_dict() if report.state else None}  # fmt: skip
    return _answer(200, body)
