"""Webhook round trip on devstack: the emulator's service endpoint -> the local host's receiver -> queue ->
processor -> one blob per applied event. The sink ends at each record's latest state, changes are applied in
version order, and repeated deliveries change nothing."""

from __future__ import annotations

import itertools
import json
import time
import uuid
from typing import Any

import pytest
import requests

from shared.composition import token_provider
from shared.dataverse.client import ClientOptions, DataverseClient
from tests.devstack_process import DevstackProcess
from tests.e2e.test_webhook_atomicity import wait_until_quiet

pytestmark = pytest.mark.e2e


def effects(stack: DevstackProcess, record_ids: set[str]) -> list[dict[str, Any]]:
    from azure.storage.blob import BlobServiceClient

    container = BlobServiceClient.from_connection_string(stack.env["AzureWebJobsStorage"]).get_container_client(
        "webhook-events"
    )
    if not container.exists():
        return []
    found = []
    for blob in container.list_blobs(name_starts_with="dataverse/account/"):
        if blob.name.split("/")[2] in record_ids:
            found.append(json.loads(container.download_blob(blob.name).readall()))
    return found


def wait_for(stack: DevstackProcess, record_ids: set[str], count: int, timeout_s: float = 60) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    found = effects(stack, record_ids)
    while len(found) < count and time.monotonic() < deadline:
        time.sleep(0.3)
        found = effects(stack, record_ids)
    return found


def latest_by_record(found: list[dict[str, Any]]) -> dict[str, int]:
    """Each record's state in the sink: the version of the effect applied last."""
    latest: dict[str, tuple[float, int]] = {}
    for effect in found:
        event = effect["event"]
        applied = (float(effect["applied_at"]), int(event["row_version"]))
        latest[event["record_id"]] = max(latest.get(event["record_id"], applied), applied)
    return {record: version for record, (_, version) in latest.items()}


def applied_in_order(found: list[dict[str, Any]]) -> bool:
    """Per record, effects sorted by when they were applied have strictly increasing versions."""
    by_record: dict[str, list[tuple[float, int]]] = {}
    for effect in found:
        event = effect["event"]
        by_record.setdefault(event["record_id"], []).append((float(effect["applied_at"]), int(event["row_version"])))
    return all(all(a[1] < b[1] for a, b in itertools.pairwise(sorted(applied))) for applied in by_record.values())


def store_versions(client: DataverseClient, ids: set[str]) -> dict[str, int]:
    found = {}
    for record_id in ids:
        record = client.get("accounts", record_id, select=["versionnumber"])
        assert record is not None
        found[record_id] = int(record["versionnumber"])
    return found


def wait_for_state(stack: DevstackProcess, ids: set[str], want: dict[str, int], timeout_s: float = 60) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    found = effects(stack, ids)
    while latest_by_record(found) != want and time.monotonic() < deadline:
        time.sleep(0.3)
        found = effects(stack, ids)
    return found


def test_changes_end_at_each_records_latest_state_and_repeated_deliveries_change_nothing(
    hooks_stack: DevstackProcess, app_env: Any
) -> None:
    stack = hooks_stack
    app_env(stack)
    client = DataverseClient(
        stack.env["DATAVERSE_URL"], token_provider(), options=ClientOptions(verify=stack.env["REQUESTS_CA_BUNDLE"])
    )
    tag = uuid.uuid4().hex[:5]
    ids = {client.create("accounts", {"name": f"wh-{tag}-{i}", "accountnumber": f"W{tag}{i}"}) for i in range(10)}
    for record_id in list(ids)[:5]:
        client.update("accounts", record_id, {"telephone1": "555"})
    want = store_versions(client, ids)
    found = wait_for_state(stack, ids, want)
    assert latest_by_record(found) == want  # the sink holds each record as Dataverse does
    assert applied_in_order(found)  # never an older change applied after a newer one
    assert 10 <= len(found) <= 15  # one effect per change, less a change superseded before it was applied
    created = next(e for e in found if e["event"]["message"] == "Create")
    assert str(created["event"]["attributes"]["name"]).startswith(f"wh-{tag}-")

    # Dataverse's retry re-sends a delivery (after a 202 it never saw, or racing the first copy): each copy
    # is acknowledged, and the ordering guard finds its version applied.
    record = next(iter(ids))
    target = {"__type": "Entity:http://schemas.microsoft.com/xrm/2011/Contracts", "LogicalName": "account",
              "Id": record, "RowVersion": str(want[record]), "Attributes": []}  # fmt: skip
    context = {
        "MessageName": "Update", "PrimaryEntityName": "account", "PrimaryEntityId": record,
        "RequestId": str(uuid.uuid4()), "OperationId": str(uuid.uuid4()),
        "InputParameters": [{"key": "Target", "value": target}],
    }  # fmt: skip
    key = json.loads((stack.directory / "host-keys.json").read_text())["functions"]["dataverse_webhook"]["default"]
    url = f"{stack.env['FUNCTIONS_BASE_URL']}/api/webhooks/dataverse?code={key}"
    answers = [requests.post(url, json=context, timeout=30) for _ in range(3)]
    assert [(a.status_code, a.json()) for a in answers] == [(202, {"accepted": True})] * 3
    # A context Dataverse stripped for size: the processor reads the record (and its versionnumber) itself.
    stripped = {**context, "RequestId": str(uuid.uuid4()), "OperationId": str(uuid.uuid4()), "InputParameters": []}
    header = {"x-ms-dynamics-msg-size-exceeded": "true"}
    assert requests.post(url, json=stripped, headers=header, timeout=30).status_code == 202
    wait_until_quiet(stack)
    assert len(effects(stack, ids)) == len(found)

    # An event that failed until it landed in the poison queue is replayed by the admin after a fix: it is
    # processed once. Replaying a copy again (an operator's double click) changes nothing.
    from shared.storage import Storage
    from shared.webhooks.context import parse_remote_execution_context

    newer = {**target, "RowVersion": str(want[record] + 1000)}  # as if the record had moved on meanwhile
    poisoned_context = {**context, "RequestId": str(uuid.uuid4()), "OperationId": str(uuid.uuid4()),
                        "InputParameters": [{"key": "Target", "value": newer}]}  # fmt: skip
    poisoned = parse_remote_execution_context(json.dumps(poisoned_context).encode())
    message = {"source": "dataverse", "key": poisoned.dedupe_key, "event": poisoned.to_dict()}
    storage = Storage(stack.env["AzureWebJobsStorage"])
    admin = {"x-functions-key": json.loads((stack.directory / "host-keys.json").read_text())["masterKey"]}
    replay_url = f"{stack.env['FUNCTIONS_BASE_URL']}/api/webhooks-admin/replay"
    for attempt in (1, 2):
        storage.enqueue("webhook-events-poison", message)
        replay = requests.post(replay_url, headers=admin, timeout=30)
        assert (replay.status_code, replay.json()) == (200, {"replayed": 1})
        assert len(wait_for(stack, ids, len(found) + 1)) == len(found) + 1, attempt
    wait_until_quiet(stack)
    assert len(effects(stack, ids)) == len(found) + 1  # the second copy was taken and skipped
