"""The emulator's webhook system jobs over raw HTTPS: ``asyncoperations`` read as Dataverse answers a table
($filter with GUID and datetime literals, $select, $orderby, $top, $count, server-driven paging, single GET,
the 404 and 400 envelopes), ``serviceendpoints`` and ``sdkmessageprocessingsteps`` for discovery, each
delivery outcome (refused, 500, 503 then 200, 503 twice, timeout) and seeded out-of-order delivery."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.dataverse_api import DataverseApi, api_for
from tests.devstack_process import ROOT, DevstackProcess

pytestmark = pytest.mark.integration

STATE_COMPLETED = 3
SUCCEEDED, FAILED = 30, 31
WAIT_S = 15  # how long a test waits for the emulator's asynchronous deliveries to complete
POLL_S = 0.05
# The devstack fixture runs at time scale 0.01, so this many model seconds is a fifth of a real second.
SHORT_TIMEOUT_MODEL_S = 20
RECEIVER_HOLD_S = 2.0  # how long the slow receiver keeps a request: well past the short timeout


class Receiver:
    """A local endpoint that records deliveries in arrival order and answers a scripted sequence of statuses."""

    def __init__(self, hold_s: float = 0.0) -> None:
        self.deliveries: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        self.hold_s = hold_s
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.deliveries.append({"path": self.path, "context": json.loads(raw)})
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                if receiver.hold_s:
                    time.sleep(receiver.hold_s)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:  # the emulator gave up waiting (the timeout test) and closed the connection
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/webhooks/dataverse"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, count: int) -> list[dict[str, Any]]:
        deadline = time.monotonic() + WAIT_S
        while len(self.deliveries) < count and time.monotonic() < deadline:
            time.sleep(POLL_S)
        return self.deliveries


def closed_port_url() -> str:
    """A loopback URL nothing listens on: the connection is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/api/webhooks/dataverse"


class Hooks:
    """The Dataverse API plus webhook registration and system-job reads for one test."""

    def __init__(self, api: DataverseApi) -> None:
        self.api = api
        self.receivers: list[Receiver] = []

    def receiver(self, hold_s: float = 0.0) -> Receiver:
        receiver = Receiver(hold_s)
        self.receivers.append(receiver)
        return receiver

    def register(self, *specs: dict[str, Any]) -> list[dict[str, Any]]:
        """Replace the registrations; answer each one's steps by message, found as an app finds them: the
        service endpoint by its URL, then the steps bound to it."""
        self.api.control({"webhooks": list(specs)})
        found = []
        for spec in specs:
            (endpoint,) = self.get("serviceendpoints", {"$filter": f"url eq '{spec['url']}'"})
            steps = self.get(
                "sdkmessageprocessingsteps", {"$filter": f"_eventhandler_value eq {endpoint['serviceendpointid']}"}
            )
            found.append(
                {"endpoint": endpoint, "steps": {s["name"].rsplit(": ", 1)[1].split(" of ")[0]: s for s in steps}}
            )
        return found

    def get(self, path: str, params: dict[str, str] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
        response = self.api("GET", path, params=params, **kwargs)
        assert response.status_code == 200, response.text
        return list(response.json()["value"])

    def jobs(self, step_id: str, extra: str = "") -> list[dict[str, Any]]:
        flt = f"_owningextensionid_value eq {step_id}" + (f" and {extra}" if extra else "")
        return self.get("asyncoperations", {"$filter": flt, "$orderby": "createdon asc"})

    def completed(self, step_id: str, count: int) -> list[dict[str, Any]]:
        """The step's jobs once ``count`` of them have completed."""
        deadline = time.monotonic() + WAIT_S
        while True:
            done = self.jobs(step_id, f"statecode eq {STATE_COMPLETED}")
            if len(done) >= count or time.monotonic() > deadline:
                return done
            time.sleep(POLL_S)

    def create_account(self, name: str) -> str:
        created = self.api("POST", "accounts", json={"name": name})
        assert created.status_code == 204, created.text
        return str(created.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")"))

    def counters(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.api.stats()["counters"].items() if k.startswith("webhook deliveries")}


