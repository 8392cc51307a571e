"""Outbound sync runs: Dataverse change tracking -> a sink (blob JSONL, or HTTP POST in batches).

The delta link is saved only after the sink confirmed. A blob file is named after the delta link it
continues from, so a run that crashed between writing and saving re-writes the same file instead of a
second one: each change reaches the sink exactly once across runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from shared.logging import log_event
from shared.sync.engine import RunReport, SyncContext
from shared.sync.jobs import BlobSink, HttpSink, OutboundJob

logger = logging.getLogger(__name__)

DELTA_LINK_STATE = "deltalink"
SINK_RETRY_ATTEMPTS = 5
SINK_BACKOFF_S = 1.0


def run_outbound(name: str, job: OutboundJob, ctx: SyncContext, *, run_id: str | None = None) -> RunReport:
    run_id = run_id or f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    report = RunReport(name, run_id, datetime.now(UTC).isoformat())
    started = time.monotonic()
    lease = ctx.storage.lease(name)
    if lease is None:
        report.status = "skipped"
        log_event(logger, "sync_run_skipped", job=name, reason="another run holds the job's lease")
        return report
    try:
        previous = ctx.storage.get_state(name, DELTA_LINK_STATE)
        page = ctx.client.track_changes(job.entity_set, select=job.select, delta_link=previous)
        changes = [{"op": "upsert", "record": _clean(row)} for row in page.changed]
        changes += [{"op": "delete", "id": record_id} for record_id in page.deleted]
        report.rows_read = len(changes)
        if changes:
            _deliver(name, job, ctx, changes, previous)
        ctx.storage.set_state(name, DELTA_LINK_STATE, page.delta_link)  # only after the sink confirmed
        report.written = len(changes)
        report.status = "succeeded"
    except Exception as exc:
        report.status = "failed"
        report.error = f"{type(exc).__name__}: {exc}"[:500]
        raise
    finally:
        lease.release()
        report.duration_s = round(time.monotonic() - started, 3)
        ctx.storage.save_report(name, run_id, report.to_dict())
        log_event(logger, "sync_run_report", **{k: v for k, v in report.to_dict().items() if v is not None})
    return report


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not k.startswith("@odata.")}


def _deliver(
    name: str, job: OutboundJob, ctx: SyncContext, changes: list[dict[str, Any]], previous: str | None
) -> None:
    sink = job.sink
    if isinstance(sink, BlobSink):
        # Named after the delta it continues from: a retried run overwrites, never duplicates.
        marker = hashlib.sha256((previous or "initial").encode()).hexdigest()[:16]
        blob = f"{name}/{marker}.jsonl"
        container = ctx.storage.container(sink.container)
        body = "".join(json.dumps(c, default=str) + "\n" for c in changes).encode()
        container.upload_blob(blob, body, overwrite=True)
        log_event(logger, "sync_outbound_written", job=name, blob=blob, changes=len(changes))
        return
    if not isinstance(sink, HttpSink):
        raise ValueError(f"job {name!r}: unknown sink kind {getattr(sink, 'kind', sink)!r}")
    import requests

    for start in range(0, len(changes), sink.batch_size):
        batch = changes[start : start + sink.batch_size]
        for attempt in range(1, SINK_RETRY_ATTEMPTS + 1):
            try:
                response = requests.post(sink.url, json={"job": name, "changes": batch}, timeout=60)
            except requests.RequestException:
                response = None
            if response is not None and response.status_code < 300:
                break
            if attempt == SINK_RETRY_ATTEMPTS:
                status = response.status_code if response is not None else "no response"
                raise RuntimeError(f"the HTTP sink refused the batch at {start} ({status}); the delta link is kept")
            retry_after = response.headers.get("Retry-After") if response is not None else None
            time.sleep(
                float(retry_after) if retry_after and retry_after.isdigit() else SINK_BACKOFF_S * 2 ** (attempt - 1)
            )
