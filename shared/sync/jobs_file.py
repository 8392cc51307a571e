"""The sync jobs file: where it is, its validated models (re-read when it changes), and what indexing needs.

Indexing needs only each job's name, direction and schedule (``job_index``); the pydantic models are
loaded on first use (``jobs``). See ``shared.stamps`` for how start-up validation stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from shared.config import read_text
from shared.settings_registry import SYNC_SCHEDULE_PREFIX, EnvVars
from shared.stamps import JOBS_VALIDATORS, read_stamp, write_stamp

if TYPE_CHECKING:
    from shared.sync.jobs import InboundJob, OutboundJob

JOBS_FILE_SETTING = EnvVars.SYNC_JOBS_FILE
APP_ROOT = Path(__file__).resolve().parents[2]
_jobs_cache: tuple[tuple[str, int, int], dict[str, InboundJob | OutboundJob]] | None = None


class JobSummary(NamedTuple):
    """What indexing needs of a job: a timer per job, with its schedule."""

    direction: str
    schedule: str


def jobs_file() -> Path:
    path = Path(read_text(JOBS_FILE_SETTING))  # the declared default when unset
    return path if path.is_absolute() else APP_ROOT / path


def jobs() -> dict[str, InboundJob | OutboundJob]:
    """The validated job models, re-read when the file changes (tests and local edits)."""
    global _jobs_cache
    from shared.sync.jobs import load_jobs

    path = jobs_file()
    try:
        stat = path.stat()
        identity = (str(path), stat.st_mtime_ns, stat.st_size)
    except OSError:
        return load_jobs(path)  # raises ConfigError naming the missing file
    cached = _jobs_cache
    if cached is not None and cached[0] == identity:
        return cached[1]
    loaded = load_jobs(path)
    _jobs_cache = (identity, loaded)
    return loaded


def _summaries(defined: dict[str, InboundJob | OutboundJob]) -> dict[str, JobSummary]:
    return {name: JobSummary(job.direction, job.schedule) for name, job in defined.items()}


def validate_jobs_file(path: Path, *, stamp: bool = False) -> Path | None:
    """Validate fully (ConfigError naming file, job and field); with ``stamp``, record it for indexing."""
    from shared.sync.jobs import load_jobs

    index = _summaries(load_jobs(path))
    return write_stamp(path, JOBS_VALIDATORS, {n: s._asdict() for n, s in index.items()}) if stamp else None


def job_index() -> dict[str, JobSummary]:
    """Job names, directions and schedules for indexing: from a matching build-time stamp, or else by
    validating the file fully now (so a broken file still stops start-up)."""
    path = jobs_file()
    summary = read_stamp(path, JOBS_VALIDATORS) if path.exists() else None
    if summary is None:
        return _summaries(jobs())  # validated now; the models stay cached for the first run
    return {name: JobSummary(str(job["direction"]), str(job["schedule"])) for name, job in summary.items()}


def schedule_setting(job: str) -> str:
    """The app setting that carries a job's timer schedule, e.g. ``SYNC_SCHEDULE_ACCOUNTS``."""
    return SYNC_SCHEDULE_PREFIX + "".join(c if c.isalnum() else "_" for c in job).upper()
