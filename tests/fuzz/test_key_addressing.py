"""Data addresses exactly itself: for any key string, a write through every path that turns a key into a
URL (the client's single requests, the planner's bulk messages and ``$batch``) creates or updates the record
whose key equals that string and no other; a key no URL can carry is refused for that record alone, before
anything is sent. The store is read before and after through the emulator's own change log, not through
OData, so the path under test cannot hide its effects.

``make test`` runs ``FUZZ_EXAMPLES`` (default 500) examples per path and ``make fuzz`` 10,000; the sync and
webhook paths run one run (of up to 25 and 10 keys) per 5 and 25 examples: a run costs a file or a
delivery per key, through Azurite and the local host.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from shared.composition import token_provider
from shared.dataverse.addressing import PATH_UNSAFE_CHARACTERS, KeyValueRefused
from shared.dataverse.client import ClientOptions, DataverseClient
from shared.dataverse.planner import WritePlanner
from tests.devstack_process import DevstackProcess

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "500"))
SECONDS_PER_EXAMPLE_BUDGET = 0.25  # a few requests to devstack each; the per-test timeout scales with the count
pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(max(300, int(FUZZ_EXAMPLES * SECONDS_PER_EXAMPLE_BUDGET))),
]
ACCOUNT_NUMBER_MAX = 20  # the scenario's accountnumber column
PROPERTY = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# Characters that mean something to a URL, a key literal, a $batch request line or a store.
TRICKY = [*list("%'/\\?#&+=,();: \r\n\t\x00*<>$@\"[]{}|^`~."), "%27", "%32", "%2F", "%00", ".."]
TRICKY += ["é", "中", "😀", "\ud800"]  # beyond ASCII, and a lone surrogate (no UTF-8 form)
NEIGHBOURS = ["C000269", "C000%3269", "C000'269", "contacts", "a", "A", "..", "%00", "x y", "x+y"]
REGRESSIONS = ["C000%3269", "/../contacts#", "a%2Fb", "x%27y", "e@x.com\r\nX-Injected: 1", "%00", "O'Brien", "x y"]


def key_strings() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(min_size=1, max_size=ACCOUNT_NUMBER_MAX),
        st.lists(st.sampled_from([*TRICKY, "C", "0", "2", "6", "9"]), min_size=1, max_size=8).map("".join),
        st.sampled_from(NEIGHBOURS),
    ).filter(lambda s: 0 < len(s) <= ACCOUNT_NUMBER_MAX)


def refusable(value: str) -> bool:
    """No request can carry it to its record: a control character or a lone surrogate (no UTF-8)."""
    return any(ord(c) < 0x20 or ord(c) == 0x7F or 0xD800 <= ord(c) <= 0xDFFF for c in value)


def by_query(value: str) -> bool:
    """No URL path can carry it: the record is found by a ``$filter`` query and written by its id."""
    return any(c in value for c in PATH_UNSAFE_CHARACTERS)


class Store:
    """The emulator's change log: what a write did, in every table."""

    def __init__(self, stack: DevstackProcess) -> None:
        self.url = f"{stack.env['DATAVERSE_URL']}/_devstack/changes"
        self.verify = stack.env["REQUESTS_CA_BUNDLE"]
        self.session = requests.Session()  # one TLS connection for every read, not a handshake per example

    def version(self) -> int:
        return int(self._get(None)["version"])

    def since(self, version: int) -> dict[str, Any]:
        return self._get(version)

    def _get(self, since: int | None) -> dict[str, Any]:
        params = {"since": str(since if since is not None else 2**62)}
        response = self.session.get(self.url, params=params, verify=self.verify, timeout=30)
        response.raise_for_status()
        return dict(response.json())


@pytest.fixture(scope="module")
def world(devstack: DevstackProcess) -> Iterator[tuple[DataverseClient, Store]]:
    settings_env = devstack.app_settings()
    saved = dict(os.environ)
    os.environ.update(settings_env)
    from tests.conftest import reset_all_workers

    reset_all_workers()
    client = DataverseClient(
        devstack.env["DATAVERSE_URL"],
        token_provider(),
        options=ClientOptions(verify=devstack.env["REQUESTS_CA_BUNDLE"], max_concurrency=2),
    )
    for number in NEIGHBOURS:  # records a mis-addressed write would land on
        client.upsert("accounts", {"accountnumber": number}, {"name": "neighbour"})
    yield client, Store(devstack)
    os.environ.clear()
    os.environ.update(saved)
    reset_all_workers()


