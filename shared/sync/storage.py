"""Storage for syncs and webhooks: streamed blob sources, processed-file records, watermarks, dead letters,
leases, queues (with the message size check), single blobs.

One :class:`SyncStorage` per worker wraps the blob, table and queue clients of ``AzureWebJobsStorage``
(a connection string locally; in Azure, ``AzureWebJobsStorage__accountName`` with the managed identity).
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import json
import logging
import math
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from shared.config import read_int
from shared.logging import log_event
from shared.settings_registry import EnvVars

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.data.tables import TableServiceClient
    from azure.storage.blob import BlobServiceClient

logger = logging.getLogger(__name__)

STATE_TABLE = "syncstate"  # watermarks and delta links, one row per job
FILES_TABLE = "syncfiles"  # processed source files (name + ETag), so reruns skip them
RUNS_TABLE = "syncruns"  # run reports
CHUNKS_TABLE = "syncchunks"  # fan-out chunk reports, one partition per run
CHUNK_QUEUE = "sync-chunks"  # fan-out work items
DEAD_LETTER_CONTAINER = "sync-deadletters"
LEASE_CONTAINER = "sync-leases"
MIN_LEASE_RENEW_S = 5  # never renew more often than this, however short the lease
DEAD_LETTER_FLUSH_LINES = 500
QUEUE_MESSAGE_LIMIT_BYTES = 64 * 1024  # Azure Storage's limit on one message as stored (here: base64 text)
QUEUE_MESSAGE_MARGIN_BYTES = 1024  # headroom below the limit, so that no message sits at its edge
_KEY_UNSAFE = re.compile(r"[/\\#?\x00-\x1f\x7f]")


def lease_duration_s() -> int:
    """SYNC_LEASE_DURATION_S (15-60 s, what Blob Storage accepts), read when a lease is taken: a bad value is
    a ConfigError naming the setting. The lease is renewed while the run lasts."""
    return read_int(EnvVars.SYNC_LEASE_DURATION_S)


def lease_renew_s(duration_s: int) -> int:
    """Renew every third of the lease, so a failed renewal is tried again before the lease lapses; a crashed
    run frees the job within one lease duration."""
    return max(MIN_LEASE_RENEW_S, duration_s // 3)


def queue_message_fits(text: str) -> bool:
    """Whether ``text`` fits in one queue message once base64-encoded (as :meth:`SyncStorage.enqueue_text`
    sends it: the Functions queue trigger expects base64), with the margin left."""
    encoded = 4 * math.ceil(len(text.encode("utf-8")) / 3)
    return encoded <= QUEUE_MESSAGE_LIMIT_BYTES - QUEUE_MESSAGE_MARGIN_BYTES


def table_key(text: str) -> str:
    """Table Storage forbids / \\ # ? and control characters in keys."""
    return _KEY_UNSAFE.sub("_", text)


@dataclass(frozen=True)
class QueuedMessage:
    """What the queue answered to a send: enough to withdraw that very message while nobody has received
    it (a receive changes the pop receipt, and then the withdrawal fails harmlessly)."""

    queue: str
    message_id: str
    pop_receipt: str


@dataclass(frozen=True)
class SourceRow:
    blob: str
    etag: str
    line: int  # 1-based data line (after the header)
    values: dict[str, Any]


