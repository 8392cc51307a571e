"""Simultaneous copies of one delivery have one effect (issue 15): 20 copies sent at once to the local host's
receivers, and N copies of one queue message processed at once, over real sockets (Azurite, the Dataverse
emulator). Counted in devstack's own state: the emulator's write requests and records, the blobs and the
claim rows in Azurite, the host's invocation log.

The claim logic itself, step by step against an in-memory table, is in tests/unit/test_webhook_atomicity.py."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections import Counter
from typing import Any

import pytest
import requests

from shared.composition import token_provider
from shared.dataverse.client import ClientOptions, DataverseClient
from shared.storage import Storage
from shared.storage.claims import _row_key, partition_key
from shared.webhooks.dedupe import DEDUPE_TABLE, nonce_scope, processed_scope
from shared.webhooks.ordering import APPLIED_TABLE, partition_of, row_of
from tests.devstack_process import DevstackProcess
from tests.e2e.test_webhooks_receivers import dataverse_url, key_header, post_signed, signed_headers
from tests.unit.test_webhook_atomicity import all_at_once

pytestmark = pytest.mark.e2e

COPIES = 20
SETTLE_TIMEOUT_S = 60
QUIET_S = 1.5  # no new invocation for this long: the host has nothing in flight
PROCESSOR_RESULT = re.compile(r"Executed 'Functions\.webhook_processor' \((\w+)")
WRITE_METHODS = ("POST ", "PATCH ", "PUT ", "DELETE ")
# The processor's log line of an account Update whose one handler ran (the hooks stack routes it to a blob).
APPLIED_LINE = "webhook_processed source=dataverse table=account message=Update effects=1"


def processor_runs(stack: DevstackProcess) -> Counter[str]:
    return Counter(PROCESSOR_RESULT.findall(stack.stdout_text()))


def wait_until_quiet(stack: DevstackProcess) -> None:
    """The event queue empty and no processor invocation for QUIET_S: earlier work is not counted as ours."""
    events = Storage(stack.env["AzureWebJobsStorage"]).queue("webhook-events")
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    seen = processor_runs(stack)
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = processor_runs(stack)
        if now != seen:
            seen, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since >= QUIET_S and events.get_queue_properties().approximate_message_count == 0:
            return
    raise AssertionError("the local host never went quiet")


def dataverse_writes(stack: DevstackProcess, entity_set: str) -> int:
    """Write requests the Dataverse emulator served on ``entity_set`` (any addressing, bulk or not)."""
    paths = stack.stats("dataverse")["paths"]
    return sum(
        sum(by_status.values())
        for path, by_status in paths.items()
        if path.startswith(WRITE_METHODS) and f"/{entity_set}" in path
    )


def claim_state(stack: DevstackProcess, scope: str, key: str) -> str:
    table = Storage(stack.env["AzureWebJobsStorage"]).table(DEDUPE_TABLE)
    return str(table.get_entity(partition_key(scope, _row_key(key)), _row_key(key))["State"])


def client_for(stack: DevstackProcess) -> DataverseClient:
    return DataverseClient(
        stack.env["DATAVERSE_URL"], token_provider(), options=ClientOptions(verify=stack.env["REQUESTS_CA_BUNDLE"])
    )


def accounts_numbered(client: DataverseClient, number: str) -> list[dict[str, Any]]:
    return list(client.query("accounts", filter=f"accountnumber eq '{number}'", select=["name", "accountnumber"]))


def wait_for_account(client: DataverseClient, number: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    rows = accounts_numbered(client, number)
    while not rows and time.monotonic() < deadline:
        time.sleep(0.2)
        rows = accounts_numbered(client, number)
    return rows


def test_twenty_simultaneous_copies_of_a_signed_delivery_are_accepted_once_with_one_effect(
    hooks_stack: DevstackProcess, erp_secret: str, app_env: Any
) -> None:
    stack = hooks_stack
    app_env(stack)
    client = client_for(stack)
    wait_until_quiet(stack)
    writes_before = dataverse_writes(stack, "accounts")
    number = f"AT{uuid.uuid4().hex[:10].upper()}"
    body = json.dumps({"customer_no": number, "name": "Atomic Replay Ltd"}).encode()
    headers = signed_headers(erp_secret, body)  # one captured delivery, sent 20 times at once

    answers = all_at_once(COPIES, lambda: post_signed(stack, body, headers))
    outcomes = Counter((a.status_code, json.dumps(a.json())) for a in answers)
    replay = (401, json.dumps({"error": "this nonce was already used (a replayed delivery)"}))
    assert outcomes == Counter({(202, json.dumps({"accepted": True})): 1, replay: COPIES - 1})

    rows = wait_for_account(client, number)
    assert [(r["accountnumber"], r["name"]) for r in rows] == [(number, "Atomic Replay Ltd")]
    wait_until_quiet(stack)
    assert dataverse_writes(stack, "accounts") - writes_before == 1  # one upsert: one message, one effect
    assert len(accounts_numbered(client, number)) == 1
    nonce = headers["x-webhook-nonce"]
    assert claim_state(stack, nonce_scope("erp"), nonce) == "accepted"
    assert claim_state(stack, processed_scope("erp"), nonce) == "done"


def account_blobs(stack: DevstackProcess, record_id: str) -> list[str]:
    from azure.storage.blob import BlobServiceClient

    container = BlobServiceClient.from_connection_string(stack.env["AzureWebJobsStorage"]).get_container_client(
        "webhook-events"
    )
    if not container.exists():
        return []
    return [b.name for b in container.list_blobs(name_starts_with=f"dataverse/account/{record_id}/")]


def applied_row(stack: DevstackProcess, table: str, record_id: str) -> dict[str, Any]:
    """The ordering guard's row of a Dataverse record, as Azurite holds it."""
    rows = Storage(stack.env["AzureWebJobsStorage"]).table(APPLIED_TABLE)
    return dict(rows.get_entity(partition_of("dataverse", table), row_of(record_id)))


