"""Key Vault's Event Grid system topic, delivering to the local host's Event Grid endpoint.

Like the real service, an object's current version gets ``…NearExpiry`` once when it comes within 30 days
of its expiry (a fixed lead time for secrets and certificates) and ``…Expired`` once when it expires; one
event per delivery (Event Grid's default ``maxEventsPerBatch`` of 1), Event Grid schema, header
``aeg-event-type: Notification``. Unlike the real service, versions created before start-up are covered
too (the subscription exists from the start).
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import requests

from devstack.world import SecretVersion, World

NEAR_EXPIRY_LEAD = timedelta(days=30)
SCAN_INTERVAL_S = 2.0
DELIVERY_TIMEOUT_S = 30
FUNCTION_NAME = "expiry_event"
SUBSCRIPTION_ID = "00000000-0000-0000-0000-00000000d5b1"
RESOURCE_GROUP = "rg-dvbridge"


class VaultEventEmitter:
    def __init__(self, world: World, vault_url: str, host_url: str, eventgrid_key: str) -> None:
        self.world = world
        self.vault_url = vault_url
        self.url = f"{host_url}/runtime/webhooks/eventgrid"
        self.params = {"functionName": FUNCTION_NAME, "code": eventgrid_key}
        self.topic = (
            f"/subscriptions/{SUBSCRIPTION_ID}/resourceGroups/{RESOURCE_GROUP}"
            f"/providers/Microsoft.KeyVault/vaults/{world.vault_name}"
        )
        self.emitted: set[tuple[str, str, str, str]] = set()
        self.delivered: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._session = requests.Session()

    def event(self, kind: str, name: str, version: SecretVersion, stage: str) -> dict[str, Any]:
        object_type = "Secret" if kind == "secret" else "Certificate"
        event_type = f"Microsoft.KeyVault.{object_type}{'NearExpiry' if stage == 'near' else 'Expired'}"
        return {
            "id": str(uuid.uuid4()),
            "topic": self.topic,
            "subject": name,
            "eventType": event_type,
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

    def deliver(self, event: dict[str, Any]) -> int:
        try:
            status = self._session.post(
                self.url, params=self.params, json=[event], headers={"aeg-event-type": "Notification"},
                timeout=DELIVERY_TIMEOUT_S,
            ).status_code  # fmt: skip
        except requests.RequestException:
            status = 0
        with self._lock:
            self.delivered.append({"eventType": event["eventType"], "subject": event["subject"], "status": status})
        return status

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            for event in self.due(datetime.now(UTC)):
                await loop.run_in_executor(None, self.deliver, event)
            await asyncio.sleep(SCAN_INTERVAL_S)