@pytest.fixture
def hooks(devstack, app_env) -> Iterator[Hooks]:
    app_env(devstack)
    hooks = Hooks(api_for(devstack))
    yield hooks
    hooks.api.control({"webhooks": [], "webhook_reorder": None, "webhook_timeout_s": None})
    for receiver in hooks.receivers:
        receiver.server.shutdown()


def spec(url: str, messages: list[str] | None = None) -> dict[str, Any]:
    return {
        "url": url,
        "table": "account",
        "messages": messages or ["Create"],
        "auth": {"type": "WebhookKey", "value": "k-1"},
    }


def delta(before: dict[str, int], after: dict[str, int], name: str) -> int:
    return after.get(f"webhook deliveries {name}", 0) - before.get(f"webhook deliveries {name}", 0)


# -- discovery ------------------------------------------------------------------------------------------------
def test_service_endpoints_and_steps_are_discoverable_by_url(hooks: Hooks) -> None:
    receiver = hooks.receiver()
    (found,) = hooks.register(spec(receiver.url, ["Create", "Update"]))
    endpoint = found["endpoint"]
    assert (endpoint["url"], endpoint["contract"], endpoint["authtype"]) == (receiver.url, 8, 4)
    assert "authvalue" not in endpoint  # Dataverse never returns the secret either
    assert set(found["steps"]) == {"Create", "Update"}
    for step in found["steps"].values():
        assert (step["mode"], step["stage"], step["statecode"]) == (1, 40, 0)
        assert step["_eventhandler_value"] == endpoint["serviceendpointid"]
    contract = hooks.get("serviceendpoints", {"$filter": "contract eq 8", "$select": "url,authtype"})
    assert {"@odata.etag", "serviceendpointid", "url", "authtype"} == set(contract[0])
    assert hooks.get("serviceendpoints", {"$filter": "contract eq 8 and url ne 'http://elsewhere'"})

    record_id = hooks.create_account(f"disc-{uuid.uuid4().hex[:6]}")
    (delivery,) = receiver.wait(1)
    create_step = found["steps"]["Create"]["sdkmessageprocessingstepid"]
    assert delivery["context"]["OwningExtension"]["Id"] == create_step
    (job,) = hooks.completed(create_step, 1)
    assert job["_regardingobjectid_value"] == record_id
    assert (job["primaryentitytype"], job["messagename"], job["operationtype"], job["depth"]) == (
        "account",
        "Create",
        1,
        1,
    )
    assert job["correlationid"] == delivery["context"]["CorrelationId"]


