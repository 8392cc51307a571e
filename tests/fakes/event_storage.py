"""In-memory stand-ins for what the webhook queue processor (shared.webhooks.processor) uses: its storage
(``table``, ``container``, single blobs, the event queue) and its Dataverse client (``get``, ``upsert``,
and the metadata reads behind ``shared.dataverse.schema.TableMetadata``).

Tables are :class:`~tests.fakes.tables.FakeTableClient`, so the claims go through the SDK's errors and
ETags. A blob container refuses an existing name without ``overwrite=True`` as the SDK does. The client
answers a missing record with None and a missing table's metadata with a 404 ``DataverseError``, as
``DataverseClient`` does; ``fail_next`` makes a call raise what a test gives it.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from azure.core.exceptions import ResourceExistsError

from shared.dataverse.schema import TableSchema
from shared.storage.queues import QueuedMessage, queue_message_fits
from tests.fakes.tables import FakeTableClient, FakeTables

__all__ = ["FakeContainer", "FakeEventDataverse", "FakeEventStorage", "Upserted", "entity_definition"]


class FakeContainer:
    """One blob container, over its storage's blobs; ``fail_next`` makes the next upload raise."""

    def __init__(self, storage: FakeEventStorage, name: str) -> None:
        self._storage, self.name = storage, name
        self._faults: list[BaseException] = []

    def fail_next(self, error: BaseException) -> None:
        self._faults.append(error)

    def upload_blob(self, name: str, data: bytes, overwrite: bool = False, **kwargs: Any) -> dict[str, Any]:
        if self._faults:
            raise self._faults.pop(0)
        with self._storage.lock:
            if not overwrite and (self.name, name) in self._storage.blobs:
                raise ResourceExistsError("BlobAlreadyExists")
            self._storage.blobs[(self.name, name)] = bytes(data)
            self._storage.uploads.append((self.name, name))
        return {"etag": uuid.uuid4().hex}


@dataclass
class FakeEventStorage:
    """``ctx.storage`` of the processor. ``blobs`` holds every container's blobs by (container, name);
    ``queue`` the event messages as sent (text), in order; ``uploads`` every upload, overwrites included."""

    tables: FakeTables = field(default_factory=FakeTables)
    blobs: dict[tuple[str, str], bytes] = field(default_factory=dict)
    uploads: list[tuple[str, str]] = field(default_factory=list)
    queue: list[QueuedMessage] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)  # message id -> text
    lock: threading.RLock = field(default_factory=threading.RLock)
    _containers: dict[str, FakeContainer] = field(default_factory=dict)

    def table(self, name: str) -> FakeTableClient:
        return self.tables.table(name)

    def container(self, name: str) -> FakeContainer:
        with self.lock:
            return self._containers.setdefault(name, FakeContainer(self, name))

    def in_container(self, container: str) -> dict[str, bytes]:
        """The blobs of one container by name (for assertions)."""
        with self.lock:
            return {n: d for (c, n), d in self.blobs.items() if c == container}

    def put_blob(self, container: str, name: str, data: bytes) -> None:
        self.container(container).upload_blob(name, data, overwrite=True)

    def get_blob(self, container: str, name: str) -> bytes | None:
        with self.lock:
            return self.blobs.get((container, name))

    def delete_blob(self, container: str, name: str) -> bool:
        with self.lock:
            return self.blobs.pop((container, name), None) is not None

    def enqueue(self, queue: str, message: dict[str, Any]) -> QueuedMessage:
        return self.enqueue_text(queue, json.dumps(message))

    def enqueue_text(self, queue: str, text: str) -> QueuedMessage:
        if not queue_message_fits(text):  # the service refuses it (413): callers must check first
            raise ValueError("the message is larger than a queue message may be")
        sent = QueuedMessage(queue, uuid.uuid4().hex, uuid.uuid4().hex)
        with self.lock:
            self.queue.append(sent)
            self.texts[sent.message_id] = text
        return sent

    def messages(self, queue: str) -> list[dict[str, Any]]:
        """The messages on ``queue``, decoded, in order."""
        with self.lock:
            return [json.loads(self.texts[m.message_id]) for m in self.queue if m.queue == queue]

    def withdraw(self, queued: QueuedMessage) -> bool:
        with self.lock:
            if queued not in self.queue:
                return False
            self.queue.remove(queued)
            del self.texts[queued.message_id]
        return True


