"""Deliveries too large for a queue message (claim check, issue 15): a Dataverse context up to the 256 KB
Dataverse sends is acknowledged, travels as a blob in ``webhook-claims`` with a reference on the queue, is
processed, and leaves no blob behind. Checked through the local host, in Azurite and the Dataverse
emulator."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
import requests
from azure.storage.blob import BlobServiceClient

from shared.storage.queues import queue_message_fits
from shared.webhooks.context import parse_remote_execution_context
from shared.webhooks.dedupe import processed_scope
from shared.webhooks.processor import CLAIM_CONTAINER, _event_hash
from tests.devstack_process import DevstackProcess
from tests.e2e.test_webhook_atomicity import (
    accounts_numbered,
    applied_row,
    claim_state,
    client_for,
    wait_for_account,
)
from tests.e2e.test_webhooks_receivers import dataverse_url, key_header, post_signed, signed_headers

pytestmark = pytest.mark.e2e

DESCRIPTION_CHARS = 200_000  # a 200 KB context: under Dataverse's 256 KB, far over a queue message
SETTLE_TIMEOUT_S = 60
C = "http://schemas.microsoft.com/xrm/2011/Contracts"


def container(stack: DevstackProcess, name: str) -> Any:
    return BlobServiceClient.from_connection_string(stack.env["AzureWebJobsStorage"]).get_container_client(name)


def claim_blobs(stack: DevstackProcess, source: str, key: str) -> list[str]:
    """The claim-check blobs of one event's copies (each copy's blob name starts with the event's hash)."""
    claims = container(stack, CLAIM_CONTAINER)
    if not claims.exists():
        return []
    return [b.name for b in claims.list_blobs(name_starts_with=_event_hash(source, key))]


def wait_until(condition: Any, timeout_s: float = SETTLE_TIMEOUT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.2)
    return bool(condition())


def effect(stack: DevstackProcess, record_id: str) -> dict[str, Any] | None:
    events = container(stack, "webhook-events")
    if not events.exists():
        return None
    for blob in events.list_blobs(name_starts_with=f"dataverse/account/{record_id}/"):
        return dict(json.loads(events.download_blob(blob.name).readall()))
    return None


def test_a_200_kb_dataverse_delivery_is_acknowledged_processed_and_its_blob_removed(
    hooks_stack: DevstackProcess,
) -> None:
    stack = hooks_stack
    record_id = str(uuid.uuid4())
    description = "d" * DESCRIPTION_CHARS
    target = {
        "__type": f"Entity:{C}", "Id": record_id, "LogicalName": "account", "RowVersion": "12",
        "Attributes": [{"key": "name", "value": "Big Context Ltd"}, {"key": "description", "value": description}],
    }  # fmt: skip
    context = {
        "MessageName": "Update", "PrimaryEntityName": "account", "PrimaryEntityId": record_id,
        "RequestId": str(uuid.uuid4()), "OperationId": str(uuid.uuid4()),
        "InputParameters": [{"key": "Target", "value": target}],
    }  # fmt: skip
    data = json.dumps(context).encode()
    assert 200_000 < len(data) < 256_000
    assert not queue_message_fits(data.decode())  # as a queue message it could never be sent
    key = parse_remote_execution_context(json.dumps(context).encode()).dedupe_key  # as the receiver keys it
    headers = key_header(stack, "dataverse_webhook") | {"Content-Type": "application/json"}

    answer = requests.post(dataverse_url(stack), data=data, headers=headers, timeout=60)
    assert (answer.status_code, answer.json()) == (202, {"accepted": True})
    assert wait_until(lambda: effect(stack, record_id) is not None)
    done = effect(stack, record_id)
    assert done is not None
    assert done["key"] == key
    assert done["event"]["attributes"] == {"name": "Big Context Ltd", "description": description}
    assert wait_until(lambda: applied_row(stack, "account", record_id)["Version"] == "12")
    assert wait_until(lambda: claim_blobs(stack, "dataverse", key) == [])
    # Dataverse's retry of the same delivery is enqueued, dropped as a duplicate by the ordering guard, and
    # leaves no blob either; the effect stays the first copy's.
    again = requests.post(dataverse_url(stack), data=data, headers=headers, timeout=60)
    assert (again.status_code, again.json()) == (202, {"accepted": True})
    assert wait_until(lambda: claim_blobs(stack, "dataverse", key) == [])
    assert effect(stack, record_id) == done


def test_a_large_signed_delivery_is_upserted_and_its_blob_removed(
    hooks_stack: DevstackProcess,
    erp_secret: str,
    app_env: Any,
) -> None:
    stack = hooks_stack
    app_env(stack)
    client = client_for(stack)
    number = f"CC{uuid.uuid4().hex[:10].upper()}"
    body = json.dumps({"customer_no": number, "name": "Claim Check Ltd", "notes": "n" * 150_000}).encode()
    headers = signed_headers(erp_secret, body)
    answer = post_signed(stack, body, headers)
    assert (answer.status_code, answer.json()) == (202, {"accepted": True})
    rows = wait_for_account(client, number)
    assert [(r["accountnumber"], r["name"]) for r in rows] == [(number, "Claim Check Ltd")]
    nonce = headers["x-webhook-nonce"]
    assert wait_until(lambda: claim_state(stack, processed_scope("erp"), nonce) == "done")
    assert wait_until(lambda: claim_blobs(stack, "erp", nonce) == [])
    assert len(accounts_numbered(client, number)) == 1
