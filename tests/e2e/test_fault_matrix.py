"""The reduced fault matrix of RELIABILITY.md (``make reliability`` runs the full one): 4,000 rows with every
fault at once, shorter outages and token lifetime. Nothing lost, nothing duplicated, every bad row
dead-lettered with its reason, consistent totals, and webhooks and the expiry sweep still work after."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.matrix import combined, faults, run_row

pytestmark = pytest.mark.e2e

ROWS = 4_000
OUTAGE_S = 5.0
TOKEN_AGE_S = 3.0


def test_all_faults_at_once_lose_and_duplicate_nothing(tmp_path: Path, app_env) -> None:
    single = faults(OUTAGE_S, TOKEN_AGE_S)
    outcome = run_row(combined(single[1:]), ROWS, OUTAGE_S, tmp_path, apply_env=app_env)
    assert outcome.lost == 0, outcome
    assert outcome.duplicated == 0, outcome
    assert outcome.present == outcome.expected == ROWS - ROWS // 100
    assert outcome.dead_letters == outcome.dead_letters_expected == ROWS // 100, outcome
    assert outcome.dead_letters_without_reason == 0
    assert outcome.totals_consistent, outcome
    assert outcome.runs >= 2, outcome  # the outages fail the first run; a later one completes
    assert any(e.startswith("Azurite restarted") for e in outcome.events), outcome  # mid-run, really
    assert any(e.startswith("host SIGKILLed") for e in outcome.events), outcome
    assert outcome.webhook_round_trip
    assert outcome.expiry_sweep