@dataclass(frozen=True)
class Upserted:
    entity_set: str
    key: Mapping[str, Any] | str
    body: Mapping[str, Any]
    table: str | None


@dataclass
class _Answer:
    """What ``DataverseClient.request`` returns, as far as ``TableMetadata`` reads it."""

    body: Any
    status_code: int = 200

    def json(self) -> Any:
        return self.body


_DEFINITION = re.compile(r"EntityDefinitions\(LogicalName='([^']*)'\)(/.*)?")


def entity_definition(schema: TableSchema, entity_set: str) -> dict[str, Any]:
    """``EntityDefinitions(LogicalName=…)?$expand=Attributes`` as Dataverse answers it, for ``schema``."""
    attributes = [
        {
            "LogicalName": column.name,
            "AttributeType": column.type,
            "MaxLength": column.max_length,
            "RequiredLevel": {"Value": "ApplicationRequired" if column.required else "None"},
        }
        for column in schema.columns.values()
    ]
    return {"LogicalName": schema.logical_name, "EntitySetName": entity_set, "Attributes": attributes}


class FakeEventDataverse:
    """The Dataverse client as the processor's handlers use it. ``records`` by (entity set, id); ``tables``
    the metadata of each known table (see :func:`entity_definition`). Every call is recorded in ``calls``
    as (operation, entity set or path); ``upserts`` keeps what each upsert sent."""

    def __init__(self, *definitions: Mapping[str, Any]) -> None:
        self.tables: dict[str, Mapping[str, Any]] = {str(d["LogicalName"]): d for d in definitions}
        self.records: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self.upserts: list[Upserted] = []
        self._faults: dict[str, list[BaseException]] = {}
        self._lock = threading.Lock()

    def fail_next(self, operation: str, error: BaseException) -> None:
        """Make the next ``operation`` (``get``, ``upsert`` or ``request``) raise ``error``."""
        self._faults.setdefault(operation, []).append(error)

    def _enter(self, operation: str, target: str) -> None:
        with self._lock:
            self.calls.append((operation, target))
            faults = self._faults.get(operation)
            if faults:
                raise faults.pop(0)

    def request(self, method: str, path: str, *, params: Mapping[str, str] | None = None, **kwargs: Any) -> _Answer:
        from shared.errors import DataverseError

        self._enter("request", path)
        match = _DEFINITION.fullmatch(path)
        if method != "GET" or match is None:
            raise AssertionError(f"the fake answers metadata reads only, not {method} {path}")
        definition = self.tables.get(match[1])
        if definition is None:  # what the Web API answers for a logical name it does not know
            raise DataverseError(404, "0x80040217", f"Could not find entity with name {match[1]!r}")
        if match[2]:  # the picklist cast: no choice columns in the fake's tables
            return _Answer({"value": []})
        return _Answer(dict(definition))

    def get(
        self, entity_set: str, key: Mapping[str, Any] | str, *, select: Any = (), table: str | None = None
    ) -> dict[str, Any] | None:
        self._enter("get", entity_set)
        record = self.records.get((entity_set, str(key)))
        if record is None:
            return None  # the real client turns a 404 into None
        return {"@odata.etag": 'W/"1"', **record}

    def upsert(
        self, entity_set: str, key: Mapping[str, Any] | str, body: Mapping[str, Any], *, table: str | None = None
    ) -> bool:
        self._enter("upsert", entity_set)
        record_key = json.dumps(key, sort_keys=True) if isinstance(key, Mapping) else key
        with self._lock:
            created = (entity_set, record_key) not in self.records
            self.records[(entity_set, record_key)] = {**self.records.get((entity_set, record_key), {}), **body}
            self.upserts.append(Upserted(entity_set, dict(key) if isinstance(key, Mapping) else key, dict(body), table))
        return created
