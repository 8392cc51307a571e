"""Key Vault's Event Grid system topic, delivering to the local host's Event Grid endpoint, and the vault's clock.

Like the real service, an object's current version gets ``…NearExpiry`` once when it comes within 30 days
of its expiry (a fixed lead time for secrets and certificates) and ``…Expired`` once when it expires; a
certificate renewed by its policy (or by the control endpoint) raises ``…CertificateNewVersionCreated``. One
event per delivery (Event Grid's default ``maxEventsPerBatch`` of 1), Event Grid schema, header
``aeg-event-type: Notification``. Unlike the real service, versions created before start-up are covered
too (the subscription exists from the start). Without a host to deliver to, events are only recorded; every
event and its delivery status is listed at the vault's ``GET /_devstack/events``.

The loop runs every second: it first renews the certificates whose lifetime action is due by the world clock
(:class:`devstack.keyvault.CertificateRenewer`), then sends what is pending. Near-expiry and expiry follow the
real clock, as they did before renewal existed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import requests

from devstack.keyvault import vault_resource_id, world_now
from devstack.world import SecretVersion, World

if TYPE_CHECKING:
    from devstack.keyvault import CertificateRenewer

NEAR_EXPIRY_LEAD = timedelta(days=30)
SCAN_INTERVAL_S = 1.0
DELIVERY_TIMEOUT_S = 30
FUNCTION_NAME = "expiry_event"
NEW_VERSION = "new"

logger = logging.getLogger(__name__)


class VaultEventEmitter:
    def __init__(
        self, world: World, vault_url: str, host_url: str | None = None, eventgrid_key: str | None = None
    ) -> None:
        self.world = world
        self.vault_url = vault_url
        self.url: str | None = None
        self.params: dict[str, str] = {}
        if host_url is not None and eventgrid_key is not None:
            self.deliver_to(host_url, eventgrid_key)
        self.topic = vault_resource_id(world.vault_name)
        self.emitted: set[tuple[str, str, str, str]] = set()
        # Every event raised, in order, with its delivery status (None: not delivered, yet or at all).
        self.sent: list[dict[str, Any]] = []
        self._pending: list[dict[str, Any]] = []  # entries of `sent` still to be delivered
        self._lock = threading.Lock()
        self._session = requests.Session()

    def deliver_to(self, host_url: str, eventgrid_key: str) -> None:
        """From now on, send events to the local host's Event Grid endpoint for the expiry function."""
        self.url = f"{host_url}/runtime/webhooks/eventgrid"
        self.params = {"functionName": FUNCTION_NAME, "code": eventgrid_key}

    def event(self, kind: str, name: str, version: SecretVersion, stage: str) -> dict[str, Any]:
        object_type = "Secret" if kind == "secret" else "Certificate"
        suffix = {"near": "NearExpiry", "expired": "Expired", NEW_VERSION: "NewVersionCreated"}[stage]
        return {
            "id": str(uuid.uuid4()),
            "topic": self.topic,
            "subject": name,
            "eventType": f"Microsoft.KeyVault.{object_type}{suffix}",
            "eventTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f0Z"),
            "data": {
                "Id": f"{self.vault_url}/{kind}s/{name}/{version.version}",
                "VaultName": self.world.vault_name,
                "ObjectType": object_type,
                "ObjectName": name,
                "Version": version.version,
                "NBF": int(version.not_before.timestamp()) if version.not_before else None,
                "EXP": int(version.expires.timestamp()) if version.expires else None,
            },
            "dataVersion": "1",
            "metadataVersion": "1",
        }

    def _raise(self, event: dict[str, Any]) -> None:
        entry: dict[str, Any] = {"event": event, "status": None}
        with self._lock:
            self.sent.append(entry)
            self._pending.append(entry)

    def new_version_created(self, kind: str, name: str, version: SecretVersion) -> None:
        """Raise ``…NewVersionCreated`` (listed at once, delivered by the loop within a second)."""
        self._raise(self.event(kind, name, version, NEW_VERSION))

    def due(self, now: datetime) -> list[dict[str, Any]]:
        events = []
        with self.world.lock:
            objects = [("secret", n, v[-1]) for n, v in self.world.secrets.items() if v and not v[-1].managed]
            objects += [("certificate", n, v[-1]) for n, v in self.world.certificates.items() if v]
        for kind, name, version in objects:
            if version.expires is None or not version.enabled:
                continue
            for stage, reached in (
                ("near", version.expires - NEAR_EXPIRY_LEAD <= now),
                ("expired", version.expires <= now),
            ):
                key = (kind, name, version.version, stage)
                if reached and key not in self.emitted:
                    self.emitted.add(key)
                    events.append(self.event(kind, name, version, stage))
        return events

    def take(self, now: datetime) -> list[dict[str, Any]]:
        """What is to be sent now (entries of ``sent``): the new-version events raised, then what became due."""
        for event in self.due(now):
            self._raise(event)
        with self._lock:
            pending, self._pending = self._pending, []
        return pending

    def deliver(self, entry: dict[str, Any]) -> int | None:
        """POST one event to the host (when there is one); its status is recorded in the entry."""
        if self.url is None:
            return None
        try:
            status = self._session.post(
                self.url, params=self.params, json=[entry["event"]], headers={"aeg-event-type": "Notification"},
                timeout=DELIVERY_TIMEOUT_S,
            ).status_code  # fmt: skip
        except requests.RequestException:
            status = 0
        with self._lock:
            entry["status"] = status
        return status

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {"eventType": s["event"]["eventType"], "subject": s["event"]["subject"], "status": s["status"],
                 "event": s["event"]}
                for s in self.sent
            ]  # fmt: skip

    async def run(self, renewer: CertificateRenewer | None = None) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                if renewer is not None:
                    await loop.run_in_executor(None, renewer.check, world_now(self.world))
                for entry in self.take(datetime.now(UTC)):
                    await loop.run_in_executor(None, self.deliver, entry)
            except Exception:  # a bad scenario object must not stop the vault's clock
                logger.exception("Key Vault's renewal/event loop failed; trying again")
            await asyncio.sleep(SCAN_INTERVAL_S)