# -- the collection, read as a table ----------------------------------------------------------------------------
def test_asyncoperations_query_conformance(hooks: Hooks) -> None:
    receiver = hooks.receiver()
    (found,) = hooks.register(spec(receiver.url))
    step = found["steps"]["Create"]["sdkmessageprocessingstepid"]
    before = (datetime.now(UTC) - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    receiver.statuses = [200, 500, 200, 400, 200]
    for i in range(5):
        hooks.create_account(f"q-{i}-{uuid.uuid4().hex[:6]}")
        receiver.wait(i + 1)  # one at a time, so the scripted statuses meet the jobs in creation order
    jobs = hooks.completed(step, 5)
    assert [j["statuscode"] for j in jobs] == [SUCCEEDED, FAILED, SUCCEEDED, FAILED, SUCCEEDED]
    failed_ids = {j["asyncoperationid"] for j in jobs if j["statuscode"] == FAILED}

    # The documented troubleshooting query, with a GUID and a datetime literal.
    documented = hooks.get(
        "asyncoperations",
        {
            "$filter": f"statuscode eq 31 and _owningextensionid_value eq {step} and completedon gt {before}",
            "$select": "name,friendlymessage,errorcode,message,completedon",
            "$orderby": "completedon desc",
        },
    )
    assert {j["asyncoperationid"] for j in documented} == failed_ids
    assert set(documented[0]) == {
        "@odata.etag",
        "asyncoperationid",
        "name",
        "friendlymessage",
        "errorcode",
        "message",
        "completedon",
    }
    future = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert hooks.jobs(step, f"completedon gt {future}") == []
    assert len(hooks.jobs(step, f"completedon le {future} and createdon ge {before}")) == 5
    assert {j["asyncoperationid"] for j in hooks.jobs(step, "statuscode ne 30")} == failed_ids
    assert len(hooks.jobs(step, "(statuscode eq 30 or statuscode eq 31) and retrycount lt 1")) == 5
    assert hooks.jobs(step, "statuscode gt 31 or statecode lt 3") == []

    for job in jobs:
        assert job["createdon"] <= job["startedon"] <= job["completedon"]
        assert job["statecode"] == STATE_COMPLETED

    ordered = hooks.get(
        "asyncoperations",
        {"$filter": f"_owningextensionid_value eq {step}", "$orderby": "statuscode desc,createdon asc"},
    )
    assert [j["statuscode"] for j in ordered] == [FAILED, FAILED, SUCCEEDED, SUCCEEDED, SUCCEEDED]
    top = hooks.get("asyncoperations", {"$filter": f"_owningextensionid_value eq {step}", "$top": "2"})
    assert len(top) == 2

    counted = hooks.api(
        "GET", "asyncoperations", params={"$filter": f"_owningextensionid_value eq {step}", "$count": "true"}
    )
    assert counted.json()["@odata.count"] == 5

    # Server-driven paging: every row exactly once, following the nextLink verbatim.
    seen: list[str] = []
    prefer = {"Prefer": "odata.maxpagesize=2"}
    page = hooks.api(
        "GET", "asyncoperations", params={"$filter": f"_owningextensionid_value eq {step}"}, headers=prefer
    )
    assert page.headers["Preference-Applied"] == "odata.maxpagesize=2"
    pages = 1
    while True:
        body = page.json()
        seen += [j["asyncoperationid"] for j in body["value"]]
        if "@odata.nextLink" not in body:
            break
        page = hooks.api("GET", body["@odata.nextLink"], headers=prefer)
        pages += 1
    assert pages == 3
    assert sorted(seen) == sorted(j["asyncoperationid"] for j in jobs)

    # A single job, with $select; its ETag; an unknown id is Dataverse's 404 envelope.
    one = jobs[1]["asyncoperationid"]
    single = hooks.api("GET", f"asyncoperations({one})", params={"$select": "statuscode,message"})
    assert single.status_code == 200
    assert set(single.json()) == {"@odata.context", "@odata.etag", "statuscode", "message", "asyncoperationid"}
    assert single.json()["@odata.context"].endswith("/$metadata#asyncoperations(statuscode,message)/$entity")
    assert "HTTP 500" in single.json()["message"]
    assert (
        hooks.api("GET", f"asyncoperations({one})", headers={"If-None-Match": single.headers["ETag"]}).status_code
        == 304
    )
    missing = hooks.api("GET", f"asyncoperations({uuid.uuid4()})")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "0x80040217"
    assert "Does Not Exist" in missing.json()["error"]["message"]

    # Unknown columns are 400, as on any table; the collection is read-only here.
    for params in ({"$select": "nosuchcolumn"}, {"$filter": "nosuchcolumn eq 1"}, {"$orderby": "nosuchcolumn"}):
        bad = hooks.api("GET", "asyncoperations", params=params)
        assert bad.status_code == 400
        assert "nosuchcolumn" in bad.json()["error"]["message"]
    assert hooks.api("GET", f"asyncoperations({one})", params={"$select": "nosuchcolumn"}).status_code == 400
    assert hooks.api("POST", "asyncoperations", json={"name": "x"}).status_code == 405


# -- delivery outcomes ------------------------------------------------------------------------------------------
def test_refused_connection_fails_the_job(hooks: Hooks) -> None:
    url = closed_port_url()
    (found,) = hooks.register(spec(url))
    step = found["steps"]["Create"]["sdkmessageprocessingstepid"]
    before = hooks.counters()
    hooks.create_account(f"refused-{uuid.uuid4().hex[:6]}")
    (job,) = hooks.completed(step, 1)
    assert (job["statecode"], job["statuscode"], job["retrycount"]) == (STATE_COMPLETED, FAILED, 0)
    assert "connection refused" in job["message"]
    assert "code=" not in job["message"]  # the WebhookKey never reaches the job's text
    assert job["friendlymessage"]
    after = hooks.counters()
    assert (delta(before, after, "attempted"), delta(before, after, "failed")) == (1, 1)


@pytest.mark.parametrize(
    ("statuses", "attempts", "statuscode", "retrycount", "text"),
    [
        ([500], 1, FAILED, 0, "HTTP 500"),
        ([404], 1, FAILED, 0, "HTTP 404"),
        ([503, 200], 2, SUCCEEDED, 1, None),
        ([503, 503], 2, FAILED, 1, "HTTP 503"),
        ([502, 504], 2, FAILED, 1, "HTTP 504"),
    ],
)
def test_status_outcomes(
    hooks: Hooks, statuses: list[int], attempts: int, statuscode: int, retrycount: int, text: str | None
) -> None:
    receiver = hooks.receiver()
    (found,) = hooks.register(spec(receiver.url))
    step = found["steps"]["Create"]["sdkmessageprocessingstepid"]
    receiver.statuses = list(statuses)
    before = hooks.counters()
    hooks.create_account(f"status-{uuid.uuid4().hex[:6]}")
    (job,) = hooks.completed(step, 1)
    time.sleep(0.2)  # a wrong extra attempt would arrive now
    assert len(receiver.deliveries) == attempts
    assert (job["statuscode"], job["retrycount"], job["statecode"]) == (statuscode, retrycount, STATE_COMPLETED)
    if text is None:
        assert job["message"] is None
    else:
        assert text in job["message"]
    after = hooks.counters()
    assert delta(before, after, "attempted") == attempts
    assert delta(before, after, "retried") == retrycount
    assert delta(before, after, "succeeded" if statuscode == SUCCEEDED else "failed") == 1


def test_timeout_fails_the_job(hooks: Hooks) -> None:
    receiver = hooks.receiver(hold_s=RECEIVER_HOLD_S)
    (found,) = hooks.register(spec(receiver.url))
    step = found["steps"]["Create"]["sdkmessageprocessingstepid"]
    hooks.api.control({"webhook_timeout_s": SHORT_TIMEOUT_MODEL_S})
    started = time.monotonic()
    hooks.create_account(f"slow-{uuid.uuid4().hex[:6]}")
    (job,) = hooks.completed(step, 1)
    assert time.monotonic() - started < RECEIVER_HOLD_S  # it gave up before the receiver answered
    assert (job["statuscode"], job["retrycount"]) == (FAILED, 0)  # a timeout is not retried
    assert "timeout" in job["message"]
    assert len(receiver.deliveries) == 1


def test_bad_control_values_are_refused(hooks: Hooks) -> None:
    import requests

    for payload in (
        {"webhook_timeout_s": 0},
        {"webhook_timeout_s": "x"},
        {"webhook_reorder": {"seed": 1}},
        {"webhook_reorder": {"window": 0}},
    ):
        with pytest.raises(requests.HTTPError):
            hooks.api.control(payload)


# -- out-of-order delivery --------------------------------------------------------------------------------------
def reordered_run(hooks: Hooks, receiver: Receiver, step: str, seed: int) -> list[tuple[int, int]]:
    """Six updates, three per row, gathered into one window: the order they arrived in, as (row, version)."""
    rows = [hooks.create_account(f"ro-{uuid.uuid4().hex[:6]}") for _ in range(2)]  # Creates are not subscribed
    hooks.api.control({"webhook_reorder": {"window": 6, "seed": seed, "max_wait_s": 60}})
    start = len(receiver.deliveries)
    writes = [(row, version) for version in (1, 2, 3) for row in (0, 1)]
    for n, (row, version) in enumerate(writes):
        response = hooks.api("PATCH", f"accounts({rows[row]})", json={"description": f"{row}:{version}"})
        assert response.status_code == 204
        if n == len(writes) - 2:  # the window is one short of full: nothing has left, every job is waiting
            time.sleep(0.3)
            assert len(receiver.deliveries) == start
            waiting = hooks.jobs(step, "statuscode eq 0")
            assert len(waiting) == len(writes) - 1
    arrived = receiver.wait(start + len(writes))[start:]
    assert len(arrived) == len(writes)
    order = []
    for delivery in arrived:
        target = delivery["context"]["InputParameters"][0]["value"]
        row, version = {a["key"]: a["value"] for a in target["Attributes"]}["description"].split(":")
        order.append((int(row), int(version)))
    assert len(hooks.completed(step, start + len(writes))) >= start + len(writes)
    return order


def test_reorder_sends_a_seeded_shuffle(hooks: Hooks) -> None:
    receiver = hooks.receiver()
    (found,) = hooks.register(spec(receiver.url, ["Update"]))
    step = found["steps"]["Update"]["sdkmessageprocessingstepid"]
    first = reordered_run(hooks, receiver, step, seed=7)
    assert sorted(first) == [(r, v) for r in (0, 1) for v in (1, 2, 3)]
    # A later update of some row arrived before an earlier one of the same row.
    assert any(
        first.index((row, later)) < first.index((row, earlier))
        for row in (0, 1)
        for earlier in (1, 2)
        for later in (earlier + 1, 3)
        if later > earlier
    )
    assert reordered_run(hooks, receiver, step, seed=7) == first  # the same seed, the same order
    assert reordered_run(hooks, receiver, step, seed=5) != first


# -- the scenario's switches ------------------------------------------------------------------------------------
SCENARIO_WINDOW = 2


@pytest.fixture(scope="module")
def switched_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevstackProcess]:
    """The default world with reordering and a short delivery timeout switched on in the scenario."""
    directory = tmp_path_factory.mktemp("asyncops")
    scenario = yaml.safe_load((ROOT / "devstack" / "scenarios" / "default.yaml").read_text())
    scenario["dataverse"]["webhook_reorder"] = {"window": SCENARIO_WINDOW, "seed": 3, "max_wait_s": 60}
    scenario["dataverse"]["webhook_timeout_s"] = SHORT_TIMEOUT_MODEL_S
    path: Path = directory / "switched.yaml"
    path.write_text(yaml.safe_dump(scenario))
    process = DevstackProcess(path, directory / "state", "asyncops", "--memory", "--no-azurite", "--time-scale", "0.01")
    yield process
    process.stop()


