"""The failed-delivery watcher (shared.webhooks.watcher) over in-memory fakes: a Dataverse environment serving
serviceendpoints, sdkmessageprocessingsteps and asyncoperations with paging, Table storage with ETags
(tests.fakes.tables), blob leases, alert channels recording what they got, and the reconciler's run log."""

from __future__ import annotations

import json
import logging
import re
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import azure.functions as func
import pytest

from shared.errors import ConfigError, DataverseError
from shared.settings_registry import EnvVars
from shared.webhooks import watcher_functions
from shared.webhooks.watcher import (
    FIRST_RUN_LOOKBACK,
    REMINDER_AFTER,
    STEP_PARTITION,
    WATCH_TABLE,
    IncidentAlert,
    IncidentNotOpen,
    Incidents,
    Watcher,
    endpoint_label,
    endpoint_matches,
    parse_incident_id,
    safe_text,
    watch_settings,
)
from tests.fakes.tables import FakeTableClient, FakeTables, service_error

pytestmark = pytest.mark.unit

ROOT = "https://org.example.com/api/data/v9.2"
APP_HOST = "dvbridge-app.azurewebsites.net"
OUR_URL = f"https://{APP_HOST}/api/webhooks/dataverse"
KEY = "s3cr3t-function-key-never-shown"
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
QUIET_S = 1800


def gid() -> str:
    return str(uuid.uuid4())