class SyncStorage:
    def __init__(
        self,
        connection_string: str | None = None,
        *,
        account_name: str | None = None,
        credential: TokenCredential | None = None,
    ) -> None:
        if not connection_string and not account_name:
            raise ValueError("AzureWebJobsStorage (connection string) or AzureWebJobsStorage__accountName is required")
        self._connection_string = connection_string
        self._account_name = account_name
        self._credential = credential
        self._blob: BlobServiceClient | None = None
        self._tables: TableServiceClient | None = None
        self._lock = threading.Lock()
        self._known_containers: set[str] = set()
        self._queues: dict[str, Any] = {}
        self._table_clients: dict[str, Any] = {}

    def blob_service(self) -> BlobServiceClient:
        from azure.storage.blob import BlobServiceClient

        with self._lock:
            if self._blob is None:
                if self._connection_string:
                    self._blob = BlobServiceClient.from_connection_string(self._connection_string)
                else:
                    self._blob = BlobServiceClient(
                        f"https://{self._account_name}.blob.core.windows.net", self._credential
                    )
            return self._blob

    def table_service(self) -> TableServiceClient:
        from azure.data.tables import TableServiceClient

        with self._lock:
            if self._tables is None:
                if self._connection_string:
                    self._tables = TableServiceClient.from_connection_string(self._connection_string)
                else:
                    self._tables = TableServiceClient(
                        f"https://{self._account_name}.table.core.windows.net", credential=self._credential
                    )
            return self._tables

    def table(self, name: str) -> Any:
        """A client for the table, created on first use and kept (dedupe checks are on the webhook hot path)."""
        with self._lock:
            client = self._table_clients.get(name)
        if client is None:
            service = self.table_service()
            service.create_table_if_not_exists(name)
            client = service.get_table_client(name)
            with self._lock:
                self._table_clients[name] = client
        return client

    def container(self, name: str) -> Any:
        """The container, created on first use. Concurrent creators race: losing it is fine."""
        from azure.core.exceptions import ResourceExistsError

        container = self.blob_service().get_container_client(name)
        if name not in self._known_containers:
            with contextlib.suppress(ResourceExistsError):
                container.create_container()
            self._known_containers.add(name)
        return container

    # -- single blobs ------------------------------------------------------------------------------------
    def put_blob(self, container: str, name: str, data: bytes) -> None:
        """Write (or overwrite) one blob: writers of the same name write the same content."""
        self.container(container).upload_blob(name, data, overwrite=True)

    def get_blob(self, container: str, name: str) -> bytes | None:
        """One blob's content, or None when there is no such blob."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return bytes(self.container(container).download_blob(name).readall())
        except ResourceNotFoundError:
            return None

    def delete_blob(self, container: str, name: str) -> bool:
        """Delete one blob; False when it was already gone."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self.container(container).delete_blob(name)
        except ResourceNotFoundError:
            return False
        return True

    # -- sources ---------------------------------------------------------------------------------------
    def list_source_blobs(self, container: str, prefix: str) -> list[tuple[str, str]]:
        """(name, etag) of the source files, oldest first, so files replay in arrival order."""
        blobs = list(self.container(container).list_blobs(name_starts_with=prefix or None))
        blobs.sort(key=lambda b: (b.last_modified, b.name))
        return [(b.name, b.etag) for b in blobs]

    def _lines(self, container: str, blob: str, encoding: str) -> Iterator[str]:
        """Decode a blob chunk by chunk (never the whole file in memory), yielding lines with their ends."""
        decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
        pending = ""
        for chunk in self.container(container).download_blob(blob).chunks():
            pending += decoder.decode(chunk)
            *complete, pending = pending.splitlines(keepends=True) or [""]
            if pending.endswith(("\n", "\r")):
                complete.append(pending)
                pending = ""
            yield from complete
        pending += decoder.decode(b"", final=True)
        if pending:
            yield pending

    def count_lines(self, container: str, blob: str) -> int:
        """Line ends in a blob (a last line without one counts too), streamed: an upper bound on its records
        that costs a byte scan instead of a CSV parse."""
        lines, last = 0, b"\n"
        for chunk in self.container(container).download_blob(blob).chunks():
            lines += chunk.count(b"\n")
            last = chunk[-1:] or last
        return lines + (last != b"\n")

    def read_csv(
        self, container: str, blob: str, etag: str, *, encoding: str, delimiter: str, headers: dict[str, str]
    ) -> Iterator[SourceRow]:
        reader = csv.DictReader(self._lines(container, blob, encoding), delimiter=delimiter)
        for line, row in enumerate(reader, start=1):
            values = {headers.get(k, k): v for k, v in row.items() if k is not None}
            yield SourceRow(blob, etag, line, values)

    def read_jsonl(self, container: str, blob: str, etag: str, *, encoding: str) -> Iterator[SourceRow]:
        for line, text in enumerate(self._lines(container, blob, encoding), start=1):
            if text.strip():
                try:
                    values = json.loads(text)
                except ValueError as exc:
                    values = {"__invalid_json__": text.strip()[:500], "__error__": str(exc)}
                yield SourceRow(blob, etag, line, values if isinstance(values, dict) else {"__value__": values})

    # -- processed files, watermarks, delta links ------------------------------------------------------
    def processed(self, job: str) -> dict[str, str]:
        table = self.table(FILES_TABLE)
        return {e["BlobName"]: e["ETag"] for e in table.query_entities(f"PartitionKey eq '{table_key(job)}'")}

    def mark_processed(self, job: str, blob: str, etag: str) -> None:
        self.table(FILES_TABLE).upsert_entity(
            {
                "PartitionKey": table_key(job),
                "RowKey": table_key(blob),
                "BlobName": blob,
                "ETag": etag,
                "ProcessedAt": _now(),
            }
        )

    def get_state(self, job: str, name: str) -> str | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return str(self.table(STATE_TABLE).get_entity(table_key(job), name)["Value"])
        except ResourceNotFoundError:
            return None

    def set_state(self, job: str, name: str, value: str) -> None:
        self.table(STATE_TABLE).upsert_entity(
            {"PartitionKey": table_key(job), "RowKey": name, "Value": value, "UpdatedAt": _now()}
        )

    # -- run reports --------------------------------------------------------------------------------------
    def save_report(self, job: str, run_id: str, report: dict[str, Any]) -> None:
        entity = {"PartitionKey": table_key(job), "RowKey": run_id, "Report": json.dumps(report)}
        self.table(RUNS_TABLE).upsert_entity(entity)

    def recent_reports(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = [json.loads(e["Report"]) for e in self.table(RUNS_TABLE).list_entities()]
        rows.sort(key=lambda r: r.get("started_at", ""), reverse=True)
        return rows[:limit]

    # -- fan-out -----------------------------------------------------------------------------------------
    def _queue(self, name: str) -> Any:
        """A client for the queue, created on first use and kept (enqueueing is on the webhook hot path)."""
        from azure.core.exceptions import ResourceExistsError
        from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

        with self._lock:
            client = self._queues.get(name)
            if client is not None:
                return client
        # The Functions queue trigger expects base64 message text.
        policies: dict[str, Any] = {
            "message_encode_policy": TextBase64EncodePolicy(),
            "message_decode_policy": TextBase64DecodePolicy(),
        }
        if self._connection_string:
            client = QueueClient.from_connection_string(self._connection_string, name, **policies)
        else:
            client = QueueClient(
                f"https://{self._account_name}.queue.core.windows.net", name, credential=self._credential, **policies
            )
        with contextlib.suppress(ResourceExistsError):
            client.create_queue()
        with self._lock:
            self._queues[name] = client
        return client

    def enqueue(self, queue: str, message: dict[str, Any]) -> QueuedMessage:
        return self.enqueue_text(queue, json.dumps(message))

    def enqueue_text(self, queue: str, text: str) -> QueuedMessage:
        """Send text already serialised (callers that checked :func:`queue_message_fits` keep one dump)."""
        sent = self._queue(queue).send_message(text)
        return QueuedMessage(queue, str(sent.id), str(sent.pop_receipt))

    def withdraw(self, queued: QueuedMessage) -> bool:
        """Delete a message this caller sent, unless it was received meanwhile; True when it was deleted."""
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        try:
            self._queue(queued.queue).delete_message(queued.message_id, queued.pop_receipt)
        except ResourceNotFoundError:  # MessageNotFound: already gone
            return False
        except HttpResponseError as exc:
            if getattr(exc, "error_code", None) == "PopReceiptMismatch":  # received meanwhile: its receiver has it now
                return False
            raise
        return True

    def move_messages(self, source: str, target: str) -> int:
        """Move every message from one queue to another (replaying a poison queue); returns the count.
        Each message is sent before it is deleted: a crash in between duplicates, never loses."""
        poison = self._queue(source)
        moved = 0
        while True:
            batch = list(poison.receive_messages(max_messages=32, visibility_timeout=60))
            if not batch:
                return moved
            for message in batch:
                self.enqueue(target, json.loads(message.content))
                poison.delete_message(message)
                moved += 1

    def save_chunk_report(self, job: str, run_id: str, chunk_id: str, report: dict[str, Any]) -> None:
        entity = {"PartitionKey": table_key(f"{job}|{run_id}"), "RowKey": chunk_id, "Report": json.dumps(report)}
        self.table(CHUNKS_TABLE).upsert_entity(entity)

    def chunk_reports(self, job: str, run_id: str) -> list[dict[str, Any]]:
        query = f"PartitionKey eq '{table_key(f'{job}|{run_id}')}'"
        return [json.loads(e["Report"]) for e in self.table(CHUNKS_TABLE).query_entities(query)]

    def get_report(self, job: str, run_id: str) -> dict[str, Any] | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return dict(json.loads(self.table(RUNS_TABLE).get_entity(table_key(job), run_id)["Report"]))
        except ResourceNotFoundError:
            return None

    # -- dead letters -----------------------------------------------------------------------------------------
    def dead_letters(self, job: str, run_id: str) -> DeadLetterWriter:
        return DeadLetterWriter(self.container(DEAD_LETTER_CONTAINER), f"{job}/{run_id}.jsonl")

    def read_dead_letters(self, job: str, run_id: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        container = self.container(DEAD_LETTER_CONTAINER)
        prefix = f"{job}/{run_id}.jsonl" if run_id else f"{job}/"
        for blob in container.list_blobs(name_starts_with=prefix):
            for text in container.download_blob(blob.name).readall().decode("utf-8").splitlines():
                if text.strip():
                    yield blob.name, json.loads(text)

    def remove_dead_letters(self, blobs: list[str]) -> None:
        container = self.container(DEAD_LETTER_CONTAINER)
        for blob in blobs:
            container.delete_blob(blob)

    # -- leases ---------------------------------------------------------------------------------------------------
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


class DeadLetterWriter:
    """Appends dead letters to ``<job>/<run>.jsonl`` (an append blob), buffered, flushed on close."""

    def __init__(self, container: Any, name: str) -> None:
        self.blob = container.get_blob_client(name)
        self.name = name
        self.count = 0
        self._buffer: list[str] = []
        self._created = False
        self._lock = threading.Lock()

    def add(
        self,
        record: dict[str, Any],
        *,
        code: str,
        reason: str,
        field: str | None = None,
        source: dict[str, Any] | None = None,
    ) -> None:
        line = json.dumps(
            {"record": record, "code": code, "reason": reason, "field": field, "source": source, "at": _now()},
            default=str,
        )
        with self._lock:
            self._buffer.append(line)
            self.count += 1
            if len(self._buffer) >= DEAD_LETTER_FLUSH_LINES:
                self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        if not self._created:
            self.blob.create_append_blob()
            self._created = True
        self.blob.append_block(("\n".join(self._buffer) + "\n").encode("utf-8"))
        self._buffer.clear()

    def close(self) -> None:
        with self._lock:
            self._flush()


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


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
