"""The webhook receivers through the local Functions host: what is not genuine is refused (401), what is too
big or malformed is refused with the reason (413/400), and no input at all gets a 500."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from shared.composition import token_provider
from shared.dataverse.client import ClientOptions, DataverseClient
from shared.webhooks.signing import NONCE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from tests.devstack_process import DevstackProcess

pytestmark = pytest.mark.e2e

ONE_MB = 1024 * 1024
REFUSALS = {400, 401, 404, 413}


def keys(stack: DevstackProcess) -> dict[str, Any]:
    return dict(json.loads((stack.directory / "host-keys.json").read_text()))


def dataverse_url(stack: DevstackProcess, code: str | None = None) -> str:
    """With ``code``, as Dataverse's WebhookKey auth calls it; without, for requests that send the key header."""
    url = f"{stack.env['FUNCTIONS_BASE_URL']}/api/webhooks/dataverse"
    return url if code is None else f"{url}?code={code}"


def key_header(stack: DevstackProcess, function: str) -> dict[str, str]:
    """The function key in ``x-functions-key`` (keeps it out of the client's URL logging)."""
    return {"x-functions-key": keys(stack)["functions"][function]["default"]}


def post_signed(stack: DevstackProcess, data: bytes, headers: dict[str, str], source: str = "erp") -> requests.Response:
    url = f"{stack.env['FUNCTIONS_BASE_URL']}/api/webhooks/{source}"
    return requests.post(url, data=data, headers=headers | key_header(stack, "signed_webhook"), timeout=30)


def context(**overrides: Any) -> dict[str, Any]:
    return {
        "MessageName": "Update", "PrimaryEntityName": "contact", "PrimaryEntityId": str(uuid.uuid4()),
        "RequestId": str(uuid.uuid4()), "OperationId": str(uuid.uuid4()), "InputParameters": [], **overrides,
    }  # fmt: skip


def signed_headers(
    secret: str, body: bytes, *, timestamp: int | None = None, nonce: str | None = None
) -> dict[str, str]:
    moment = int(time.time()) if timestamp is None else timestamp
    nonce = nonce or uuid.uuid4().hex
    return {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: str(moment),
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: sign(secret, moment, nonce, body),
    }


def test_the_dataverse_receiver_needs_its_function_key(hooks_stack: DevstackProcess) -> None:
    body = context()
    other_function = keys(hooks_stack)["functions"]["signed_webhook"]["default"]
    assert requests.post(dataverse_url(hooks_stack, None), json=body, timeout=30).status_code == 401
    assert requests.post(dataverse_url(hooks_stack, "not-the-key"), json=body, timeout=30).status_code == 401
    assert requests.post(dataverse_url(hooks_stack, other_function), json=body, timeout=30).status_code == 401
    answer = requests.post(
        dataverse_url(hooks_stack), json=body, headers=key_header(hooks_stack, "dataverse_webhook"), timeout=30
    )
    assert (answer.status_code, answer.json()) == (202, {"accepted": True})


def test_oversized_and_malformed_dataverse_bodies_are_refused_with_the_reason(hooks_stack: DevstackProcess) -> None:
    url = dataverse_url(hooks_stack)
    auth = key_header(hooks_stack, "dataverse_webhook")
    padded = json.dumps(context(Padding="x" * ONE_MB)).encode()
    too_big = requests.post(url, data=padded, headers=auth | {"Content-Type": "application/json"}, timeout=30)
    assert too_big.status_code == 413
    assert "1,048,576" in too_big.json()["error"]

    not_json = requests.post(url, data=b"{not json", headers=auth, timeout=30)
    assert not_json.status_code == 400
    assert "not JSON" in not_json.json()["error"]
    missing = requests.post(url, json={"MessageName": "Create"}, headers=auth, timeout=30)
    assert missing.status_code == 400
    assert "PrimaryEntityName" in missing.json()["error"]
    assert "PrimaryEntityId" in missing.json()["error"]
    bad_id = requests.post(url, json=context(PrimaryEntityId="42"), headers=auth, timeout=30)
    assert bad_id.status_code == 400
    assert "PrimaryEntityId" in bad_id.json()["error"]


def test_signed_webhook_is_upserted_into_dataverse_once(
    hooks_stack: DevstackProcess, erp_secret: str, app_env: Any
) -> None:
    number = f"ERP-{uuid.uuid4().hex[:8]}"
    body = json.dumps({"customer_no": f"  {number} ", "name": "Signed Webhook Ltd"}).encode()
    headers = signed_headers(erp_secret, body)
    first = post_signed(hooks_stack, body, headers)
    assert (first.status_code, first.json()) == (202, {"accepted": True})
    replayed = post_signed(hooks_stack, body, headers)
    assert replayed.status_code == 401
    assert "nonce" in replayed.json()["error"]

    app_env(hooks_stack)
    client = DataverseClient(
        hooks_stack.env["DATAVERSE_URL"],
        token_provider(),
        options=ClientOptions(verify=hooks_stack.env["REQUESTS_CA_BUNDLE"]),
    )
    deadline = time.monotonic() + 30
    rows: list[dict[str, Any]] = []
    while not rows and time.monotonic() < deadline:
        time.sleep(0.2)
        rows = list(client.query("accounts", filter=f"accountnumber eq '{number}'", select=["name", "accountnumber"]))
    assert [(r["accountnumber"], r["name"]) for r in rows] == [(number, "Signed Webhook Ltd")]  # trimmed, once


