"""The HTTP surface, audited: every route with its methods, auth level and body limit. A route added without
an entry here fails this test, so each new input gets the same review."""

from __future__ import annotations

import functools
import inspect
import json

import azure.functions as func
import pytest

import function_app
from shared.expiry.functions import MAX_SILENCE_BODY_BYTES
from shared.webhooks import functions as webhook_functions
from shared.webhooks import signing
from shared.webhooks.context import MAX_BODY_BYTES
from shared.webhooks.routes_file import routes

pytestmark = pytest.mark.unit

NO_BODY = None  # the function never reads the request body
# function name: (route, methods, auth level, largest body it reads)
AUDITED: dict[str, tuple[str, tuple[str, ...], str, int | None]] = {
    "health_live": ("health/live", ("GET",), "anonymous", NO_BODY),  # the platform's liveness probe
    "health_doctor": ("health/doctor", ("GET",), "function", NO_BODY),
    "sync_runs": ("sync/runs", ("GET",), "function", NO_BODY),
    "sync_run_now": ("sync/{job}/run", ("POST",), "function", NO_BODY),
    "sync_replay": ("sync/{job}/replay", ("POST",), "admin", NO_BODY),
    "dataverse_webhook": ("webhooks/dataverse", ("POST",), "function", MAX_BODY_BYTES),
    "signed_webhook": ("webhooks/{source}", ("POST",), "function", MAX_BODY_BYTES),
    "webhook_replay": ("webhooks-admin/replay", ("POST",), "admin", NO_BODY),
    "credentials_list": ("credentials", ("GET",), "function", NO_BODY),
    "credentials_ack": ("credentials/{id}/ack", ("POST",), "function", MAX_SILENCE_BODY_BYTES),
    "credentials_snooze": ("credentials/{id}/snooze", ("POST",), "function", MAX_SILENCE_BODY_BYTES),
}


@functools.cache  # the worker calls get_functions() once; a second call refuses the duplicate names
def http_functions() -> dict[str, tuple[str, tuple[str, ...], str, object]]:
    found = {}
    for function in function_app.app.get_functions():
        trigger = function.get_trigger()
        if trigger.get_binding_name() == "httpTrigger":
            methods = tuple(str(getattr(m, "value", m)) for m in trigger.methods or ())
            found[function.get_function_name()] = (trigger.route, methods, trigger.auth_level.value, function)
    return found


def test_every_http_route_is_audited_and_only_the_liveness_probe_is_anonymous() -> None:
    found = http_functions()
    assert {name: spec[:3] for name, spec in found.items()} == {name: spec[:3] for name, spec in AUDITED.items()}
    assert [name for name, spec in found.items() if spec[2] == "anonymous"] == ["health_live"]


@pytest.mark.parametrize("name", [n for n, spec in AUDITED.items() if spec[3] is not NO_BODY])
def test_bodies_above_the_limit_get_413_before_any_work(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    route, _, _, limit = AUDITED[name]
    assert limit is not None
    user_function = http_functions()[name][3].get_user_function()  # type: ignore[attr-defined]

    def no_secrets(secret_name: str) -> str:
        raise AssertionError(f"Key Vault was read ({secret_name}) for an oversized body")

    monkeypatch.setattr(webhook_functions, "_secret", no_secrets)
    source = next(iter(routes().sources), "erp")  # a configured signed source, so the limit is what answers
    params = {"job": "accounts", "source": source, "id": "keyvault-secret:erp-api-key"}
    request = func.HttpRequest(
        "POST", f"http://localhost/api/{route}", body=b"x" * (limit + 1), route_params=params, headers={}
    )
    answer = user_function(request)
    assert answer.status_code == 413
    assert f"{limit:,}" in answer.get_body().decode()


def test_webhook_secrets_and_signatures_are_compared_in_constant_time() -> None:
    receiver = webhook_functions.dataverse_webhook.build().get_user_function()
    for source in (inspect.getsource(signing.verify), inspect.getsource(receiver)):
        assert "hmac.compare_digest" in source
        assert " == expected" not in source
        assert "!= expected" not in source


@pytest.mark.parametrize("body", [b'{"days": 1e300}', b'{"until": "9999-99-99"}', b"[1]", b"{"])
def test_a_bad_snooze_is_a_400_naming_the_fix(body: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import UTC, datetime

    from shared.expiry import worker

    class Watch:  # the monitor needs Key Vault; the body is refused before it would be used
        clock = staticmethod(lambda: datetime.now(UTC))

    monkeypatch.setattr(worker, "monitor", lambda: Watch())
    snooze = http_functions()["credentials_snooze"][3].get_user_function()  # type: ignore[attr-defined]
    request = func.HttpRequest("POST", "http://localhost/api/credentials/x/snooze", body=body, route_params={"id": "x"})
    answer = snooze(request)
    assert answer.status_code == 400
    assert '{"days": 3}' in json.loads(answer.get_body())["error"]
