"""Outbound sync runs: Dataverse change tracking -> a sink (blob JSONL, or HTTP POST in batches).

The delta link is saved only after the sink confirmed. A blob file is named after the delta link it
continues from, so a run that crashed between writing and saving re-writes the same file instead of a
second one: each change reaches the sink exactly once across runs.
"""

from __future__ import annotations

from shared.sync.engine import SyncContext
from shared.sync.jobs import OutboundJob
from shared.sync.run import RunReport, SyncRun
from shared.sync.sinks import outbound_sink
from shared.sync.sources import ChangeTracking


def run_outbound(name: str, job: OutboundJob, ctx: SyncContext, *, run_id: str | None = None) -> RunReport:
    with SyncRun(name, "outbound", ctx.storage, ctx.client, run_id=run_id, dead_letters=False) as run:
        if run.skipped:
            return run.report
        source = ChangeTracking(name, job.entity_set, job.select, ctx.client, ctx.storage)
        changes = source.changes()
        run.report.rows_read = len(changes)
        if changes:
            outbound_sink(job.sink, ctx.storage, ctx.http).deliver(name, changes, source.previous)
        source.done()  # only after the sink confirmed
        run.report.written = len(changes)
    return run.report