def test_signed_webhooks_that_are_not_genuine_get_401(hooks_stack: DevstackProcess, erp_secret: str) -> None:
    body = json.dumps({"customer_no": "X1", "name": "x"}).encode()

    wrong_secret = signed_headers("not-the-secret", body)
    tampered = signed_headers(erp_secret, body) | {"Content-Type": "application/json"}
    stale = signed_headers(erp_secret, body, timestamp=int(time.time()) - 301)
    future = signed_headers(erp_secret, body, timestamp=int(time.time()) + 301)
    unsigned = {"Content-Type": "application/json"}
    cases = {
        "wrong secret": (wrong_secret, body, "signature"),
        "tampered body": (tampered, body + b" ", "signature"),
        "stale timestamp": (stale, body, "window"),
        "future timestamp": (future, body, "window"),
        "no signature headers": (unsigned, body, "missing"),
    }
    for name, (headers, data, reason) in cases.items():
        answer = post_signed(hooks_stack, data, headers)
        assert answer.status_code == 401, name
        assert reason in answer.json()["error"], name
    assert post_signed(hooks_stack, body, {}, "nobody").status_code == 404

    padded = json.dumps({"customer_no": "X1", "pad": "x" * ONE_MB}).encode()
    assert post_signed(hooks_stack, padded, signed_headers(erp_secret, padded)).status_code == 413
    garbage = b"\xff\xfe not json"
    answer = post_signed(hooks_stack, garbage, signed_headers(erp_secret, garbage))
    assert answer.status_code == 400
    assert "not JSON" in answer.json()["error"]


# -- no input produces a 500 -------------------------------------------------------------------------------
# Printable ASCII without leading blanks: what an HTTP client can put in a header at all.
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80).map(str.lstrip)
JSON_LEAVES = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
JSON_VALUES = st.recursive(
    JSON_LEAVES, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)  # fmt: skip
WCF_VALUES = st.one_of(
    JSON_VALUES,
    st.fixed_dictionaries({"__type": st.sampled_from(["EntityReference:#x", "OptionSetValue:#x", "Money:#x"])})
    .flatmap(lambda d: st.fixed_dictionaries({**{k: st.just(v) for k, v in d.items()}, "Id": JSON_VALUES,
                                              "Value": JSON_VALUES, "LogicalName": JSON_VALUES})),
    st.from_regex(r"\A/Date\(-?\d{1,16}([+-]\d{4})?\)/\Z"),
)  # fmt: skip


def mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Most draws valid, so that deliveries get past the first check and reach the deeper paths."""
    return st.sampled_from([True, True, True, False]).flatmap(lambda ok: valid if ok else JSON_VALUES)


CONTEXTS = st.fixed_dictionaries(
    {
        "MessageName": mostly(st.sampled_from(["Create", "Update", "Delete"])),
        "PrimaryEntityName": mostly(st.sampled_from(["contact", "lead"])),
        "PrimaryEntityId": mostly(st.uuids().map(str)),
    },
    optional={
        "RequestId": mostly(st.uuids().map(str)),
        "OperationId": mostly(st.uuids().map(str)),
        "Depth": mostly(st.integers(1, 8)),
        "Stage": mostly(st.sampled_from([10, 20, 40])),
        "InputParameters": mostly(
            st.lists(st.fixed_dictionaries({"key": st.just("Target"), "value": WCF_VALUES}), max_size=2)
        ),
        "PreEntityImages": mostly(st.just([])),
        "PostEntityImages": mostly(st.just([])),
    },
)
BODIES = st.one_of(
    st.binary(max_size=300),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    CONTEXTS.map(lambda v: json.dumps(v).encode()),
)
HEADERS = st.dictionaries(
    st.sampled_from(
        ["content-type", "x-ms-dynamics-msg-size-exceeded", TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER,
         "x-request-id", "x-ms-dynamics-organization"]
    ),
    HEADER_TEXT,
    max_size=4,
)  # fmt: skip
EXAMPLES = 1000


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODIES, headers=HEADERS)
def test_no_dataverse_delivery_gets_a_500(hooks_stack: DevstackProcess, body: bytes, headers: dict[str, str]) -> None:
    auth = key_header(hooks_stack, "dataverse_webhook")
    answer = requests.post(dataverse_url(hooks_stack), data=body, headers=headers | auth, timeout=30)
    event(f"status {answer.status_code}")  # --hypothesis-show-statistics: every path was reached
    assert answer.status_code in REFUSALS | {202}, (answer.status_code, answer.text)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=BODIES,
    headers=HEADERS,
    sign_it=st.booleans(),
    skew=st.integers(-400, 400),
    nonce=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=80),
)
def test_no_signed_delivery_gets_a_500(
    hooks_stack: DevstackProcess,
    erp_secret: str,
    body: bytes,
    headers: dict[str, str],
    sign_it: bool,
    skew: int,
    nonce: str,
) -> None:
    if sign_it:  # past the signature check, so the body and nonce paths are exercised too
        headers = headers | signed_headers(erp_secret, body, timestamp=int(time.time()) + skew, nonce=nonce)
    answer = post_signed(hooks_stack, body, headers)
    event(f"status {answer.status_code}")  # --hypothesis-show-statistics: every path was reached
    assert answer.status_code in REFUSALS | {202}, (answer.status_code, answer.text)
