"""Dedupe of webhook deliveries, nonces and processed events: claims (``shared.storage.claims``) in one
table, remembered for ``WEBHOOK_DEDUPE_TTL_S``, in one scope per kind and source.

* the signed receiver records each nonce in ``nonce-<source>`` once its message is on the queue: a copy
  that finds the record answers as a replay;
* the processor claims ``processing`` in ``processed-<source>``, runs the handlers, then settles ``done``.

Dataverse events need neither: their copies are reduced to one effect by the ordering guard
(shared.webhooks.ordering), which compares row versions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from shared.config import read_int
from shared.settings_registry import EnvVars
from shared.storage.claims import Claim, ClaimLost, Claims, Held, LeaseKeeper

__all__ = ["DEDUPE_TABLE", "Claim", "ClaimLost", "Dedupe", "Held", "LeaseKeeper", "dedupe_ttl_s", "nonce_scope",
           "processed_scope"]  # fmt: skip

DEDUPE_TABLE = "webhookdedupe"


def dedupe_ttl_s() -> int:
    """WEBHOOK_DEDUPE_TTL_S: how long a row is remembered (Dataverse retries a delivery within minutes)."""
    return read_int(EnvVars.WEBHOOK_DEDUPE_TTL_S)


def processed_scope(source: str) -> str:
    """The scope of "this event's effects are done" claims, written by the processor."""
    return f"processed-{source}"


def nonce_scope(source: str) -> str:
    """The scope of "this nonce was used" claims, written by the signed receiver."""
    return f"nonce-{source}"


class Dedupe(Claims):
    """The webhook claims table, remembered for WEBHOOK_DEDUPE_TTL_S (read once per Dedupe)."""

    def __init__(
        self,
        table_client: Any,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        ttl_s: float | None = None,
    ) -> None:
        super().__init__(table_client, ttl_s=dedupe_ttl_s() if ttl_s is None else ttl_s, clock=clock, sleep=sleep)