def test_twenty_simultaneous_copies_of_a_dataverse_delivery_are_applied_once(hooks_stack: DevstackProcess) -> None:
    stack = hooks_stack
    record_id = str(uuid.uuid4())
    target = {"__type": "Entity:http://schemas.microsoft.com/xrm/2011/Contracts", "LogicalName": "account",
              "Id": record_id, "RowVersion": "41", "Attributes": [{"key": "name", "value": "Copies"}]}  # fmt: skip
    context = {
        "MessageName": "Update", "PrimaryEntityName": "account", "PrimaryEntityId": record_id,
        "RequestId": str(uuid.uuid4()), "OperationId": str(uuid.uuid4()),
        "InputParameters": [{"key": "Target", "value": target}],
    }  # fmt: skip
    data = json.dumps(context).encode()
    headers = key_header(stack, "dataverse_webhook") | {"Content-Type": "application/json"}
    wait_until_quiet(stack)
    runs_before = processor_runs(stack)
    applied_before = stack.stdout_text().count(APPLIED_LINE)

    answers = all_at_once(COPIES, lambda: requests.post(dataverse_url(stack), data=data, headers=headers, timeout=60))
    # Every copy is acknowledged and enqueued: the receiver looks nothing up (one storage call).
    assert Counter((a.status_code, json.dumps(a.json())) for a in answers) == Counter(
        {(202, json.dumps({"accepted": True})): COPIES}
    )
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while not account_blobs(stack, record_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    wait_until_quiet(stack)
    assert len(account_blobs(stack, record_id)) == 1
    # Each message ran to success (a copy behind the one applying may have been retried once), and the
    # handlers ran for one of them: the ordering guard found version 41 applied for the others.
    assert (processor_runs(stack) - runs_before)["Succeeded"] == COPIES
    assert stack.stdout_text().count(APPLIED_LINE) - applied_before == 1
    row = applied_row(stack, "account", record_id)
    assert (row["Version"], row["PendingKey"], row["Deleted"]) == ("41", "", False)


def test_copies_of_one_message_processed_at_once_write_to_dataverse_once(
    hooks_stack: DevstackProcess, app_env: Any
) -> None:
    from shared.webhooks.functions import handler_context
    from shared.webhooks.processor import EventInProgress, process
    from shared.webhooks.routes_file import routes

    stack = hooks_stack
    app_env(stack)
    ctx = handler_context()
    client = client_for(stack)
    number = f"AP{uuid.uuid4().hex[:10].upper()}"
    message = {"source": "erp", "key": uuid.uuid4().hex, "payload": {"customer_no": number, "name": "Once Ltd"}}
    ctx.schema("account")  # read once up front, so that the copies race on the claim, not on metadata
    wait_until_quiet(stack)
    writes_before = dataverse_writes(stack, "accounts")

    results = all_at_once(COPIES, lambda: process(dict(message), routes(), ctx))
    failures = [r for r in results if isinstance(r, Exception) and not isinstance(r, EventInProgress)]
    assert failures == []
    did = [r for r in results if isinstance(r, list) and r]
    assert len(did) == 1, results
    assert did[0][0].startswith("created account")
    # The others were skipped as done, or (if the winner was slow) asked the queue to retry: never ran.
    assert all(r == [] or isinstance(r, EventInProgress) for r in results if r is not did[0])

    assert dataverse_writes(stack, "accounts") - writes_before == 1
    assert [(r["accountnumber"], r["name"]) for r in accounts_numbered(client, number)] == [(number, "Once Ltd")]
    assert claim_state(stack, processed_scope("erp"), str(message["key"])) == "done"
    # A copy arriving later (a queue redelivery, a replay) is skipped too.
    assert process(dict(message), routes(), ctx) == []
    assert dataverse_writes(stack, "accounts") - writes_before == 1
