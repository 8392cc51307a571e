"""Queues: sending (with the message size check), withdrawing a message this caller sent, and moving a
poison queue back."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from shared.storage.account import StorageAccount

QUEUE_MESSAGE_LIMIT_BYTES = 64 * 1024  # Azure Storage's limit on one message as stored (here: base64 text)
QUEUE_MESSAGE_MARGIN_BYTES = 1024  # headroom below the limit, so that no message sits at its edge


def queue_message_fits(text: str) -> bool:
    """Whether ``text`` fits in one queue message once base64-encoded (as :meth:`Queues.enqueue_text`
    sends it: the Functions queue trigger expects base64), with the margin left."""
    encoded = 4 * math.ceil(len(text.encode("utf-8")) / 3)
    return encoded <= QUEUE_MESSAGE_LIMIT_BYTES - QUEUE_MESSAGE_MARGIN_BYTES


@dataclass(frozen=True)
class QueuedMessage:
    """What the queue answered to a send: enough to withdraw that very message while nobody has received
    it (a receive changes the pop receipt, and then the withdrawal fails harmlessly)."""

    queue: str
    message_id: str
    pop_receipt: str


class Queues(StorageAccount):
    def enqueue(self, queue: str, message: dict[str, Any]) -> QueuedMessage:
        return self.enqueue_text(queue, json.dumps(message))

    def enqueue_text(self, queue: str, text: str) -> QueuedMessage:
        """Send text already serialised (callers that checked :func:`queue_message_fits` keep one dump)."""
        sent = self.queue(queue).send_message(text)
        return QueuedMessage(queue, str(sent.id), str(sent.pop_receipt))

    def withdraw(self, queued: QueuedMessage) -> bool:
        """Delete a message this caller sent, unless it was received meanwhile; True when it was deleted."""
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        try:
            self.queue(queued.queue).delete_message(queued.message_id, queued.pop_receipt)
        except ResourceNotFoundError:  # MessageNotFound: already gone
            return False
        except HttpResponseError as exc:
            if getattr(exc, "error_code", None) == "PopReceiptMismatch":  # received meanwhile: its receiver has it now
                return False
            raise
        return True

    def backlog(self, queue: str) -> int:
        """The queue's approximate message count (Azure Storage's own figure, one call); 0 for a queue that
        does not exist yet (nothing was ever sent to it)."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return int(self.queue(queue).get_queue_properties().approximate_message_count or 0)
        except ResourceNotFoundError:
            return 0

    def move_messages(self, source: str, target: str) -> int:
        """Move every message from one queue to another (replaying a poison queue); returns the count.
        Each message is sent before it is deleted: a crash in between duplicates, never loses."""
        poison = self.queue(source)
        moved = 0
        while True:
            batch = list(poison.receive_messages(max_messages=32, visibility_timeout=60))
            if not batch:
                return moved
            for message in batch:
                self.enqueue(target, json.loads(message.content))
                poison.delete_message(message)
                moved += 1
