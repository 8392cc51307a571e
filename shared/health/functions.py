"""The health blueprint: its door to the Functions host. Parse, call, shape; nothing more.

Only ``azure.functions`` (and the standard-library ``shared.http_input``) is imported here at module
level: indexing must stay light.
"""

from __future__ import annotations

import json

import azure.functions as func

from shared.composition import traced
from shared.failure_answers import failure_answer
from shared.http_input import RequestRejected, query

bp = func.Blueprint()  # type: ignore[no-untyped-call]

JSON = "application/json"


@bp.route(route="health/live", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@traced
def health_live(req: func.HttpRequest) -> func.HttpResponse:
    """Liveness probe: the worker is up. The only anonymous route; it reveals nothing, and it reads nothing
    of the request, so no probe's query string can make it fail."""
    return func.HttpResponse(json.dumps({"status": "alive"}), mimetype=JSON)


@bp.route(route="health/doctor", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
@traced
def health_doctor(req: func.HttpRequest) -> func.HttpResponse:
    """Walk the identity chain and return the doctor's report; 503 when a step failed."""
    from shared.identity.doctor import run_doctor

    try:
        query(req.params, ())  # it takes none: a caller expecting ?step= or similar learns so
    except RequestRejected as exc:
        return func.HttpResponse(json.dumps({"error": exc.reason}), status_code=exc.status, mimetype=JSON)
    try:
        report = run_doctor()
    except Exception as exc:  # a failure the walk did not turn into a step (a token refresh mid-probe)
        return failure_answer(exc, "health_doctor_failed").response(ok=False)
    return func.HttpResponse(json.dumps(report.to_dict()), status_code=200 if report.ok else 503, mimetype=JSON)