def assert_exactly_this_record(store: Store, before: int, value: str, marker: str, outcome: object) -> None:
    changes = store.since(before)
    if refusable(value):
        event("refused before sending")
        assert isinstance(outcome, KeyValueRefused), f"{value!r} should be refused, got {outcome!r}"
        assert changes["written"] == {}, f"a refused key changed the store: {changes}"
        assert changes["deleted"] == {}, f"a refused key deleted from the store: {changes}"
        return
    event("written by key" if not by_query(value) else "written by id after a query")
    assert not isinstance(outcome, Exception), f"{value!r}: {outcome!r}"
    assert changes["deleted"] == {}, changes
    assert set(changes["written"]) == {"account"}, f"{value!r} wrote to {sorted(changes['written'])}"
    rows = changes["written"]["account"]
    assert [(r["data"].get("accountnumber"), r["data"].get("name")) for r in rows] == [(value, marker)], (
        f"{value!r} changed {[r['data'].get('accountnumber') for r in rows]}"
    )


def attempt(call: Callable[[], object]) -> object:
    try:
        return call()
    except KeyValueRefused as refused:
        return refused


@PROPERTY
@given(value=key_strings())
@example(value=REGRESSIONS[0])
@example(value=REGRESSIONS[1])
@example(value=REGRESSIONS[2])
@example(value=REGRESSIONS[3])
@example(value=REGRESSIONS[4])
@example(value=REGRESSIONS[5])
@example(value=REGRESSIONS[6])
def test_a_single_upsert_writes_exactly_the_record_with_that_key(world: Any, value: str) -> None:
    client, store = world
    marker = uuid.uuid4().hex
    before = store.version()
    key = {"accountnumber": value}
    outcome = attempt(lambda: client.upsert("accounts", key, {"name": marker}, table="account"))
    assert_exactly_this_record(store, before, value, marker, outcome)
    if not refusable(value):
        found = client.get("accounts", key, select=["name"], table="account")
        assert found is not None
        assert found["name"] == marker


@pytest.mark.parametrize("strategy", ["bulk", "batch"])
@PROPERTY
@given(value=key_strings())
@example(value=REGRESSIONS[0])
@example(value=REGRESSIONS[1])
@example(value=REGRESSIONS[4])
@example(value=REGRESSIONS[5])
def test_the_planner_writes_exactly_the_record_with_that_key(world: Any, strategy: str, value: str) -> None:
    client, store = world
    marker = uuid.uuid4().hex
    before = store.version()
    run = WritePlanner(client).write(
        "account", "accounts", [{"accountnumber": value, "name": marker}], key=("accountnumber",), strategy=strategy
    )
    [result] = list(run)
    outcome: object = KeyValueRefused("accountnumber", result.message or "") if result.code == "InvalidKey" else result
    if not refusable(value):
        assert result.ok, f"{strategy} {value!r}: {result.code} {result.message}"
    assert_exactly_this_record(store, before, value, marker, outcome)


