"""SecretStore: TTL cache and the bounded stale fallback, against a scripted SecretClient."""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from azure.core.exceptions import ServiceRequestError

from shared.errors import AuthError
from shared.identity.secret_store import STALE_RETRY_INTERVAL_S, SecretStore

pytestmark = pytest.mark.unit

TTL_S, MAX_STALE_S = 60, 300


class ScriptedClient:
    """Answers get_secret from a script of values or exceptions; counts calls."""

    def __init__(self, script: list[Any]) -> None:
        self.script = script
        self.calls = 0

    def get_secret(self, name: str) -> Any:
        self.calls += 1
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        props = SimpleNamespace(version=f"v{self.calls}", content_type="text/plain", expires_on=None, tags={})
        return SimpleNamespace(value=step, properties=props)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_store(client: ScriptedClient, clock: Callable[[], float]) -> SecretStore:
    return SecretStore(
        "https://vault.example",
        credential=object(),  # type: ignore[arg-type]
        ttl_s=TTL_S,
        max_stale_s=MAX_STALE_S,
        clock=clock,
        secret_client=client,  # type: ignore[arg-type]
    )


def test_one_get_per_ttl() -> None:
    client, clock = ScriptedClient(["first-value", "second-value"]), Clock()
    store = make_store(client, clock)
    assert [store.get("s").value for _ in range(5)] == ["first-value"] * 5
    clock.now += TTL_S + 1
    assert store.get("s").value == "second-value"
    assert client.calls == 2


def test_stale_value_served_while_key_vault_is_unreachable(caplog) -> None:
    down = ServiceRequestError("connection refused")
    client, clock = ScriptedClient(["cached-value", down, "fresh-value"]), Clock()
    store = make_store(client, clock)
    store.get("s")
    clock.now += TTL_S + 10
    with caplog.at_level(logging.WARNING):
        assert store.get("s").value == "cached-value"
    assert any("secret_served_stale" in r.getMessage() for r in caplog.records)
    # Inside the retry interval we don't hammer the vault again...
    clock.now += STALE_RETRY_INTERVAL_S / 2
    assert store.get("s").value == "cached-value"
    assert client.calls == 2
    # ...after it we try again, and recover.
    clock.now += STALE_RETRY_INTERVAL_S
    assert store.get("s").value == "fresh-value"


def test_stale_window_is_bounded() -> None:
    down = ServiceRequestError("connection refused")
    client, clock = ScriptedClient(["cached-value", down]), Clock()
    store = make_store(client, clock)
    store.get("s")
    clock.now += TTL_S + MAX_STALE_S + 1
    with pytest.raises(AuthError) as caught:
        store.get("s")
    assert caught.value.code == "KeyVaultUnreachable"


def test_a_refusal_is_never_hidden_by_the_cache() -> None:
    from azure.core.exceptions import HttpResponseError

    forbidden = HttpResponseError(message="Operation get is not allowed on a disabled secret.")
    forbidden.status_code = 403
    client, clock = ScriptedClient(["cached-value", forbidden]), Clock()
    store = make_store(client, clock)
    store.get("s")
    clock.now += TTL_S + 1
    with pytest.raises(AuthError):
        store.get("s")


def test_repr_never_shows_the_value() -> None:
    client, clock = ScriptedClient(["hunter2-super-secret"]), Clock()
    store = make_store(client, clock)
    secret = store.get("s")
    assert "hunter2-super-secret" not in repr(secret)
    assert "hunter2-super-secret" not in repr(store)
