"""Webhook round trip on devstack: the emulator's service endpoint -> the local host's receiver -> queue ->
processor -> one blob per event. N changes give exactly N effects, also when deliveries are repeated."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import requests

from shared.composition import token_provider
from shared.dataverse.client import ClientOptions, DataverseClient
from tests.devstack_process import DevstackProcess

pytestmark = pytest.mark.e2e


def effects(stack: DevstackProcess, record_ids: set[str]) -> list[dict[str, object]]:
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


def wait_for(
    stack: DevstackProcess, record_ids: set[str], count: int, timeout_s: float = 60
) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout_s
    found = effects(stack, record_ids)
    while len(found) < count and time.monotonic() < deadline:
        time.sleep(0.3)
        found = effects(stack, record_ids)
    return found


def test_n_changes_give_n_effects_even_with_repeated_deliveries(hooks_stack: DevstackProcess, app_env) -> None:
    stack = hooks_stack
    app_env(stack)
    client = DataverseClient(
        stack.env["DATAVERSE_URL"], token_provider(), options=ClientOptions(verify=stack.env["REQUESTS_CA_BUNDLE"])
    )
    tag = uuid.uuid4().hex[:5]
    ids = {client.create("accounts", {"name": f"wh-{tag}-{i}", "accountnumber": f"W{tag}{i}"}) for i in range(10)}
    for record_id in list(ids)[:5]:
        client.update("accounts", record_id, {"telephone1": "555"})
    expected = 15  # 10 creates + 5 updates
    found = wait_for(stack, ids, expected)
    assert len(found) == expected
    messages = sorted(str(e["event"]["message"]) for e in found)  # type: ignore[index]
    assert messages == ["Create"] * 10 + ["Update"] * 5
    created = next(e for e in found if e["event"]["message"] == "Create")  # type: ignore[index]
    assert str(created["event"]["attributes"]["name"]).startswith(f"wh-{tag}-")  # type: ignore[index]

    # Dataverse's retry re-sends the identical delivery: acknowledged, not processed again.
    record = next(iter(ids))
    context = {
        "MessageName": "Update", "PrimaryEntityName": "account", "PrimaryEntityId": record,
        "RequestId": str(uuid.uuid4()), "OperationId": str(uuid.uuid4()), "InputParameters": [],
    }  # fmt: skip
    key = json.loads((stack.directory / "host-keys.json").read_text())["functions"]["dataverse_webhook"]["default"]
    url = f"{stack.env['FUNCTIONS_BASE_URL']}/api/webhooks/dataverse?code={key}"
    assert requests.post(url, json=context, timeout=30).status_code == 202
    assert len(wait_for(stack, ids, expected + 1)) == expected + 1
    again = requests.post(url, json=context, timeout=30)  # the retry after a 202 that Dataverse never saw
    assert (again.status_code, again.json()) == (202, {"accepted": True, "duplicate": True})
    # Two copies racing (the retry sent while the first is still queued): both acknowledged, one effect.
    racing = {**context, "RequestId": str(uuid.uuid4()), "OperationId": str(uuid.uuid4())}
    assert [requests.post(url, json=racing, timeout=30).status_code for _ in range(2)] == [202, 202]
    assert len(wait_for(stack, ids, expected + 2)) == expected + 2
    time.sleep(1.0)
    assert len(effects(stack, ids)) == expected + 2
    expected += 2

    # A context Dataverse stripped for size: the processor reads the record itself, so the effect is complete.
    stripped = {**context, "RequestId": str(uuid.uuid4()), "OperationId": str(uuid.uuid4())}
    header = {"x-ms-dynamics-msg-size-exceeded": "true"}
    assert requests.post(url, json=stripped, headers=header, timeout=30).status_code == 202
    found = wait_for(stack, ids, expected + 1)
    assert len(found) == expected + 1
    fetched = next(e for e in found if str(e["key"]).startswith(f"{stripped['RequestId']}|"))
    assert fetched["event"]["size_exceeded"] is True  # type: ignore[index]
    assert str(fetched["event"]["attributes"]["name"]).startswith(f"wh-{tag}-")  # type: ignore[index]
    assert fetched["event"]["attributes"]["accountid"] == record  # type: ignore[index]
    expected += 1

    # An event that failed until it landed in the poison queue is replayed by the admin after a fix: it is
    # processed once. Replaying a copy again (an operator's double click) changes nothing.
    from shared.storage import Storage
    from shared.webhooks.context import parse_remote_execution_context

    poisoned_context = {**context, "RequestId": str(uuid.uuid4()), "OperationId": str(uuid.uuid4())}
    poisoned = parse_remote_execution_context(json.dumps(poisoned_context).encode())
    message = {"source": "dataverse", "key": poisoned.dedupe_key, "event": poisoned.to_dict()}
    storage = Storage(stack.env["AzureWebJobsStorage"])
    admin = {"x-functions-key": json.loads((stack.directory / "host-keys.json").read_text())["masterKey"]}
    replay_url = f"{stack.env['FUNCTIONS_BASE_URL']}/api/webhooks-admin/replay"
    for attempt in (1, 2):
        storage.enqueue("webhook-events-poison", message)
        replay = requests.post(replay_url, headers=admin, timeout=30)
        assert (replay.status_code, replay.json()) == (200, {"replayed": 1})
        assert len(wait_for(stack, ids, expected + 1)) == expected + 1, attempt
    events = storage.queue("webhook-events")
    deadline = time.monotonic() + 30
    while events.get_queue_properties().approximate_message_count and time.monotonic() < deadline:
        time.sleep(0.2)
    assert events.get_queue_properties().approximate_message_count == 0  # the second copy was taken and skipped
    assert len(effects(stack, ids)) == expected + 1
