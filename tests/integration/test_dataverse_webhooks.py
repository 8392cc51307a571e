"""Outgoing webhooks: the RemoteExecutionContext POSTed after commit, auth, retry rules, size stripping."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.dataverse_api import api_for

pytestmark = pytest.mark.integration


class Receiver:
    """A local endpoint that records deliveries and answers a scripted sequence of statuses."""

    def __init__(self) -> None:
        self.deliveries: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.deliveries.append({"path": self.path, "headers": dict(self.headers), "raw": raw})
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/webhooks/dataverse"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, count: int, timeout_s: float = 10) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while len(self.deliveries) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.deliveries


@pytest.fixture
def hooked(devstack, app_env) -> Iterator[tuple[Any, Receiver]]:
    app_env(devstack)
    receiver = Receiver()
    api = api_for(devstack)

    def register(auth: dict[str, Any], messages: list[str] | None = None) -> None:
        spec = {
            "url": receiver.url,
            "table": "account",
            "auth": auth,
            "messages": messages or ["Create", "Update", "Delete"],
        }
        api.control({"webhooks": [spec]})

    api.register = register  # type: ignore[attr-defined]
    yield api, receiver
    api.control({"webhooks": []})
    receiver.server.shutdown()


def test_create_is_delivered_with_the_remote_execution_context(hooked) -> None:
    call, receiver = hooked
    call.register({"type": "WebhookKey", "value": "fn-key-123"})
    tag = uuid.uuid4().hex[:6]
    created = call(
        "POST",
        "accounts",
        json={"name": f"wh-{tag}", "accountcategorycode": 1, "revenue": 10.5, "lastonholdtime": "2026-01-02T03:04:05Z"},
    )
    record_id = created.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")
    (delivery,) = receiver.wait(1)
    assert delivery["path"].endswith("?code=fn-key-123")
    headers = {k.lower(): v for k, v in delivery["headers"].items()}
    assert headers["x-ms-dynamics-entity-name"] == "account"
    assert headers["x-ms-dynamics-request-name"] == "create"
    assert headers["x-ms-dynamics-organization"].startswith("127.0.0.1:")
    assert "x-ms-dynamics-msg-size-exceeded" not in headers
    assert b"\\/Date(" in delivery["raw"]
    assert b"http:\\/\\/schemas.microsoft.com" in delivery["raw"]
    context = json.loads(delivery["raw"])
    assert (context["MessageName"], context["PrimaryEntityName"], context["PrimaryEntityId"]) == (
        "Create",
        "account",
        record_id,
    )
    assert (context["Mode"], context["Stage"], context["Depth"]) == (1, 40, 1)
    target = context["InputParameters"][0]["value"]
    assert target["__type"] == "Entity:http://schemas.microsoft.com/xrm/2011/Contracts"
    attributes = {a["key"]: a["value"] for a in target["Attributes"]}
    assert attributes["name"] == f"wh-{tag}"
    assert attributes["accountcategorycode"] == {
        "__type": "OptionSetValue:http://schemas.microsoft.com/xrm/2011/Contracts",
        "Value": 1,
    }
    assert attributes["revenue"]["__type"].startswith("Money:")
    assert attributes["lastonholdtime"] == "/Date(1767323045000)/"


def test_update_then_delete_are_delivered_with_row_versions_and_an_entity_reference(hooked) -> None:
    call, receiver = hooked
    call.register({"type": "WebhookKey", "value": "fn-key-123"}, ["Update", "Delete"])
    created = call("POST", "accounts", json={"name": f"wh-{uuid.uuid4().hex[:6]}"})
    record_id = created.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")
    call("PATCH", f"accounts({record_id})", json={"telephone1": "555"}).raise_for_status()
    version = int(call("GET", f"accounts({record_id})?$select=versionnumber").json()["versionnumber"])
    call("DELETE", f"accounts({record_id})").raise_for_status()
    update, delete = (json.loads(d["raw"]) for d in receiver.wait(2))
    assert (update["MessageName"], delete["MessageName"]) == ("Update", "Delete")
    (image,) = update["PostEntityImages"]
    assert int(image["value"]["RowVersion"]) == version  # what the ordering guard compares
    assert delete["PrimaryEntityId"] == record_id
    target = delete["InputParameters"][0]["value"]
    assert target["__type"] == "EntityReference:http://schemas.microsoft.com/xrm/2011/Contracts"
    assert (target["Id"], target["LogicalName"]) == (record_id, "account")
    assert delete["PostEntityImages"] == []


def test_rolled_back_changeset_sends_nothing_and_retries_follow_the_rules(hooked) -> None:
    call, receiver = hooked
    call.register({"type": "HttpHeader", "values": {"x-dvbridge-key": "header-secret"}})
    tag = uuid.uuid4().hex[:6]
    # A failed bulk request rolls back: no event may leave the emulator.
    bad = [
        {"@odata.type": "Microsoft.Dynamics.CRM.account", "name": f"rb-{tag}"},
        {"@odata.type": "Microsoft.Dynamics.CRM.account", "name": "x" * 161},
    ]
    assert call("POST", "accounts/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": bad}).status_code == 400
    (endpoint,) = call("GET", "serviceendpoints", params={"$filter": f"url eq '{receiver.url}'"}).json()["value"]
    steps = call(
        "GET",
        "sdkmessageprocessingsteps",
        params={"$filter": f"_eventhandler_value eq {endpoint['serviceendpointid']}"},
    )
    step_filter = " or ".join(
        f"_owningextensionid_value eq {s['sdkmessageprocessingstepid']}" for s in steps.json()["value"]
    )
    assert call("GET", "asyncoperations", params={"$filter": step_filter}).json()["value"] == []  # nor any system job
    receiver.statuses = [503, 200, 500]
    call("POST", "accounts", json={"name": f"retry-{tag}"})
    assert len(receiver.wait(2)) == 2  # 503 -> exactly one more attempt
    call("POST", "accounts", json={"name": f"noretry-{tag}"})
    time.sleep(0.5)
    deliveries = receiver.wait(3)
    assert len(deliveries) == 3  # 500 is not retried
    names = [
        {a["key"]: a["value"] for a in json.loads(d["raw"])["InputParameters"][0]["value"]["Attributes"]}["name"]
        for d in deliveries
    ]
    assert names == [f"retry-{tag}", f"retry-{tag}", f"noretry-{tag}"]
    # Each delivery is one system job: the retried one succeeded on its second attempt, the 500 failed at once.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        jobs = call("GET", "asyncoperations", params={"$filter": f"({step_filter}) and statecode eq 3"}).json()["value"]
        if len(jobs) == 2:
            break
        time.sleep(0.05)
    outcomes = sorted((j["statuscode"], j["retrycount"]) for j in jobs)
    assert outcomes == [(30, 1), (31, 0)]
    assert all({k.lower(): v for k, v in d["headers"].items()}["x-dvbridge-key"] == "header-secret" for d in deliveries)


def test_large_payload_is_stripped_and_flagged(hooked) -> None:
    call, receiver = hooked
    call.register({"type": "HttpQueryString", "values": {"k": "v"}}, messages=["Update"])
    created = call("POST", "accounts", json={"name": "big"})
    record_id = created.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")
    call("PATCH", f"accounts({record_id})", json={"description": "x" * 300_000})
    (delivery,) = receiver.wait(1)
    assert delivery["path"].endswith("?k=v")
    assert {k.lower(): v for k, v in delivery["headers"].items()}["x-ms-dynamics-msg-size-exceeded"] == "true"
    context = json.loads(delivery["raw"])
    assert "InputParameters" not in context
    assert "PostEntityImages" not in context
    assert context["PrimaryEntityId"] == record_id
    assert context["MessageName"] == "Update"
