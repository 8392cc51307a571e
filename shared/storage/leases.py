"""Job leases: one blob lease per job, renewed in the background while the run lasts, so that two runs of
one job never overlap and a crashed run frees the job within one lease duration."""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

from shared.config import read_int
from shared.logging import log_event
from shared.settings_registry import EnvVars
from shared.storage.account import StorageAccount, table_key

logger = logging.getLogger(__name__)

LEASE_CONTAINER = "sync-leases"
MIN_LEASE_RENEW_S = 5  # never renew more often than this, however short the lease


def lease_duration_s() -> int:
    """SYNC_LEASE_DURATION_S (15-60 s, what Blob Storage accepts), read when a lease is taken: a bad value is
    a ConfigError naming the setting. The lease is renewed while the run lasts."""
    return read_int(EnvVars.SYNC_LEASE_DURATION_S)


def lease_renew_s(duration_s: int) -> int:
    """Renew every third of the lease, so a failed renewal is tried again before the lease lapses; a crashed
    run frees the job within one lease duration."""
    return max(MIN_LEASE_RENEW_S, duration_s // 3)


class Leases(StorageAccount):
    def lease(self, job: str) -> JobLease | None:
        """Hold the job's lease for the run, or None when another run holds it."""
        from azure.core.exceptions import HttpResponseError, ResourceExistsError

        duration_s = lease_duration_s()  # first: a bad setting fails the run before any storage call
        blob = self.container(LEASE_CONTAINER).get_blob_client(f"{table_key(job)}.lock")
        with contextlib.suppress(ResourceExistsError):
            blob.upload_blob(b"", overwrite=False)
        try:
            lease = blob.acquire_lease(lease_duration=duration_s)
        except HttpResponseError as exc:
            if getattr(exc, "status_code", None) == 409:  # LeaseAlreadyPresent
                return None
            raise
        return JobLease(lease, renew_every_s=lease_renew_s(duration_s))


class JobLease:
    """A held blob lease, renewed in the background until released."""

    def __init__(self, lease: Any, *, renew_every_s: float) -> None:
        self._lease = lease
        self._renew_every_s = renew_every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, daemon=True, name="sync-lease")
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self._renew_every_s):
            try:
                self._lease.renew()
            except Exception as exc:  # losing the lease is logged; the run finishes, idempotently
                log_event(logger, "sync_lease_renew_failed", logging.WARNING, error=type(exc).__name__)

    def release(self) -> None:
        self._stop.set()
        try:
            self._lease.release()
        except Exception as exc:  # an expired lease needs no release
            log_event(logger, "sync_lease_release_failed", logging.WARNING, error=type(exc).__name__)
