"""The sync blueprint: a timer per job, run-now endpoints and recent run reports.

The jobs file is validated at indexing: a broken file stops the app from starting, with the file, job and
field named (through a build-time stamp when one matches, see ``shared.stamps``). Each job's timer reads
its schedule from an app setting (``SYNC_SCHEDULE_<JOB>``), defaulted from the YAML so the local host needs
nothing else; in Azure the deployment sets it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import azure.functions as func

from shared.errors import DvbridgeError
from shared.logging import log_event
from shared.sync.worker import job_index, schedule_setting

if TYPE_CHECKING:
    from shared.sync.jobs import InboundJob

logger = logging.getLogger(__name__)
bp = func.Blueprint()  # type: ignore[no-untyped-call]
JSON = "application/json"
JOBS = job_index()  # validated at start-up: a broken file raises ConfigError naming file, job and field


def _inbound_job(name: str) -> InboundJob | None:
    """The full model of an inbound job, or None."""
    from shared.sync.jobs import InboundJob
    from shared.sync.worker import jobs

    job = jobs().get(name)
    return job if isinstance(job, InboundJob) else None


def run_job(name: str) -> dict[str, Any]:
    """Run one job now and return its report (also logged and stored)."""
    from shared.sync.engine import run_inbound
    from shared.sync.jobs import InboundJob
    from shared.sync.outbound import run_outbound
    from shared.sync.worker import jobs, sync_context

    job = jobs()[name]
    if isinstance(job, InboundJob):
        return run_inbound(name, job, sync_context()).to_dict()
    return run_outbound(name, job, sync_context()).to_dict()


def _timer(name: str) -> None:
    os.environ.setdefault(schedule_setting(name), JOBS[name].schedule)

    @bp.function_name(f"sync_{name.replace('-', '_')}")
    @bp.timer_trigger(arg_name="timer", schedule=f"%{schedule_setting(name)}%")
    def sync_timer(timer: func.TimerRequest) -> None:
        if timer.past_due:
            log_event(logger, "sync_timer_past_due", job=name)
        run_job(name)


for _name in JOBS:
    _timer(_name)


@bp.route(route="sync/runs", methods=["GET"])
def sync_runs(req: func.HttpRequest) -> func.HttpResponse:
    """Recent run reports, newest first."""
    from shared.sync.worker import sync_context

    limit = int(req.params.get("limit", "20"))
    return func.HttpResponse(json.dumps(sync_context().storage.recent_reports(limit)), mimetype=JSON)


@bp.route(route="sync/{job}/run", methods=["POST"])
def sync_run_now(req: func.HttpRequest) -> func.HttpResponse:
    """Run a job now; 200 with its report, 404 for an unknown job, 409 when another run holds it."""
    name = req.route_params["job"]
    if name not in JOBS:
        return func.HttpResponse(
            json.dumps({"error": f"no job named {name!r}", "jobs": sorted(JOBS)}), status_code=404, mimetype=JSON
        )
    return _report_response(name, lambda: run_job(name))


@bp.route(route="sync/{job}/replay", methods=["POST"], auth_level=func.AuthLevel.ADMIN)
def sync_replay(req: func.HttpRequest) -> func.HttpResponse:
    """Re-send a job's dead letters (``?run=<run id>`` for one run); admin key only."""
    from shared.sync.engine import replay_dead_letters
    from shared.sync.worker import sync_context

    name = req.route_params["job"]
    job = _inbound_job(name)
    if job is None:
        return func.HttpResponse(
            json.dumps({"error": f"no inbound job named {name!r}"}), status_code=404, mimetype=JSON
        )
    return _report_response(
        name, lambda: replay_dead_letters(name, job, sync_context(), run_id=req.params.get("run")).to_dict()
    )


def _report_response(name: str, run: Callable[[], dict[str, Any]]) -> func.HttpResponse:
    """200 with the run report, 409 when another run holds the job, 503 with the cause when the run could
    not start (Key Vault or Entra unreachable while the worker builds its Dataverse client)."""
    try:
        report = run()
    except DvbridgeError as exc:
        log_event(logger, "sync_run_not_started", logging.ERROR, job=name, error=type(exc).__name__)
        body = {"job": name, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        return func.HttpResponse(json.dumps(body), status_code=503, mimetype=JSON)
    status = 409 if report["status"] == "skipped" else 200
    return func.HttpResponse(json.dumps(report), status_code=status, mimetype=JSON)


@bp.queue_trigger(arg_name="item", queue_name="sync-chunks", connection="AzureWebJobsStorage")
def sync_chunk(item: func.QueueMessage) -> None:
    """Write one fanned-out chunk. Failures retry per host.json and end in ``sync-chunks-poison`` with
    their chunk id in the message."""
    from shared.sync.engine import run_chunk
    from shared.sync.worker import sync_context

    work = json.loads(item.get_body())
    job = _inbound_job(str(work.get("job", "")))
    if job is None:
        raise ValueError(f"chunk {work.get('chunk_id')}: no inbound job named {work.get('job')!r}")
    run_chunk(job, sync_context(), work)
