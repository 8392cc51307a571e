"""Outgoing webhooks, as Dataverse sends them: service endpoints from the scenario or the
control API, notified asynchronously after commit with the RemoteExecutionContext JSON.

Modelled: an asynchronous PostOperation step (Mode 1, Stage 40) per registration; WebhookKey,
HttpHeader and HttpQueryString auth; the ``x-ms-dynamics-*`` headers; a 60 s timeout and exactly
one retry on 502/503/504; over 256 KB the context is stripped and ``x-ms-dynamics-msg-size-exceeded``
is set (its value is UNCONFIRMED: we send ``true``).
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

from devstack.dataverse.metadata import Table
from devstack.dataverse.store import ChangeEvent
from devstack.stats import Stats

CONTRACTS = "http://schemas.microsoft.com/xrm/2011/Contracts"
MAX_PAYLOAD_BYTES = 256 * 1024
RETRY_STATUSES = {502, 503, 504}
# Deliveries in flight at once. Dataverse's asynchronous service does not publish its parallelism
# (UNCONFIRMED): the scenario's `dataverse.webhook_concurrency` sets it.
DEFAULT_DELIVERY_CONCURRENCY = 16
STRIPPED_WHEN_TOO_LARGE = ("ParentContext", "InputParameters", "PreEntityImages", "PostEntityImages")


@dataclass
class Registration:
    url: str
    table: str
    messages: list[str]
    auth_type: str = "WebhookKey"  # WebhookKey | HttpHeader | HttpQueryString
    auth_value: dict[str, str] | str = ""
    step_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> Registration:
        auth = spec.get("auth") or {}
        kind = str(auth.get("type", "WebhookKey"))
        if kind not in {"WebhookKey", "HttpHeader", "HttpQueryString"}:
            raise ValueError(f"webhook auth type {kind!r} is not one of WebhookKey, HttpHeader, HttpQueryString")
        value: dict[str, str] | str = auth.get("value", "") if kind == "WebhookKey" else dict(auth.get("values") or {})
        return cls(
            str(spec["url"]),
            str(spec["table"]),
            list(spec.get("messages") or ["Create", "Update", "Delete"]),
            kind,
            value,
        )


@dataclass
class OrgInfo:
    host: str
    organization_id: str
    business_unit_id: str
    name: str = "unqdevstack"


def _date(value: str) -> str:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return f"/Date({int(parsed.timestamp() * 1000)})/"


def _value(table: Table, name: str, value: Any) -> Any:
    attr = table.attributes.get(name)
    if value is None or attr is None:
        return value
    if attr.type == "lookup":
        return {
            "__type": f"EntityReference:{CONTRACTS}",
            "Id": value,
            "KeyAttributes": [],
            "LogicalName": attr.target,
            "Name": None,
            "RowVersion": None,
        }
    if attr.type == "picklist":
        return {"__type": f"OptionSetValue:{CONTRACTS}", "Value": value}
    if attr.type == "money":
        return {"__type": f"Money:{CONTRACTS}", "Value": value}
    if attr.type == "datetime":
        return _date(str(value))
    return value


def _entity(
    table: Table, record_id: str, data: dict[str, Any], *, typed: bool, row_version: int | None
) -> dict[str, Any]:
    attributes = [{"key": k, "value": _value(table, k, v)} for k, v in data.items()]
    attributes.append({"key": table.primary_id, "value": record_id})
    entity: dict[str, Any] = {
        "Attributes": attributes,
        "EntityState": None,
        "FormattedValues": [],
        "Id": record_id,
        "KeyAttributes": [],
        "LogicalName": table.logical_name,
        "RelatedEntities": [],
        "RowVersion": str(row_version) if row_version is not None else None,
    }
    return {"__type": f"Entity:{CONTRACTS}", **entity} if typed else entity


def remote_execution_context(
    event: ChangeEvent, table: Table, reg: Registration, org: OrgInfo, user_id: str, correlation_id: str
) -> dict[str, Any]:
    record = event.record
    if event.message == "Delete":
        target: Any = {
            "__type": f"EntityReference:{CONTRACTS}",
            "Id": record.id,
            "KeyAttributes": [],
            "LogicalName": table.logical_name,
            "Name": None,
            "RowVersion": None,
        }
    else:
        changed = event.changes if event.message == "Update" else record.data
        target = _entity(table, record.id, changed, typed=True, row_version=None)
    post_images = []
    if event.message != "Delete":
        post_images.append(
            {
                "key": "AsynchronousStepPrimaryName",
                "value": _entity(table, record.id, record.data, typed=False, row_version=record.version),
            }
        )
    pre_images = []
    if event.before is not None:
        pre_images.append(
            {
                "key": "PreImage",
                "value": _entity(
                    table, event.before.id, event.before.data, typed=False, row_version=event.before.version
                ),
            }
        )
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    return {
        "BusinessUnitId": org.business_unit_id,
        "CorrelationId": correlation_id,
        "Depth": 1,
        "InitiatingUserAgent": "",
        "InitiatingUserAzureActiveDirectoryObjectId": "00000000-0000-0000-0000-000000000000",
        "InitiatingUserId": user_id,
        "InputParameters": [{"key": "Target", "value": target}],
        "IsExecutingOffline": False,
        "IsInTransaction": False,
        "IsOfflinePlayback": False,
        "IsolationMode": 1,
        "MessageName": event.message,
        "Mode": 1,
        "OperationCreatedOn": f"/Date({now_ms}+0000)/",
        "OperationId": str(uuid.uuid4()),
        "OrganizationId": org.organization_id,
        "OrganizationName": org.name,
        "OutputParameters": [{"key": "id", "value": record.id}] if event.message == "Create" else [],
        "OwningExtension": {
            "Id": reg.step_id,
            "KeyAttributes": [],
            "LogicalName": "sdkmessageprocessingstep",
            "Name": None,
            "RowVersion": None,
        },
        "ParentContext": None,
        "PostEntityImages": post_images,
        "PreEntityImages": pre_images,
        "PrimaryEntityId": record.id,
        "PrimaryEntityName": table.logical_name,
        "RequestId": str(uuid.uuid4()),
        "SecondaryEntityName": "none",
        "SharedVariables": [],
        "Stage": 40,
        "UserAzureActiveDirectoryObjectId": "00000000-0000-0000-0000-000000000000",
        "UserId": user_id,
    }


class WebhookDispatcher:
    def __init__(
        self,
        registrations: list[Registration],
        org: OrgInfo,
        stats: Stats,
        *,
        timeout_s: float = 60.0,
        concurrency: int = DEFAULT_DELIVERY_CONCURRENCY,
    ) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="webhook-delivery")
        self.registrations = registrations
        self.org = org
        self.stats = stats
        self.timeout_s = timeout_s
        self._local = threading.local()

    def schedule(self, events: list[ChangeEvent], tables: dict[str, Table], user_id: str) -> None:
        for event in events:
            table = tables.get(event.record.entity)
            if table is None:
                continue
            for reg in self.registrations:
                if reg.table == table.logical_name and event.message in reg.messages:
                    body = remote_execution_context(event, table, reg, self.org, user_id, str(uuid.uuid4()))
                    asyncio.get_running_loop().create_task(self._deliver(reg, table, body))

    async def _deliver(self, reg: Registration, table: Table, context: dict[str, Any]) -> None:
        payload = json.dumps(context).replace("/", "\\/")  # Dataverse escapes slashes (valid JSON)
        headers = {
            "Content-Type": "application/json",
            "x-ms-dynamics-organization": self.org.host,
            "x-ms-dynamics-entity-name": table.logical_name,
            "x-ms-dynamics-request-name": str(context["MessageName"]).lower(),
            "x-ms-correlation-request-id": str(context["CorrelationId"]),
            "x-request-id": str(uuid.uuid4()),
        }
        if len(payload.encode()) > MAX_PAYLOAD_BYTES:
            for key in STRIPPED_WHEN_TOO_LARGE:
                context.pop(key, None)
            payload = json.dumps(context).replace("/", "\\/")
            headers["x-ms-dynamics-msg-size-exceeded"] = "true"
        url = reg.url
        if reg.auth_type == "WebhookKey" and reg.auth_value:
            url += ("&" if urlsplit(url).query else "?") + urlencode({"code": reg.auth_value})
        elif reg.auth_type == "HttpQueryString" and isinstance(reg.auth_value, dict):
            url += ("&" if urlsplit(url).query else "?") + urlencode(reg.auth_value)
        elif reg.auth_type == "HttpHeader" and isinstance(reg.auth_value, dict):
            headers.update(reg.auth_value)
        loop = asyncio.get_running_loop()
        for attempt in (1, 2):
            status = await loop.run_in_executor(self._pool, self._post, url, headers, payload.encode())
            self.stats.bump(f"webhook deliveries {status}")
            if status not in RETRY_STATUSES or attempt == 2:
                return

    def _post(self, url: str, headers: dict[str, str], body: bytes) -> int:
        import requests

        session = getattr(self._local, "session", None)
        if session is None:  # one keep-alive connection per delivery thread: no TCP setup per event
            session = self._local.session = requests.Session()
        try:
            return session.post(url, data=body, headers=headers, timeout=self.timeout_s).status_code
        except requests.RequestException:
            return 0
