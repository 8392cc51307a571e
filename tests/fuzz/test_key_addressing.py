"""Data addresses exactly itself: for any key string, a write through every path that turns a key into a
URL (the client's single requests, the planner's bulk messages and ``$batch``) creates or updates the record
whose key equals that string and no other; a key no URL can carry is refused for that record alone, before
anything is sent. The store is read before and after through the emulator's own change log, not through
OData, so the path under test cannot hide its effects.

``make test`` runs ``FUZZ_EXAMPLES`` (default 500) examples per path; ``make fuzz`` runs 10,000.
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

from shared.dataverse.addressing import PATH_UNSAFE_CHARACTERS, KeyValueRefused
from shared.dataverse.client import ClientOptions, DataverseClient
from shared.dataverse.planner import WritePlanner
from shared.identity.worker import token_provider
from tests.devstack_process import DevstackProcess

pytestmark = pytest.mark.integration

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "500"))
ACCOUNT_NUMBER_MAX = 20  # the scenario's accountnumber column
PROPERTY = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# Characters that mean something to a URL, a key literal, a $batch request line or a store.
TRICKY = [*list("%'/\\?#&+=,();: \r\n\t\x00*<>$@\"[]{}|^`~."), "%27", "%32", "%2F", "%00", "..", "é", "中", "😀"]
NEIGHBOURS = ["C000269", "C000%3269", "C000'269", "contacts", "a", "A", "..", "%00", "x y", "x+y"]
REGRESSIONS = ["C000%3269", "/../contacts#", "a%2Fb", "x%27y", "e@x.com\r\nX-Injected: 1", "%00", "O'Brien", "x y"]


def key_strings() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(min_size=1, max_size=ACCOUNT_NUMBER_MAX),
        st.lists(st.sampled_from([*TRICKY, "C", "0", "2", "6", "9"]), min_size=1, max_size=8).map("".join),
        st.sampled_from(NEIGHBOURS),
    ).filter(lambda s: 0 < len(s) <= ACCOUNT_NUMBER_MAX)


def refusable(value: str) -> bool:
    """No URL can carry it to its record (see shared.dataverse.addressing)."""
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in value) or any(c in value for c in PATH_UNSAFE_CHARACTERS)


class Store:
    """The emulator's change log: what a write did, in every table."""

    def __init__(self, stack: DevstackProcess) -> None:
        self.url = f"{stack.env['DATAVERSE_URL']}/_devstack/changes"
        self.verify = stack.env["REQUESTS_CA_BUNDLE"]

    def version(self) -> int:
        return int(self._get(None)["version"])

    def since(self, version: int) -> dict[str, Any]:
        return self._get(version)

    def _get(self, since: int | None) -> dict[str, Any]:
        params = {"since": str(since if since is not None else 2**62)}
        response = requests.get(self.url, params=params, verify=self.verify, timeout=30)
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
    event("written")
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
    outcome = attempt(lambda: client.upsert("accounts", {"accountnumber": value}, {"name": marker}))
    assert_exactly_this_record(store, before, value, marker, outcome)
    if not refusable(value):
        found = client.get("accounts", {"accountnumber": value}, select=["name"])
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
