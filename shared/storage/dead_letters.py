"""Dead letters of sync runs: one JSON Lines append blob per run (``<job>/<run>.jsonl``), each line the
record, a code, a reason naming the field, and where the record came from."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

from shared.storage.account import StorageAccount, now_text

DEAD_LETTER_CONTAINER = "sync-deadletters"
DEAD_LETTER_FLUSH_LINES = 500


class DeadLetters(StorageAccount):
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
            {"record": record, "code": code, "reason": reason, "field": field, "source": source, "at": now_text()},
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