def z(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# -- fakes ---------------------------------------------------------------------------------------------------
@dataclass
class _Response:
    body: Any

    def json(self, **kwargs: Any) -> Any:
        return self.body


class FakeSystemJobs:
    """A Dataverse environment's webhook registrations and system jobs as the watcher reads them: the three
    collections filtered the way the watcher asks (any other filter fails the test: teach the fake), ordered,
    ``$select``ed and paged with ``@odata.nextLink`` (a page is what the first request saw, as a paging cookie
    keeps it). ``page_size`` caps ``odata.maxpagesize``; ``repeat_across_pages`` repeats each page's last row at
    the top of the next (a server that pages by time); ``before_jobs_read`` runs before each jobs query."""

    def __init__(self, page_size: int = 1000) -> None:
        self.endpoints: list[dict[str, Any]] = []
        self.steps: list[dict[str, Any]] = []
        self.jobs: list[dict[str, Any]] = []
        self.page_size = page_size
        self.repeat_across_pages = False
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.before_jobs_read: Callable[[], None] | None = None
        self.fail_jobs_read: BaseException | None = None
        self._cursors: dict[str, list[dict[str, Any]]] = {}

    # the world
    def endpoint(self, url: str, *, contract: int = 8, name: str = "dvbridge receiver") -> str:
        endpoint_id = gid()
        self.endpoints.append({"serviceendpointid": endpoint_id, "url": url, "contract": contract, "name": name,
                               "authvalue": KEY})  # fmt: skip
        return endpoint_id

    def step(self, endpoint_id: str, name: str = "dvbridge: Update of account") -> str:
        step_id = gid()
        self.steps.append({"sdkmessageprocessingstepid": step_id, "name": name, "_eventhandler_value": endpoint_id})
        return step_id

    def job(self, step_id: str, at: datetime, *, status: int = 31, table: str = "account",
            message: str = "The webhook endpoint answered HTTP 500.") -> str:  # fmt: skip
        job_id = gid()
        self.jobs.append({
            "asyncoperationid": job_id, "name": "dvbridge: Update of account", "statecode": 3, "statuscode": status,
            "_owningextensionid_value": step_id, "message": f"Webhook request failed: {message}",
            "friendlymessage": message, "createdon": z(at - timedelta(seconds=1)), "completedon": z(at),
            "primaryentitytype": table, "_regardingobjectid_value": gid(), "correlationid": gid(),
        })  # fmt: skip
        return job_id

    def fail(self, step_id: str, at: datetime, n: int = 1, **kwargs: Any) -> list[str]:
        return [self.job(step_id, at, **kwargs) for _ in range(n)]

    def failed_count(self, step_id: str) -> int:
        """What Dataverse holds: the count the watcher's cumulative count must equal."""
        return sum(1 for j in self.jobs if j["_owningextensionid_value"] == step_id and j["statuscode"] == 31)

    def jobs_reads(self) -> list[dict[str, str]]:
        return [params for path, params in self.requests if path == "asyncoperations"]

    # the client's request path
    def request(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
                headers: Mapping[str, str] | None = None) -> _Response:  # fmt: skip
        assert method == "GET"
        params = dict(params or {})
        self.requests.append((path, params))
        if path.startswith(f"{ROOT}/"):
            assert not params, "a next link carries its own query"
            return self._page(path)
        single = re.fullmatch(r"(sdkmessageprocessingsteps|serviceendpoints)\(([0-9a-f-]{36})\)", path)
        if single:
            rows = self.steps if single[1] == "sdkmessageprocessingsteps" else self.endpoints
            key = "sdkmessageprocessingstepid" if single[1] == "sdkmessageprocessingsteps" else "serviceendpointid"
            found = next((r for r in rows if r[key] == single[2]), None)
            if found is None:
                raise DataverseError(404, "0x80040217", f"{single[1]} With Id = {single[2]} Does Not Exist")
            return _Response(self._selected(found, params["$select"]))
        assert headers is not None
        match = re.fullmatch(r"odata\.maxpagesize=([0-9]+)", headers["Prefer"])
        assert match, headers
        size = min(int(match[1]), self.page_size)
        rows = self._query(path, params)
        token = gid()
        self._cursors[token] = [self._selected(r, params["$select"]) for r in rows]
        return self._page(f"{ROOT}/{path}?$skiptoken={token}:0:{size}")

    def _query(self, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
        where = params["$filter"]
        if path == "serviceendpoints":
            assert where == "contract eq 8", where
            return [r for r in self.endpoints if r["contract"] == 8]
        if path == "sdkmessageprocessingsteps":
            match = re.fullmatch(r"_eventhandler_value eq ([0-9a-f-]{36})", where)
            assert match, where
            return [r for r in self.steps if r["_eventhandler_value"] == match[1]]
        assert path == "asyncoperations", path
        if self.before_jobs_read is not None:
            self.before_jobs_read()
        if self.fail_jobs_read is not None:
            error, self.fail_jobs_read = self.fail_jobs_read, None
            raise error
        match = re.fullmatch(
            r"statuscode eq 31 and _owningextensionid_value eq ([0-9a-f-]{36}) and completedon ge (\S+)", where
        )
        assert match, where
        assert params["$orderby"] == "completedon asc"
        since = datetime.fromisoformat(match[2].replace("Z", "+00:00"))
        found = [
            j for j in self.jobs
            if j["statuscode"] == 31 and j["_owningextensionid_value"] == match[1]
            and datetime.fromisoformat(j["completedon"].replace("Z", "+00:00")) >= since
        ]  # fmt: skip
        return sorted(found, key=lambda j: j["completedon"])  # stable: ties keep their creation order

    @staticmethod
    def _selected(row: dict[str, Any], select: str) -> dict[str, Any]:
        return {"@odata.etag": 'W/"1"', **{c: row.get(c) for c in select.split(",")}}

    def _page(self, link: str) -> _Response:
        token, start, size = link.rsplit("$skiptoken=", 1)[1].split(":")
        rows, first, count = self._cursors[token], int(start), int(size)
        page = rows[first : first + count]
        if self.repeat_across_pages and first > 0:
            page = [rows[first - 1], *page]
        body: dict[str, Any] = {"value": page}
        if first + count < len(rows):
            body["@odata.nextLink"] = link.rsplit("$skiptoken=", 1)[0] + f"$skiptoken={token}:{first + count}:{size}"
        return _Response(body)


class _Lease:
    def __init__(self, owner: LeaseStorage, job: str) -> None:
        self.owner, self.job = owner, job

    def release(self) -> None:
        with self.owner.lock:
            self.owner.held.discard(self.job)


class LeaseStorage:
    """``table`` (tests.fakes.tables) and ``lease``; ``exclusive=False`` grants every lease (one that lapsed)."""

    def __init__(self, *, exclusive: bool = True) -> None:
        self.tables = FakeTables()
        self.held: set[str] = set()
        self.lock = threading.Lock()
        self.exclusive = exclusive

    def table(self, name: str) -> FakeTableClient:
        return self.tables.table(name)

    def lease(self, job: str) -> _Lease | None:
        with self.lock:
            if self.exclusive and job in self.held:
                return None
            self.held.add(job)
        return _Lease(self, job)


class RecordingChannels:
    """Two channels; ``down`` ones fail. ``sent``: every alert with the channels it was sent to."""

    names = ("teams", "slack")

    def __init__(self) -> None:
        self.sent: list[tuple[IncidentAlert, tuple[str, ...]]] = []
        self.down: set[str] = set()
        self.lock = threading.Lock()

    def send(self, alert: IncidentAlert, only: Sequence[str] | None = None) -> list[str]:
        targets = tuple(n for n in self.names if only is None or n in only)
        with self.lock:
            self.sent.append((alert, targets))
        return [n for n in targets if n in self.down]

    def kinds(self) -> list[str]:
        return [alert.kind for alert, _ in self.sent]


class FakeRecovery:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.calls: list[tuple[datetime, datetime]] = []
        self.error: Exception | None = None

    def recovered_between(self, start: datetime, end: datetime) -> dict[str, int]:
        self.calls.append((start, end))
        if self.error is not None:
            raise self.error
        return dict(self.counts)


@dataclass
class World:
    dataverse: FakeSystemJobs
    storage: LeaseStorage
    channels: RecordingChannels
    recovery: FakeRecovery
    now: list[datetime] = field(default_factory=lambda: [NOW])

    def watcher(self, **kwargs: Any) -> Watcher:
        options: dict[str, Any] = {"app_host": APP_HOST, "quiet_s": QUIET_S, "clock": lambda: self.now[0]}
        return Watcher(self.storage, self.dataverse, self.channels, self.recovery, **(options | kwargs))

    def later(self, **delta: float) -> datetime:
        self.now[0] += timedelta(**delta)
        return self.now[0]

    def table(self) -> FakeTableClient:
        return self.storage.table(WATCH_TABLE)

    def incidents(self) -> Incidents:
        return Incidents(self.storage, clock=lambda: self.now[0])


@pytest.fixture
def world() -> World:
    return World(FakeSystemJobs(), LeaseStorage(), RecordingChannels(), FakeRecovery())


def our_step(world: World, name: str = "dvbridge: Update of account") -> str:
    return world.dataverse.step(world.dataverse.endpoint(OUR_URL), name)


# -- which steps ----------------------------------------------------------------------------------------------
def test_discovery_keeps_only_the_steps_of_endpoints_at_this_apps_host_and_receiver_path(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    dv = world.dataverse
    ours = dv.step(dv.endpoint(OUR_URL), "ours: Create of account")
    ours_too = dv.step(dv.endpoint(f"https://{APP_HOST.upper()}:443/api/webhooks/dataverse/?code={KEY}"), "ours 2")
    others = [
        dv.step(dv.endpoint("https://someone-else.azurewebsites.net/api/webhooks/dataverse")),
        dv.step(dv.endpoint(f"https://{APP_HOST}/api/webhooks/erp")),
        dv.step(dv.endpoint(f"https://{APP_HOST}.evil.example/api/webhooks/dataverse")),
        dv.step(dv.endpoint(OUR_URL, contract=7)),  # an Event Hub endpoint is no webhook
    ]
    for step in (ours, ours_too, *others):
        dv.fail(step, NOW - timedelta(minutes=5), message=f"HTTP 401 from {OUR_URL}?code={KEY}")
    report = world.watcher().run()
    assert set(report.steps) == {ours, ours_too}
    assert report.discovery == "endpoints"
    assert report.endpoints == [f"{APP_HOST}/api/webhooks/dataverse", f"{APP_HOST}/api/webhooks/dataverse/"]
    assert {s.failed_jobs for s in report.steps.values()} == {1}
    assert world.channels.kinds() == ["opened", "opened"]
    # A key in an endpoint's URL or in Dataverse's message is shown nowhere: report, alerts, state, log.
    shown = json.dumps(report.to_dict()) + json.dumps([a.to_dict() for a, _ in world.channels.sent])
    shown += json.dumps([dict(row) for row in world.table().rows()], default=str) + caplog.text
    assert KEY not in shown
    assert f"{APP_HOST}/api/webhooks/dataverse" in shown  # host and path are what is shown


def test_explicit_step_ids_are_watched_without_discovery_and_named_from_dataverse(world: World) -> None:
    named = our_step(world, "dvbridge: Delete of account")
    unknown = gid()  # a step Dataverse no longer has: still watched, by id
    discovered = our_step(world)
    world.dataverse.fail(named, NOW - timedelta(minutes=1))
    world.dataverse.fail(discovered, NOW - timedelta(minutes=1))
    report = world.watcher(step_ids=[named.upper(), unknown], app_host=None).run()
    assert report.discovery == "settings"
    assert list(report.steps) == [named, unknown]
    assert report.steps[named].to_dict()["step_name"] == "dvbridge: Delete of account"
    assert report.steps[named].endpoint == f"{APP_HOST}/api/webhooks/dataverse"
    assert (report.steps[named].failed_jobs, report.steps[unknown].failed_jobs) == (1, 0)
    assert [p for p, _ in world.dataverse.requests if p == "serviceendpoints"] == []  # no discovery query


def test_the_watch_settings_name_what_is_wrong() -> None:
    good = watch_settings({EnvVars.WEBHOOK_WATCH_STEP_IDS: " 3F2A1B2C-0000-4000-8000-000000000001 , "})
    assert good.step_ids == ("3f2a1b2c-0000-4000-8000-000000000001",)
    assert watch_settings({EnvVars.WEBSITE_HOSTNAME: "App.AzureWebsites.net"}) == (
        type(good)(None, "app.azurewebsites.net", 1800)
    )
    with pytest.raises(ConfigError) as bad_id:
        watch_settings({EnvVars.WEBHOOK_WATCH_STEP_IDS: "not-a-guid", EnvVars.WEBSITE_HOSTNAME: APP_HOST})
    assert bad_id.value.problems[0].startswith("WEBHOOK_WATCH_STEP_IDS: 'not-a-guid' is not a GUID")
    with pytest.raises(ConfigError) as neither:
        watch_settings({})
    assert neither.value.problems[0].startswith("WEBHOOK_WATCH_STEP_IDS is unset and WEBSITE_HOSTNAME is empty")
    with pytest.raises(ConfigError) as bad_host:
        watch_settings({EnvVars.WEBSITE_HOSTNAME: "https://app/x", EnvVars.WEBHOOK_INCIDENT_QUIET_S: "5"})
    assert [p.split("=")[0].split(" ")[0] for p in bad_host.value.problems] == [
        EnvVars.WEBSITE_HOSTNAME,
        EnvVars.WEBHOOK_INCIDENT_QUIET_S,
    ]


@pytest.mark.parametrize(
    ("url", "host", "matches"),
    [
        (OUR_URL, APP_HOST, True),
        (f"{OUR_URL}?code={KEY}", APP_HOST, True),
        (f"https://user:pw@{APP_HOST}/api/webhooks/dataverse", APP_HOST, True),
        ("http://127.0.0.1:7071/api/webhooks/dataverse", "127.0.0.1:7071", True),
        ("http://127.0.0.1:7072/api/webhooks/dataverse", "127.0.0.1:7071", False),
        ("http://127.0.0.1/api/webhooks/dataverse", "127.0.0.1:7071", False),
        (f"https://{APP_HOST}:8443/api/webhooks/dataverse", APP_HOST, False),
        (f"https://{APP_HOST}/api/webhooks/dataverse2", APP_HOST, False),
        (f"https://{APP_HOST}/API/Webhooks/Dataverse", APP_HOST, True),
        ("https://[::1/api/webhooks/dataverse", APP_HOST, False),  # does not parse
    ],
)
def test_an_endpoint_is_ours_by_host_port_and_path(url: str, host: str, matches: bool) -> None:
    assert endpoint_matches(url, host) is matches


def test_only_host_and_path_of_a_url_are_ever_shown() -> None:
    assert endpoint_label(f"https://u:pw@{APP_HOST}:8443/api/x?code={KEY}#frag") == f"{APP_HOST}:8443/api/x"
    text = safe_text(f"Webhook request to {OUR_URL}?code={KEY} failed;\n see https://a.example/?sig=zz " + "x" * 500)
    assert KEY not in text
    assert "sig=zz" not in text
    assert text.startswith(f"Webhook request to {APP_HOST}/api/webhooks/dataverse failed; see a.example/ x")
    assert len(text) == 200
    assert text.endswith("...")


# -- counting and incidents ---------------------------------------------------------------------------------------
def test_one_alert_per_incident_across_many_runs_and_failures_with_count_first_and_last(world: World) -> None:
    step = our_step(world)
    first = NOW - timedelta(minutes=30)
    world.dataverse.fail(step, first, 3, table="account")
    world.dataverse.fail(step, NOW - timedelta(minutes=10), 2, table="contact", message="Connection refused.")
    for minutes in range(5):  # five runs, five minutes apart, failures all the while (well within the quiet time)
        at = world.later(minutes=5)
        world.dataverse.fail(step, at - timedelta(seconds=30), 4, message=f"HTTP 40{minutes}")
        report = world.watcher().run()
        assert report.steps[step].failed_jobs == (9 if minutes == 0 else 4)
    assert world.channels.kinds() == ["opened"]
    incident = report.steps[step].incident
    assert incident is not None
    assert (incident.failures, incident.status) == (25, "open")
    assert incident.first_failure_at == first
    assert incident.last_failure_at == world.now[0] - timedelta(seconds=30)
    assert incident.tables == {"account": 23, "contact": 2}
    assert [s["message"] for s in incident.samples] == [
        "The webhook endpoint answered HTTP 500.",
        "Connection refused.",
        "HTTP 400",
    ]  # a few distinct messages, not every one
    assert report.steps[step].failed_total == world.dataverse.failed_count(step) == 25
    assert incident.id == f"{first:%Y%m%dT%H%M%SZ}-{step}"
    assert parse_incident_id(incident.id) == step
    opened = world.channels.sent[0][0]
    assert opened.facts["Failed deliveries"] == "9"  # what was known when it opened
    assert opened.facts["First failure"] == f"{first:%Y-%m-%d %H:%M:%S} UTC"
    assert opened.facts["Last failure"] == "2026-12-01 12:04:30 UTC"
    assert opened.facts["Step"] == f"dvbridge: Update of account ({step})"
    assert opened.facts["Endpoint"] == f"{APP_HOST}/api/webhooks/dataverse"


def test_succeeded_jobs_and_other_steps_jobs_are_not_counted(world: World) -> None:
    step, other = our_step(world), gid()
    world.dataverse.job(step, NOW - timedelta(minutes=2), status=30)
    world.dataverse.fail(other, NOW - timedelta(minutes=2), 3)
    world.dataverse.fail(step, NOW - timedelta(minutes=2))
    report = world.watcher().run()
    assert report.steps[step].failed_jobs == 1
    assert report.failed_jobs == 1


def test_paging_is_followed_and_a_job_on_two_pages_counts_once(world: World) -> None:
    step = our_step(world)
    world.dataverse.page_size = 2
    world.dataverse.repeat_across_pages = True
    for n in range(7):
        world.dataverse.fail(step, NOW - timedelta(minutes=20 - n))
    report = world.watcher(page_size=50).run()
    assert report.steps[step].failed_jobs == 7
    pages = [p for p, _ in world.dataverse.requests if p.startswith(f"{ROOT}/asyncoperations")]
    assert len(pages) == 3  # 4 pages of 2: the first request and three next links
    read = world.dataverse.jobs_reads()[0]
    assert read["$select"].split(",") == [
        "asyncoperationid", "name", "message", "friendlymessage", "createdon", "completedon", "primaryentitytype",
        "_regardingobjectid_value", "correlationid",
    ]  # fmt: skip


def test_the_first_run_looks_back_a_bounded_window(world: World) -> None:
    step = our_step(world)
    world.dataverse.fail(step, NOW - FIRST_RUN_LOOKBACK - timedelta(minutes=1))  # before the window
    world.dataverse.fail(step, NOW - FIRST_RUN_LOOKBACK + timedelta(minutes=1))
    report = world.watcher().run()
    assert report.steps[step].failed_jobs == 1
    assert world.dataverse.jobs_reads()[0]["$filter"].endswith(f"completedon ge {z(NOW - FIRST_RUN_LOOKBACK)}")


def test_a_job_completed_in_the_checkpoints_second_after_the_read_is_counted_once(world: World) -> None:
    step = our_step(world)
    second = NOW - timedelta(minutes=1)
    world.dataverse.fail(step, second, 2)
    assert world.watcher().run().steps[step].failed_jobs == 2
    world.dataverse.fail(step, second)  # the same second, after the first read
    world.later(minutes=5)
    report = world.watcher().run()
    assert report.steps[step].failed_jobs == 1  # with "gt" it would be lost; without the kept ids, 3
    assert world.dataverse.jobs_reads()[-1]["$filter"].endswith(f"completedon ge {z(second)}")
    world.later(minutes=5)
    assert world.watcher().run().steps[step].failed_jobs == 0
    row = world.table().get_entity(STEP_PARTITION, step)
    assert row["FailedTotal"] == world.dataverse.failed_count(step) == 3


def test_a_failed_save_moves_nothing_and_the_next_run_counts_the_same_jobs_once(world: World) -> None:
    step = our_step(world)
    world.dataverse.fail(step, NOW - timedelta(minutes=3), 2)
    world.table().fail_next("create_entity", service_error(503, "ServerBusy", decoded=False))
    failed = world.watcher().run()
    assert (failed.steps[step].status, failed.steps[step].failed_jobs) == ("failed", 0)
    assert failed.failed == [step]
    assert world.channels.sent == []  # nothing is alerted before it is claimed in the row
    assert world.watcher().run().steps[step].failed_jobs == 2
    world.dataverse.fail(step, world.later(minutes=5) - timedelta(seconds=10), 3)
    world.table().fail_next("update_entity", service_error(503, "ServerBusy"))
    assert world.watcher().run().steps[step].status == "failed"
    report = world.watcher().run()
    assert report.steps[step].failed_jobs == 3
    assert report.steps[step].failed_total == world.dataverse.failed_count(step) == 5
    assert world.channels.kinds() == ["opened"]


def test_a_dataverse_failure_fails_the_step_and_counts_nothing(world: World) -> None:
    step = our_step(world)
    world.dataverse.fail(step, NOW - timedelta(minutes=3), 2)
    world.dataverse.fail_jobs_read = DataverseError(0, "ConnectionError", "ConnectionError: refused")
    report = world.watcher().run()
    assert report.steps[step].to_dict()["status"] == "failed"
    assert "ConnectionError" in (report.steps[step].error or "")
    assert world.watcher().run().steps[step].failed_jobs == 2


def test_an_incident_resolves_after_the_quiet_period_with_a_notice_and_the_next_one_is_new(world: World) -> None:
    step = our_step(world)
    world.dataverse.fail(step, NOW - timedelta(minutes=2), 4)
    world.recovery.counts = {"account": 4}
    opened = world.watcher().run().steps[step].incident
    assert opened is not None
    world.later(seconds=QUIET_S - 150)  # 29.5 minutes after the last failure: still open
    assert world.watcher().run().steps[step].incident.status == "open"  # type: ignore[union-attr]
    resolved_at = world.later(seconds=60)
    report = world.watcher().run()
    assert report.steps[step].incident is not None
    assert (report.steps[step].incident.status, report.steps[step].alerts_sent) == ("resolved", 1)
    assert world.channels.kinds() == ["opened", "resolved"]
    notice = world.channels.sent[1][0]
    assert notice.severity == "info"
    assert notice.title == "Resolved: webhook deliveries of dvbridge: Update of account"
    assert notice.facts["Failed deliveries"] == "4"
    assert notice.facts["Recovered by the reconciler"] == "4 events (account 4)"
    assert world.recovery.calls[-1] == (NOW - timedelta(minutes=2), resolved_at)
    world.later(minutes=10)
    assert world.watcher().run().steps[step].alerts_sent == 0  # resolved once
    world.dataverse.fail(step, world.later(minutes=1) - timedelta(seconds=5))
    again = world.watcher().run().steps[step].incident
    assert again is not None
    assert again.id != opened.id
    assert (again.failures, again.status) == (1, "open")
    assert world.channels.kinds() == ["opened", "resolved", "opened"]
    listing = world.incidents().listing()
    assert [(i["id"], i["status"]) for i in listing["incidents"]] == [(again.id, "open"), (opened.id, "resolved")]
    assert listing["steps"][0]["failed_total"] == 5


def test_the_alert_says_what_the_reconciler_recovered_in_the_window(world: World) -> None:
    step = our_step(world)
    first = NOW - timedelta(minutes=4)
    world.dataverse.fail(step, first, 2)
    world.recovery.counts = {"account": 7, "contact": 2}
    world.watcher().run()
    (alert, targets), = world.channels.sent  # fmt: skip
    assert targets == ("teams", "slack")
    assert alert.facts["Recovered by the reconciler"] == "9 events (account 7, contact 2)"
    assert world.recovery.calls == [(first, NOW)]
    assert alert.fix.startswith("Check the receiver")
    world.recovery.error = ConnectionError("storage down")
    world.dataverse.fail(gid(), NOW)  # another step: irrelevant
    other = our_step(world, "second")
    world.dataverse.fail(other, NOW - timedelta(minutes=1))
    world.watcher().run()
    assert world.channels.sent[-1][0].facts["Recovered by the reconciler"].startswith("unknown")


def test_acknowledged_or_snoozed_the_reminder_is_withheld_and_counted_while_failures_keep_counting(
    world: World,
) -> None:
    step = our_step(world)
    world.dataverse.fail(step, NOW - timedelta(minutes=1))
    incident = world.watcher().run().steps[step].incident
    assert incident is not None
    acked = world.incidents().acknowledge(incident.id, "ops@contoso.com", NOW + REMINDER_AFTER + timedelta(hours=2))
    assert acked is not None
    assert acked.acknowledged_by == "ops@contoso.com"
    for _ in range(5):  # failures keep coming past the reminder time
        world.dataverse.fail(step, world.later(hours=5) - timedelta(minutes=1), 2)
        report = world.watcher().run()
    assert world.channels.kinds() == ["opened"]  # the reminder was due at 24 h; silenced until 26 h
    current = report.steps[step].incident
    assert current is not None
    assert (current.failures, current.suppressed, current.acknowledged_by) == (11, 1, "ops@contoso.com")
    assert report.steps[step].failed_total == 11
    world.dataverse.fail(step, world.later(hours=2) - timedelta(minutes=1))  # 27 h: the silence is over
    world.watcher().run()
    assert world.channels.kinds() == ["opened", "reminder"]
    world.later(hours=1)
    world.watcher().run()
    assert world.channels.kinds() == ["opened", "reminder", "resolved"]  # one reminder; the resolution always
    closed = world.incidents().listing()["incidents"][0]
    assert (closed["status"], closed["acknowledged_by"], closed["suppressed"]) == ("resolved", None, 1)
    with pytest.raises(IncidentNotOpen):
        world.incidents().snooze(incident.id, world.now[0] + timedelta(days=1))


def test_a_snooze_withholds_the_reminder_until_it_ends(world: World) -> None:
    step = our_step(world)
    world.dataverse.fail(step, NOW - timedelta(minutes=1))
    incident = world.watcher().run().steps[step].incident
    assert incident is not None
    assert world.incidents().snooze(incident.id, NOW + timedelta(hours=30)) is not None
    world.dataverse.fail(step, world.later(hours=25))
    world.watcher().run()
    assert world.channels.kinds() == ["opened"]
    world.dataverse.fail(step, world.later(hours=6))
    world.watcher().run()
    assert world.channels.kinds() == ["opened", "reminder"]


def test_an_unknown_incident_is_none_and_an_ack_defaults_to_seven_days(world: World) -> None:
    step = our_step(world)
    assert world.incidents().acknowledge(f"20261201T000000Z-{step}", "ops") is None  # no row yet
    assert world.incidents().acknowledge("not-an-id", "ops") is None
    world.dataverse.fail(step, NOW - timedelta(minutes=1))
    incident = world.watcher().run().steps[step].incident
    assert incident is not None
    assert world.incidents().acknowledge(f"20261201T000000Z-{step}", "ops") is None  # not this step's incident
    acked = world.incidents().acknowledge(incident.id, "ops")
    assert acked is not None
    assert acked.acknowledged_until == NOW + timedelta(days=7)


def test_a_channel_that_failed_gets_the_alert_it_missed_on_the_next_run(world: World) -> None:
    step = our_step(world)
    world.dataverse.fail(step, NOW - timedelta(minutes=1))
    world.channels.down = {"slack"}
    world.watcher().run()
    assert world.incidents().listing()["incidents"][0]["undelivered"] == ["slack"]
    world.channels.down = set()
    world.later(minutes=5)
    world.watcher().run()
    assert [(a.kind, targets) for a, targets in world.channels.sent] == [
        ("opened", ("teams", "slack")),
        ("opened", ("slack",)),
    ]
    world.later(minutes=5)
    world.watcher().run()
    assert len(world.channels.sent) == 2  # delivered: not again


# -- two watchers --------------------------------------------------------------------------------------------------
def test_a_second_watcher_finds_the_step_busy_while_the_first_holds_its_lease(world: World) -> None:
    step = our_step(world)
    world.dataverse.fail(step, NOW - timedelta(minutes=1), 3)
    inner: list[Any] = []

    def second_watcher_meanwhile() -> None:
        world.dataverse.before_jobs_read = None
        inner.append(world.watcher().run())

    world.dataverse.before_jobs_read = second_watcher_meanwhile
    outer = world.watcher().run()
    assert inner[0].steps[step].status == "busy"
    assert (inner[0].steps[step].failed_jobs, outer.steps[step].failed_jobs) == (0, 3)
    assert world.channels.kinds() == ["opened"]


def test_two_watchers_racing_past_a_lapsed_lease_count_each_job_once_and_alert_once(world: World) -> None:
    world.storage.exclusive = False  # the lease lapsed: only the row's ETag stands between them
    step = our_step(world)
    world.watcher().run()  # the step's row exists
    world.dataverse.fail(step, world.later(minutes=5) - timedelta(minutes=1), 3)
    inner: list[Any] = []
    world.table().before_next("update_entity", lambda: inner.append(world.watcher().run()))
    outer = world.watcher().run()
    assert (inner[0].steps[step].status, inner[0].steps[step].failed_jobs) == ("watched", 3)
    assert (outer.steps[step].status, outer.steps[step].failed_jobs) == ("conflict", 0)
    assert world.channels.kinds() == ["opened"]
    assert world.watcher().run().steps[step].failed_jobs == 0
    assert world.table().get_entity(STEP_PARTITION, step)["FailedTotal"] == world.dataverse.failed_count(step)


def test_watchers_in_threads_count_every_job_once(world: World) -> None:
    steps = [our_step(world, f"step {n}") for n in range(4)]
    for n, step in enumerate(steps):
        world.dataverse.fail(step, NOW - timedelta(minutes=2), n + 1)
    reports: list[Any] = []
    threads = [threading.Thread(target=lambda: reports.append(world.watcher().run())) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    world.later(minutes=5)
    reports.append(world.watcher().run())
    for step in steps:
        assert sum(r.steps[step].failed_jobs for r in reports) == world.dataverse.failed_count(step)
    assert sorted(world.channels.kinds()) == ["opened"] * 4


# -- the report ------------------------------------------------------------------------------------------------
def test_the_report_has_per_step_totals_and_the_incident(world: World) -> None:
    step = our_step(world)
    world.dataverse.fail(step, NOW - timedelta(minutes=1), 2)
    report = world.watcher().run().to_dict()
    incident = f"{NOW - timedelta(minutes=1):%Y%m%dT%H%M%SZ}-{step}"
    assert report["steps"] == {
        step: {
            "step_name": "dvbridge: Update of account",
            "endpoint": f"{APP_HOST}/api/webhooks/dataverse",
            "status": "watched",
            "failed_jobs": 2,
            "failed_total": 2,
            "skipped": 0,
            "incident": {"id": incident, "status": "open", "failures": 2},
            "alerts_sent": 1,
            "suppressed": 0,
        }
    }
    assert (report["failed_jobs"], report["alerts_sent"], report["discovery"]) == (2, 1, "endpoints")
    assert report["started_at"] == "2026-12-01T12:00:00.000Z"


# -- through the expiry notifier --------------------------------------------------------------------------------
def test_incident_alerts_reach_the_expiry_channels_as_teams_slack_and_json(world: World) -> None:
    from shared.expiry import model
    from shared.expiry.notify import parse_channels
    from tests.fakes.expiry import AlertSink
    from tests.fakes.http import FakeHttp
    from tests.fakes.keyvault import FakeSecretStore

    http, store = FakeHttp(), FakeSecretStore()
    sink = AlertSink(http, store, parse_channels("teams:teams-url,slack:slack-url,json:json-url"))
    world.channels = watcher_functions.ExpiryChannels(sink.notifier(store), model)  # type: ignore[assignment]
    step = our_step(world)
    world.dataverse.fail(step, NOW - timedelta(minutes=1), 2)
    sink.down("slack")
    report = world.watcher().run()
    card = sink.received["teams"][0]["attachments"][0]["content"]
    assert card["body"][0]["text"] == "Webhook deliveries failing: dvbridge: Update of account"
    assert {"title": "Failed deliveries", "value": "2"} in card["body"][2]["facts"]
    (sent,) = sink.json_alerts()
    assert (sent["kind"], sent["severity"], sent["credential"]["id"]) == (
        "webhook_incident_opened",
        "error",
        f"webhook-step:{step}",
    )
    assert sent["credential"]["owner"] == f"{APP_HOST}/api/webhooks/dataverse"
    assert sink.received["slack"] == []
    incident = report.steps[step].incident
    assert incident is not None
    assert world.incidents().listing()["incidents"][0]["undelivered"] == ["slack"]
    sink.up("slack")
    world.later(minutes=5)
    world.watcher().run()
    assert sink.received["slack"][0]["text"] == "Webhook deliveries failing: dvbridge: Update of account"
    assert len(sink.json_alerts()) == 1  # only the channel that missed it


def test_the_channels_are_the_expiry_channels_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EnvVars.EXPIRY_CHANNELS, "ops=json:alerts-webhook-url")
    read: list[str] = []
    root = SimpleNamespace(secret=lambda name: read.append(name) or "https://sink.invalid/x", http_session=lambda: None)
    channels = watcher_functions.expiry_channels(root)  # type: ignore[arg-type]
    assert [c.name for c in channels._notifier.channels] == ["ops"]
    monkeypatch.setenv(EnvVars.EXPIRY_CHANNELS, "pager:alerts-webhook-url")
    with pytest.raises(ConfigError, match="EXPIRY_CHANNELS"):
        watcher_functions.expiry_channels(root)  # type: ignore[arg-type]


# -- the routes over the real incidents store ----------------------------------------------------------------------
def silence(name: str, incident_id: str, body: bytes) -> tuple[int, Any]:
    function = {"ack": watcher_functions.webhook_incident_ack, "snooze": watcher_functions.webhook_incident_snooze}
    user = function[name].build().get_user_function()
    request = func.HttpRequest("POST", f"http://localhost/api/webhooks-admin/incidents/{incident_id}/{name}",
                               body=body, route_params={"id": incident_id})  # fmt: skip
    answer = user(request)
    return answer.status_code, json.loads(answer.get_body())


def test_the_incident_routes_silence_an_open_incident_and_refuse_a_resolved_one(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watcher_functions, "incidents", world.incidents)
    step = our_step(world)
    world.dataverse.fail(step, NOW - timedelta(minutes=1))
    incident = world.watcher().run().steps[step].incident
    assert incident is not None
    status, body = silence("ack", incident.id, b'{"by": "ops@contoso.com", "days": 2}')
    assert (status, body["acknowledged_by"], body["acknowledged_until"]) == (
        200,
        "ops@contoso.com",
        "2026-12-03T12:00:00.000Z",
    )
    status, body = silence("snooze", f"20260101T000000Z-{step}", b'{"days": 1}')
    assert (status, body["error"].startswith("no incident")) == (404, True)
    world.later(hours=1)
    world.watcher().run()  # quiet for an hour: resolved
    status, body = silence("snooze", incident.id, b'{"days": 1}')
    assert status == 409
    assert "resolved" in body["error"]
    listing = watcher_functions.webhook_incidents.build().get_user_function()(
        func.HttpRequest("GET", "http://localhost/api/webhooks-admin/incidents", body=b"")
    )
    assert json.loads(listing.get_body())["incidents"][0]["id"] == incident.id
