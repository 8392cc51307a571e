"""Build-time validation stamps: indexing trusts a stamp only for the exact bytes that were validated."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from shared.errors import ConfigError
from shared.stamps import JOBS_VALIDATORS, digest, read_stamp, stamp_path
from shared.sync import jobs_file as worker
from shared.webhooks import routes_file

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def jobs_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "sync_jobs.yaml"
    shutil.copy(ROOT / "sync_jobs.yaml", path)
    monkeypatch.setenv(worker.JOBS_FILE_SETTING, str(path))
    return path


def test_a_stamp_carries_the_job_index_for_exactly_the_validated_bytes(jobs_copy: Path) -> None:
    written = worker.validate_jobs_file(jobs_copy, stamp=True)
    assert written == stamp_path(jobs_copy)
    index = worker.job_index()
    assert index["accounts"] == worker.JobSummary("inbound", "0 */15 * * * *")
    assert index["shipments-out"].direction == "outbound"
    assert read_stamp(jobs_copy, JOBS_VALIDATORS) is not None


def test_a_file_edited_after_stamping_is_validated_again_and_stops_start_up(jobs_copy: Path) -> None:
    worker.validate_jobs_file(jobs_copy, stamp=True)
    jobs_copy.write_text(jobs_copy.read_text().replace("table: contact", "table: contact\n    strategy: fastest", 1))
    assert read_stamp(jobs_copy, JOBS_VALIDATORS) is None
    with pytest.raises(ConfigError) as caught:
        worker.job_index()
    assert any(f"{jobs_copy}: job 'contacts' field 'strategy'" in p for p in caught.value.problems)


def test_a_forged_or_foreign_stamp_is_ignored(jobs_copy: Path) -> None:
    ghost = {"ghost": {"direction": "inbound", "schedule": "x"}}
    forged = {"file": jobs_copy.name, "digest": "0" * 64, "summary": ghost}
    stamp_path(jobs_copy).write_text(json.dumps(forged))
    assert "ghost" not in worker.job_index()
    stamp_path(jobs_copy).write_text("not json")
    assert sorted(worker.job_index()) == ["accounts", "contacts", "shipments-out"]


def test_a_changed_validator_invalidates_the_stamp(jobs_copy: Path, tmp_path: Path) -> None:
    validator = tmp_path / "jobs.py"
    validator.write_text("RULES = 1\n")
    before = digest(jobs_copy, (validator,))
    validator.write_text("RULES = 2\n")
    assert digest(jobs_copy, (validator,)) != before


def test_a_broken_routes_file_stops_start_up_even_next_to_an_old_stamp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "webhook_routes.yaml"
    shutil.copy(ROOT / "webhook_routes.yaml", path)
    monkeypatch.setenv(routes_file.ROUTES_FILE_SETTING, str(path))
    routes_file.validate_routes_file(path, stamp=True)
    routes_file.check_routes_at_start_up()  # stamped: passes without validating
    path.write_text(path.read_text() + "\nunexpected_section: 1\n")
    with pytest.raises(ConfigError, match="unexpected_section"):
        routes_file.check_routes_at_start_up()
