"""The sync blueprint: a timer per job, run-now endpoints and recent run reports.

The jobs file is validated at indexing: a broken file stops the app from starting, with the file, job and
field named (through a build-time stamp when one matches, see ``shared.stamps``). Each job's timer binds
its schedule to the app setting ``SYNC_SCHEDULE_<JOB>`` (``%SYNC_SCHEDULE_<JOB>%``), which the Functions host
resolves in its own process: infra/main.bicep and local.settings.json set one per job, with the job's
``schedule`` from the YAML. Nothing here can default it (the worker's os.environ never reaches the host); an
unset one makes the host disable that timer ("failed indexing").
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import azure.functions as func

from shared.composition import traced
from shared.failure_answers import failure_answer
from shared.http_input import RequestRejected, int_param, preview, query, text_param
from shared.logging import log_event
from shared.settings_registry import EnvVars
from shared.sync.jobs_file import job_index, schedule_setting
from shared.telemetry import watch_queue

if TYPE_CHECKING:
    from shared.sync.engine import SyncContext
    from shared.sync.jobs import InboundJob

logger = logging.getLogger(__name__)
CHUNK_QUEUE_NAME = "sync-chunks"  # shared.sync.fanout.CHUNK_QUEUE, which a test keeps equal
bp = func.Blueprint()  # type: ignore[no-untyped-call]
JSON = "application/json"
DEFAULT_RUNS_LIMIT = 20  # reports per GET /api/sync/runs
MAX_RUNS_LIMIT = 500  # reports are a few KB each: a page stays well under a megabyte
# Run ids as the engine makes them ("20261201T195925-3f2a1b", "replay-…"); letters, digits, . _ - only,
# because a run id becomes a blob name prefix.
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
RUN_ID_SHAPE = "a run id such as 20261201T195925-3f2a1b (letters, digits, . _ -; 1..100 characters)"
JOBS = job_index()  # validated at start-up: a broken file raises ConfigError naming file, job and field


def sync_context() -> SyncContext:
    """The runs' context on the worker's objects (their caches outlive each invocation)."""
    from shared.composition import worker
    from shared.sync.engine import SyncContext

    return SyncContext.on(worker())


def _inbound_job(name: str) -> InboundJob | None:
    """The full model of an inbound job, or None."""
    from shared.sync.jobs import InboundJob
    from shared.sync.jobs_file import jobs

    job = jobs().get(name)
    return job if isinstance(job, InboundJob) else None


def run_job(name: str) -> dict[str, Any]:
    """Run one job now and return its report (also logged and stored)."""
    from shared.sync.engine import run_inbound
    from shared.sync.jobs import InboundJob
    from shared.sync.jobs_file import jobs
    from shared.sync.outbound import run_outbound

    job = jobs()[name]
    if isinstance(job, InboundJob):
        return run_inbound(name, job, sync_context()).to_dict()
    return run_outbound(name, job, sync_context()).to_dict()


def _timer(name: str) -> None:
    @bp.function_name(f"sync_{name.replace('-', '_')}")
    @bp.timer_trigger(arg_name="timer", schedule=f"%{schedule_setting(name)}%")
    @traced
    def sync_timer(timer: func.TimerRequest) -> None:
        if timer.past_due:
            log_event(logger, "sync_timer_past_due", job=name)
        run_job(name)


for _name in JOBS:
    _timer(_name)


def _answer(status: int, body: Any, headers: dict[str, str] | None = None) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body), status_code=status, mimetype=JSON, headers=headers)


@bp.route(route="sync/runs", methods=["GET"])
@traced
def sync_runs(req: func.HttpRequest) -> func.HttpResponse:
    """Recent run reports, newest first (``?limit=`` of them, 1..MAX_RUNS_LIMIT)."""
    from shared.composition import worker

    try:
        params = query(req.params, ("limit",))
        limit = int_param(params, "limit", low=1, high=MAX_RUNS_LIMIT, default=DEFAULT_RUNS_LIMIT)
        # Storage alone: the reports stay readable while the Dataverse credential is broken.
        reports = worker().storage().recent_reports(limit)
    except RequestRejected as exc:
        return _answer(exc.status, {"error": exc.reason})
    except Exception as exc:
        return failure_answer(exc, "sync_runs_unavailable").response()
    return _answer(200, reports)


@bp.route(route="sync/{job}/run", methods=["POST"])
@traced
def sync_run_now(req: func.HttpRequest) -> func.HttpResponse:
    """Run a job now; 200 with its report, 404 for an unknown job, 409 when another run holds it."""
    name = req.route_params.get("job", "")
    try:
        query(req.params, ())
    except RequestRejected as exc:
        return _answer(exc.status, {"error": exc.reason})
    if name not in JOBS:
        return _answer(404, {"error": f"no job named {preview(name)}", "jobs": sorted(JOBS)})
    return _report_response(name, lambda: run_job(name))


@bp.route(route="sync/{job}/replay", methods=["POST"], auth_level=func.AuthLevel.ADMIN)
@traced
def sync_replay(req: func.HttpRequest) -> func.HttpResponse:
    """Re-send a job's dead letters (``?run=<run id>`` for one run); admin key only."""
    from shared.sync.engine import replay_dead_letters

    name = req.route_params.get("job", "")
    try:
        # An empty ?run= is refused rather than read as "no run given", which would replay every run.
        run_id = text_param(query(req.params, ("run",)), "run", pattern=RUN_ID, shape=RUN_ID_SHAPE)
    except RequestRejected as exc:
        return _answer(exc.status, {"error": exc.reason})
    if name not in JOBS:  # before the job models load: an unknown name costs no file read
        return _answer(404, {"error": f"no inbound job named {preview(name)}"})

    def replay() -> dict[str, Any]:
        job = _inbound_job(name)
        if job is None:
            raise _NotInbound(name)
        return replay_dead_letters(name, job, sync_context(), run_id=run_id).to_dict()

    return _report_response(name, replay)


class _NotInbound(Exception):
    """The job exists but is outbound: nothing to replay (a 404, like an unknown job)."""


def _report_response(name: str, run: Callable[[], dict[str, Any]]) -> func.HttpResponse:
    """200 with the run report, 409 when another run holds the job; when a dependency failed (before the run
    started or during it) 503 or 502 naming it and what to check (``shared.failure_answers.failure_answer``)."""
    try:
        report = run()
    except _NotInbound:
        return _answer(404, {"error": f"no inbound job named {preview(name)}"})
    except Exception as exc:
        return failure_answer(exc, "sync_run_failed", job=name).response(job=name, status="failed")
    status = 409 if report["status"] == "skipped" else 200
    return _answer(status, report)


watch_queue(CHUNK_QUEUE_NAME)  # its backlog, and its poison queue's, in the telemetry


@bp.queue_trigger(arg_name="item", queue_name=CHUNK_QUEUE_NAME, connection=EnvVars.STORAGE)
@traced
def sync_chunk(item: func.QueueMessage) -> None:
    """Write one fanned-out chunk. Failures retry per host.json and end in ``sync-chunks-poison`` with
    their chunk id in the message."""
    from shared.sync.fanout import run_chunk

    work = json.loads(item.get_body())
    job = _inbound_job(str(work.get("job", "")))
    if job is None:
        raise ValueError(f"chunk {work.get('chunk_id')}: no inbound job named {work.get('job')!r}")
    run_chunk(job, sync_context(), work)
