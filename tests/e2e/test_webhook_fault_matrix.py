"""The reduced webhook rows of RELIABILITY.md (``make reliability`` runs them all at 2,000 writes): every
fault at once on 400 writes, time-scaled by 0.1 (the host's 60 s outage is 6 s, its message lease 60 s).
The sink ends at the store's state for every record, nothing was applied out of order, the reordered
deliveries were dropped as stale, the watcher counted the emulator's failed system jobs, and the totals
add up."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.webhook_matrix import run_webhook_row, webhook_faults

pytestmark = pytest.mark.e2e

WRITES = 400
TIME_SCALE = 0.1


def test_a_stopped_killed_and_reordered_receiver_loses_nothing_and_applies_nothing_stale(
    tmp_path: Path, app_env
) -> None:
    together = webhook_faults()[-1]
    assert (together.stop, together.kill, together.reorder) == (True, True, True)
    outcome = run_webhook_row(together, WRITES, tmp_path, TIME_SCALE, apply_env=app_env)
    assert outcome.unprocessed == 0, outcome.mismatches
    assert outcome.stale_applications == 0, outcome
    assert outcome.failed_jobs > 0, outcome  # the outage really refused deliveries
    assert outcome.watcher_failed_jobs == outcome.failed_jobs, outcome
    assert outcome.reconciled > 0, outcome  # and the reconciler recovered them
    assert outcome.totals_consistent, outcome
    assert any(e.startswith("host stopped") for e in outcome.events), outcome
    assert any(e.startswith("host SIGKILLed") for e in outcome.events), outcome
