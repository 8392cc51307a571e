"""Per-worker sync singletons: the validated jobs and the SyncContext (storage + Dataverse client)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from shared.sync.jobs import DEFAULT_JOBS_FILE, InboundJob, OutboundJob, load_jobs

if TYPE_CHECKING:
    from shared.sync.engine import SyncContext
    from shared.sync.storage import SyncStorage

JOBS_FILE_SETTING = "SYNC_JOBS_FILE"
APP_ROOT = Path(__file__).resolve().parents[2]
_lock = threading.Lock()
_context: SyncContext | None = None
_storage: SyncStorage | None = None


def jobs_file() -> Path:
    path = Path(os.environ.get(JOBS_FILE_SETTING) or DEFAULT_JOBS_FILE)
    return path if path.is_absolute() else APP_ROOT / path


def jobs() -> dict[str, InboundJob | OutboundJob]:
    return load_jobs(jobs_file())


def schedule_setting(job: str) -> str:
    """The app setting that carries a job's timer schedule, e.g. ``SYNC_SCHEDULE_ACCOUNTS``."""
    return "SYNC_SCHEDULE_" + "".join(c if c.isalnum() else "_" for c in job).upper()


def storage() -> SyncStorage:
    """Storage alone: webhook receivers need nothing else, so they keep accepting events while the
    Dataverse credential is broken (an expired secret must not turn deliveries away)."""
    global _storage
    from shared.identity.worker import settings
    from shared.sync.storage import SyncStorage

    config = settings()
    with _lock:
        if _storage is None:
            account = os.environ.get("AzureWebJobsStorage__accountName")  # noqa: SIM112 - the platform's spelling
            _storage = SyncStorage(config.storage_connection, account_name=account)
        return _storage


def sync_context() -> SyncContext:
    global _context
    from shared.dataverse.client import ClientOptions, DataverseClient
    from shared.identity.worker import secret_store, settings, token_provider
    from shared.sync.engine import SyncContext

    shared_storage = storage()
    with _lock:
        if _context is None:
            client = DataverseClient(settings().dataverse_url, token_provider(), options=ClientOptions())
            _context = SyncContext(shared_storage, client, secret=lambda name: secret_store().get(name).value)
        return _context


def reset() -> None:
    """Forget the storage and sync context (tests that switch between devstacks)."""
    global _storage, _context
    with _lock:
        _storage, _context = None, None
