"""Dataverse's HttpHeader authentication: the receiver compares the header with a Key Vault secret before it
parses or enqueues anything."""

from __future__ import annotations

import json
import uuid
from typing import Any

import azure.functions as func
import pytest

from shared.webhooks import functions
from shared.webhooks.routes import HeaderAuth, RoutesFile

pytestmark = pytest.mark.unit

SECRET = "s3cr3t-" + uuid.uuid4().hex
CONTEXT = json.dumps(
    {"MessageName": "Create", "PrimaryEntityName": "account", "PrimaryEntityId": str(uuid.uuid4())}
).encode()
receiver = functions.dataverse_webhook.build().get_user_function()


@pytest.fixture
def accepted(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    routes = RoutesFile(dataverse_header_auth=HeaderAuth(header="x-dvb-auth", secret="dataverse-webhook-header"))
    monkeypatch.setattr(functions, "routes", lambda: routes)
    looked_up: list[str] = []

    def secret(name: str) -> str:
        looked_up.append(name)
        return SECRET

    calls: list[tuple[str, str]] = []

    def accept(message: dict[str, Any]) -> func.HttpResponse:
        calls.append((str(message["source"]), str(message["key"])))
        return func.HttpResponse(status_code=202)

    monkeypatch.setattr(functions, "_secret", secret)
    monkeypatch.setattr(functions, "_accept_dataverse", accept)
    return calls


def post(headers: dict[str, str], body: bytes = CONTEXT) -> func.HttpResponse:
    request = func.HttpRequest("POST", "http://localhost/api/webhooks/dataverse", headers=headers, body=body)
    return receiver(request)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "headers",
    [{}, {"x-dvb-auth": ""}, {"x-dvb-auth": SECRET[:-1]}, {"x-dvb-auth": SECRET + "x"}, {"x-other": SECRET}],
    ids=["missing", "empty", "short", "long", "other-header"],
)
def test_a_missing_or_wrong_header_is_401_and_nothing_is_enqueued(
    accepted: list[tuple[str, str]], headers: dict[str, str]
) -> None:
    answer = post(headers)
    assert answer.status_code == 401
    assert json.loads(answer.get_body()) == {"error": "the x-dvb-auth header is missing or wrong"}
    assert SECRET not in answer.get_body().decode()
    assert accepted == []


def test_the_right_header_is_accepted_and_the_header_name_is_case_insensitive(
    accepted: list[tuple[str, str]],
) -> None:
    assert post({"X-DVB-Auth": SECRET}).status_code == 202
    assert [scope for scope, _ in accepted] == ["dataverse"]


def test_the_header_is_checked_before_the_body(accepted: list[tuple[str, str]]) -> None:
    assert post({}, body=b"not json").status_code == 401  # an unauthenticated caller learns nothing about parsing
    assert post({"x-dvb-auth": SECRET}, body=b"not json").status_code == 400
