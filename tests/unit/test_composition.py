"""The composition root: each per-worker object built once, on first use, from the settings; storage reached
with the managed identity when the app has no connection string (Azure's identity-based storage)."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from shared import composition
from shared.config import Settings
from tests.fakes.graph import FakeTokenCredential
from tests.fakes.sockets import no_sockets  # noqa: F401  # autouse: building objects opens no connection
from tests.unit.test_config import GOOD

pytestmark = pytest.mark.unit


def worker(**changes: object) -> composition.Worker:
    root = composition.Worker(replace(Settings.from_env(GOOD), **changes))
    root._credential = FakeTokenCredential()  # the managed identity, as the platform would hand it over
    return root


def test_identity_based_storage_gets_the_managed_identity() -> None:
    root = worker(storage_connection=None, storage_account_name="dvbridgestore")
    storage = root.storage()
    assert storage._credential is root.credential()  # anonymous requests would all be refused in Azure
    assert storage.blob_service().url == "https://dvbridgestore.blob.core.windows.net/"


def test_a_connection_string_is_used_as_it_is() -> None:
    root = worker(storage_connection="UseDevelopmentStorage=true")
    assert root.storage()._credential is None


def test_each_object_is_built_once_per_worker_even_when_asked_at_once() -> None:
    root = worker(storage_connection="UseDevelopmentStorage=true")
    seen: list[object] = []
    threads = [threading.Thread(target=lambda: seen.append(root.storage())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(s) for s in seen}) == 1
    assert root.secret_store() is root.secret_store()
    assert root.graph() is root.graph()


def test_outside_services_share_one_pooled_session_and_one_caller_per_policy() -> None:
    from shared.outgoing_http import FORWARD, HTTP_SINK

    root = worker()
    assert root.caller(FORWARD) is root.caller(FORWARD)
    assert root.caller(FORWARD) is not root.caller(HTTP_SINK)
    assert root.caller(FORWARD).session is root.caller(HTTP_SINK).session is root.http_session()


def test_the_graph_reader_uses_the_http_timeout_setting() -> None:
    graph = worker(http_timeout_s=7).graph()
    assert graph._caller.policy.read_timeout_s == 7


def test_reset_forgets_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(composition, "_worker", None)
    first = composition.worker()
    assert composition.worker() is first
    composition.reset_worker()
    assert composition.worker() is not first
