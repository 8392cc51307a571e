"""The storage account: blob, table and queue clients of ``AzureWebJobsStorage`` (a connection string
locally; in Azure, ``AzureWebJobsStorage__accountName`` with the managed identity), created on first use
and kept, and the single-blob operations every concern uses."""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.data.tables import TableServiceClient
    from azure.storage.blob import BlobServiceClient

_KEY_UNSAFE = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")


def table_key(text: str) -> str:
    """Table Storage forbids / \\ # ? and the control characters U+0000-U+001F and U+007F-U+009F in keys."""
    return _KEY_UNSAFE.sub("_", text)


def now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class StorageAccount:
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

    def list_source_blobs(self, container: str, prefix: str) -> list[tuple[str, str]]:
        """(name, etag) of the source files, oldest first, so files replay in arrival order."""
        blobs = list(self.container(container).list_blobs(name_starts_with=prefix or None))
        blobs.sort(key=lambda b: (b.last_modified, b.name))
        return [(b.name, b.etag) for b in blobs]

    def blob_chunks(self, container: str, blob: str) -> Iterator[bytes]:
        """A blob's content as it streams in, never the whole file in memory."""
        yield from self.container(container).download_blob(blob).chunks()

    def queue(self, name: str) -> Any:
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
