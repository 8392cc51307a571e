"""Fuzzing every HTTP route's input: query strings, route parameters, headers and bodies, each route's user
function called as the host calls it (tests/unit/test_http_surface.py declares what each route reads).

Every request is answered twice: with the route's dependencies up (in memory) and down (every call raises
ServiceRequestError, as an unreachable storage account or Key Vault does). Up, no answer is a 5xx; down,
an answer differs from the up one only by being a 503, and a refusal decided before any dependency (a
400 for bad input, 413, an unknown job) stands. So bad input is always a 4xx, and a 503 only an outage.
An exception escaping the user function would be the host's 500: it fails the target.

``make test`` runs ``FUZZ_EXAMPLES`` (default 500) examples per route; ``make fuzz`` runs 10,000 each.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from tests.fuzz.test_parsers import FUZZ, JSON_VALUES, RAW_NUMBERS, mutated, placed, wcf_values
from tests.unit.test_http_surface import (
    AUDITED,
    FUNCTION_KEY,
    INPUTS,
    Dependencies,
    call,
    error_of,
    good_request,
    signed_headers,
)

pytestmark = pytest.mark.unit

# Query parameter names a caller might send: the declared ones, the function key, misspellings.
NEAR_NAMES = ["code", "Code", "limt", "LIMIT", "run ", "job", "id", "days", ""]
HEADER_NAMES = ["Content-Type", "x-ms-dynamics-msg-size-exceeded", "X-Webhook-Timestamp", "X-Webhook-Nonce",
                "X-Webhook-Signature", "x-functions-key", "Authorization"]  # fmt: skip


def declared_values(name: str, where: str) -> list[str]:
    inputs = INPUTS[name]
    rules = {"query": inputs.query, "route": inputs.route, "body": inputs.body}[where]
    return [value for rule in rules.values() for value in (rule.good, *rule.bad)]


@st.composite
def query_strings(draw: st.DrawFn, name: str) -> dict[str, str]:
    declared = sorted(INPUTS[name].query)
    values = st.sampled_from(declared_values(name, "query") or ["1"]) | RAW_NUMBERS | st.text(max_size=30)
    mode = draw(st.sampled_from(["none", "declared", "any"]))
    if mode == "none":
        params = {}
    elif mode == "declared" and declared:  # the declared parameters only: their values get exercised
        params = draw(st.dictionaries(st.sampled_from(declared), values, max_size=len(declared)))
    else:
        names = st.sampled_from(declared + NEAR_NAMES) | st.text(max_size=10)
        params = draw(st.dictionaries(names, values, max_size=3))
    if draw(st.booleans()):  # most callers send the key as ?code=; its value must never be echoed
        params["code"] = FUNCTION_KEY
    return params


@st.composite
def route_parameters(draw: st.DrawFn, name: str) -> dict[str, str]:
    inputs = INPUTS[name]
    return {
        param: draw(st.just(rule.good) | st.sampled_from(rule.bad) | st.text(max_size=60))
        for param, rule in inputs.route.items()
    }


@st.composite
def silence_bodies(draw: st.DrawFn, name: str) -> bytes:
    """JSON objects of the declared fields (and a stranger), each value raw JSON text: good, declared bad,
    arbitrary JSON, or raw numbers Python cannot write."""
    rules = INPUTS[name].body
    values = (
        st.sampled_from(declared_values(name, "body"))
        | JSON_VALUES.map(json.dumps)
        | RAW_NUMBERS
        | st.text(max_size=30).map(json.dumps)
    )
    # Start from good values for some fields (so that some bodies are accepted), then change a few.
    chosen = {f: rules[f].good for f in draw(st.lists(st.sampled_from(sorted(rules)), max_size=2, unique=True))}
    if draw(st.booleans()):
        chosen |= draw(st.dictionaries(st.sampled_from([*rules, "owner"]) | st.text(max_size=6), values, max_size=2))
    text = "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in chosen.items()) + "}"
    return text.encode()


def bodies(name: str) -> st.SearchStrategy[bytes]:
    good = good_request(name)["body"]
    if name in ("credentials_ack", "credentials_snooze"):
        return silence_bodies(name) | mutated(good) | st.binary(max_size=200)
    if name == "dataverse_webhook":
        values = st.tuples(st.sampled_from(["Target attribute", "post image", "field Depth"]), wcf_values())
        return values.map(lambda pv: placed(*pv)) | mutated(good) | st.binary(max_size=200)
    if name == "signed_webhook":
        return JSON_VALUES.map(lambda v: json.dumps(v).encode()) | mutated(good) | st.binary(max_size=200)
    return st.just(b"") | st.binary(max_size=50)  # a route that reads no body must not mind one


@st.composite
def requests(draw: st.DrawFn, name: str) -> dict[str, Any]:
    """A good request with some of its parts fuzzed: one bad part at a time reaches deeper than all at once."""
    request = good_request(name)
    fuzzed = draw(st.sets(st.sampled_from(["query", "route", "headers", "body"]), min_size=1))
    if "query" in fuzzed:
        request["params"] = draw(query_strings(name))
    if "route" in fuzzed:
        request["route_params"] = draw(route_parameters(name))
    if "body" in fuzzed:
        request["body"] = draw(bodies(name))
    if "headers" in fuzzed:
        request["headers"] = draw(st.dictionaries(st.sampled_from(HEADER_NAMES) | st.text(min_size=1, max_size=12),
                                                  st.text(max_size=40), max_size=3))  # fmt: skip
    elif name == "signed_webhook":  # genuinely signed: the body parsing is reached
        request["headers"] = signed_headers(request["body"], nonce=draw(st.text(min_size=1, max_size=20)))
    return request


@pytest.fixture
def deps(monkeypatch: pytest.MonkeyPatch) -> Dependencies:
    return Dependencies().install(monkeypatch)


def label(status: int) -> str:
    return "accepted" if status < 400 else f"refused: {status}"


@pytest.mark.parametrize("name", sorted(AUDITED))
@FUZZ
@given(data=st.data())
def test_no_route_answers_bad_input_with_a_5xx(name: str, data: st.DataObject, deps: Dependencies) -> None:
    request = data.draw(requests(name))
    deps.down = False
    up, up_body = call(name, **request)
    event(label(up))
    assert up < 500, (up, up_body)
    if up >= 400:
        error_of(up_body)  # every refusal is JSON {"error": "<the reason>"}
    deps.down = True
    down, down_body = call(name, **request)
    event(f"down: {'503' if down == 503 and up != 503 else 'same answer'}")
    assert down in (up, 503), (up, down, down_body)
    if up in INPUTS[name].before_dependencies:
        assert down == up, (up, down, down_body)  # decided on the input alone: an outage does not change it
    if 400 <= down < 500:
        error_of(down_body)
    assert down_body is not None  # a 503 says why, as JSON (the doctor's is its report)