# -- through the sync: a JSONL file of generated keys, one inbound run per example ----------------------
SYNC_RUNS = max(5, FUZZ_EXAMPLES // 5)  # each run carries up to SYNC_KEYS_PER_RUN keys
SYNC_KEYS_PER_RUN = 25


@pytest.fixture(scope="module")
def sync_world(world: Any, devstack: DevstackProcess) -> Any:
    from shared.storage import Storage
    from shared.sync.engine import SyncContext

    client, store = world
    storage = Storage(devstack.env["AzureWebJobsStorage"])
    container = storage.blob_service().get_container_client("erp-import")
    if not container.exists():
        container.create_container()
    return SyncContext(storage, client), store, container


@settings(PROPERTY, max_examples=SYNC_RUNS)
@given(values=st.lists(key_strings(), min_size=1, max_size=SYNC_KEYS_PER_RUN, unique=True))
@example(values=REGRESSIONS)
def test_a_sync_run_writes_exactly_the_records_with_those_keys(sync_world: Any, values: list[str]) -> None:
    import json

    from shared.sync.engine import run_inbound
    from shared.sync.jobs import InboundJob

    ctx, store, container = sync_world
    prefix = f"keys-{uuid.uuid4().hex[:8]}"
    markers = {value: uuid.uuid4().hex for value in values}
    lines = [json.dumps({"number": value, "name": markers[value]}) for value in values]
    container.upload_blob(f"{prefix}/rows.jsonl", "\n".join(lines).encode(), overwrite=True)
    job = InboundJob.model_validate(
        {
            "direction": "inbound",
            "source": {"kind": "blob_jsonl", "container": "erp-import", "prefix": f"{prefix}/"},
            "table": "account",
            "entity_set": "accounts",
            "key": ["accountnumber"],
            "mapping": {"accountnumber": {"source": "number"}, "name": {"source": "name"}},
        }
    )
    before = store.version()
    report = run_inbound(prefix, job, ctx)
    changes = store.since(before)

    def refusal(value: str) -> str | None:
        if not value.strip():
            return "MissingKey"
        if len(value) > ACCOUNT_NUMBER_MAX:
            return "TooLong"
        return "InvalidKey" if refusable(value) else None

    written = {v for v in values if refusal(v) is None}
    letters = {d["record"]["number"]: d["code"] for _, d in ctx.storage.read_dead_letters(prefix, report.run_id)}
    assert letters == {v: refusal(v) for v in values if v not in written}
    assert report.written == len(written), report
    assert changes["deleted"] == {}
    assert set(changes["written"]) <= {"account"}, f"the run wrote to {sorted(changes['written'])}"
    landed = {r["data"]["accountnumber"]: r["data"]["name"] for r in changes["written"].get("account", [])}
    assert landed == {v: markers[v] for v in written}  # each key's own row, and no other record
    event("every key written" if not letters else "some keys dead-lettered, the others written")


# -- through the signed-webhook route of the local host: one delivery per key --------------------------
WEBHOOK_RUNS = max(3, FUZZ_EXAMPLES // 25)
WEBHOOK_KEYS_PER_RUN = 10
WEBHOOK_SETTLE_S = 60.0


@pytest.fixture(scope="module")
def webhook_world(hooks_stack: DevstackProcess, erp_secret: str) -> Any:
    from shared.storage import Storage
    from tests.e2e.test_webhooks_receivers import key_header

    url = f"{hooks_stack.env['FUNCTIONS_BASE_URL']}/api/webhooks/erp"
    letters = Storage(hooks_stack.env["AzureWebJobsStorage"]).container("webhook-deadletters")
    return erp_secret, url, key_header(hooks_stack, "signed_webhook"), Store(hooks_stack), letters


@settings(PROPERTY, max_examples=WEBHOOK_RUNS)
@given(values=st.lists(key_strings(), min_size=1, max_size=WEBHOOK_KEYS_PER_RUN, unique_by=lambda v: v.strip()))
@example(values=REGRESSIONS)
def test_signed_webhooks_write_exactly_the_records_with_those_keys(webhook_world: Any, values: list[str]) -> None:
    import json
    import time

    from tests.e2e.test_webhooks_receivers import signed_headers

    secret, url, function_key, store, letters = webhook_world
    run = uuid.uuid4().hex
    markers = {value: f"{run}-{i}" for i, value in enumerate(values)}
    before = store.version()
    for value in values:
        body = json.dumps({"customer_no": value, "name": markers[value]}).encode()
        answer = requests.post(url, data=body, headers=signed_headers(secret, body) | function_key, timeout=30)
        assert answer.status_code == 202, (value, answer.status_code, answer.text)

    def refusal(value: str) -> str | None:  # the route trims customer_no (webhook_routes.yaml)
        trimmed = value.strip()
        if not trimmed:
            return "MissingKey"
        if len(trimmed) > ACCOUNT_NUMBER_MAX:
            return "TooLong"
        return "InvalidKey" if refusable(trimmed) else None

    expected_landed = {v.strip(): markers[v] for v in values if refusal(v) is None}
    expected_letters = {markers[v]: refusal(v) for v in values if refusal(v) is not None}
    deadline = time.monotonic() + WEBHOOK_SETTLE_S
    while True:
        changes = store.since(before)
        landed = {r["data"]["accountnumber"]: r["data"]["name"] for r in changes["written"].get("account", [])}
        found: dict[str, str] = {}
        for blob in letters.list_blobs(name_starts_with="erp/"):
            letter = json.loads(letters.download_blob(blob.name).readall())
            if str(letter["record"].get("name", "")).startswith(run):
                found[letter["record"]["name"]] = letter["code"]
        if (len(landed) >= len(expected_landed) and len(found) >= len(expected_letters)) or (
            time.monotonic() > deadline
        ):
            break
        time.sleep(0.2)
    assert changes["deleted"] == {}
    assert set(changes["written"]) <= {"account"}, f"the deliveries wrote to {sorted(changes['written'])}"
    assert landed == expected_landed  # each key's own row, and no other record
    assert found == expected_letters
    event("every key written" if not found else "some keys dead-lettered, the others written")