def test_scenario_switches_reorder_and_timeout(switched_stack: DevstackProcess, app_env) -> None:
    app_env(switched_stack)
    hooks = Hooks(api_for(switched_stack))
    receiver = hooks.receiver(hold_s=RECEIVER_HOLD_S)
    try:
        (found,) = hooks.register(spec(receiver.url))
        step = found["steps"]["Create"]["sdkmessageprocessingstepid"]
        hooks.create_account(f"sw-{uuid.uuid4().hex[:6]}")
        time.sleep(0.3)
        # The first of a window of two waits for the second.
        assert [j["statuscode"] for j in hooks.jobs(step)] == [0]
        assert receiver.deliveries == []
        started = time.monotonic()
        hooks.create_account(f"sw-{uuid.uuid4().hex[:6]}")
        jobs = hooks.completed(step, SCENARIO_WINDOW)
        # Sent one after the other, each cut off by the scenario's short timeout long before the receiver answers.
        assert time.monotonic() - started < SCENARIO_WINDOW * RECEIVER_HOLD_S
        assert [(j["statuscode"], "timeout" in j["message"]) for j in jobs] == [(FAILED, True)] * SCENARIO_WINDOW
        failed = hooks.api(
            "GET",
            "asyncoperations",
            params={"$filter": f"statuscode eq 31 and _owningextensionid_value eq {step}", "$count": "true"},
        )
        assert failed.json()["@odata.count"] == SCENARIO_WINDOW
    finally:
        receiver.server.shutdown()
