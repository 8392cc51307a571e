"""Fuzzing every parser that reads input from outside: each one returns a typed result or raises one of
dvbridge's typed errors, and never anything else (no KeyError, UnicodeDecodeError, RecursionError...).

``make test`` runs ``FUZZ_EXAMPLES`` (default 500) examples per target; ``make fuzz`` runs 10,000 each.
Inputs mix hypothesis' own structures with mutations of a valid sample (bytes inserted, dropped or
replaced), which reach far deeper into a parser than random bytes alone.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from shared.dataverse.batch_codec import DecodedPart, decode_batch
from shared.errors import BatchDecodeError, ConfigError, DvbridgeError, WebhookRejected
from shared.expiry.eventgrid import EventRejected, VaultExpiryEvent, parse_vault_event
from shared.identity.connection_string import parse_connection_string
from shared.sync.jobs import load_jobs
from shared.webhooks.context import DataverseEvent, parse_remote_execution_context
from shared.webhooks.routes import load_routes
from shared.webhooks.signing import sign, verify
from tests.unit.test_batch_codec import REFERENCE_RESPONSE
from tests.unit.test_batch_codec import B as BATCH_BOUNDARY
from tests.unit.test_expiry_payloads import DOCS_SAMPLE, TOPIC
from tests.unit.test_webhook_parsing import ACCOUNT_ID as ACCOUNT_GUID
from tests.unit.test_webhook_parsing import SAMPLE as CONTEXT_SAMPLE

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "500"))
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    database=None,  # CI and `make fuzz` start clean; a crash is reproduced from the printed example
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


T = TypeVar("T")


def attempt[T](call: Callable[[], T], typed: type[Exception]) -> T | Exception:
    """The call's result, or the typed error it raised; any other exception fails the test (a crash)."""
    try:
        return call()
    except typed as exc:
        return exc


def outcome(result: object) -> str:
    return f"refused: {type(result).__name__}" if isinstance(result, Exception) else "accepted"


def record(result: object) -> None:
    """Label the example for --hypothesis-show-statistics: a target that only ever refuses (or only ever
    accepts) would be a weak fuzzer."""
    event(outcome(result))


def mutated(sample: bytes, max_edits: int = 8) -> st.SearchStrategy[bytes]:
    """The sample with up to ``max_edits`` edits: a byte range replaced by other bytes (possibly none)."""

    @st.composite
    def edit(draw: st.DrawFn) -> bytes:
        data = bytearray(sample)
        for _ in range(draw(st.integers(0, max_edits))):
            start = draw(st.integers(0, len(data)))
            end = draw(st.integers(start, min(len(data), start + 16)))
            data[start:end] = draw(st.binary(max_size=16))
        return bytes(data)

    return edit()


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=30,
)


def keyed_json(keys: list[str]) -> st.SearchStrategy[Any]:
    """JSON objects whose keys are mostly the ones the parser looks for."""
    return st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=24),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.sampled_from(keys) | st.text(max_size=8), children, max_size=6)
        ),
        max_leaves=40,
    )


# -- $batch replies --------------------------------------------------------------------------------------
CONTENT_TYPES = st.sampled_from(
    [f"multipart/mixed; boundary={BATCH_BOUNDARY}", f'multipart/mixed; boundary="{BATCH_BOUNDARY}"']
) | st.text(max_size=60)


@FUZZ
@given(
    content_type=CONTENT_TYPES,
    # One or two edits mostly keep the multipart frame, so the part and HTTP parsers get exercised too.
    body=mutated(REFERENCE_RESPONSE, max_edits=2) | mutated(REFERENCE_RESPONSE) | st.binary(max_size=2000),
)
@example(f"multipart/mixed; boundary={BATCH_BOUNDARY}", b"\x80")  # found: UnicodeDecodeError escaped
@example(  # found: a change set whose first delimiter lost a dash decoded as an empty change set
    f"multipart/mixed; boundary={BATCH_BOUNDARY}", REFERENCE_RESPONSE.replace(b"\r\n--changeset", b"\r\n-changeset", 2)
)
def test_batch_replies_decode_or_raise_batch_decode_error(content_type: str, body: bytes) -> None:
    parts = attempt(lambda: decode_batch(content_type, body), BatchDecodeError)
    record(parts)
    if isinstance(parts, Exception):
        assert isinstance(parts, DvbridgeError)
        return
    assert all(isinstance(p, DecodedPart) and p.results for p in parts)
    assert all(isinstance(r.status, int) and 100 <= r.status <= 999 for p in parts for r in p.results)


# -- Dataverse RemoteExecutionContext ---------------------------------------------------------------------
CONTEXT_KEYS = [
    "MessageName", "PrimaryEntityName", "PrimaryEntityId", "InputParameters", "PreEntityImages", "PostEntityImages",
    "Depth", "Attributes", "key", "value", "__type", "Id", "LogicalName", "CorrelationId", "RequestId", "Stage",
]  # fmt: skip


@FUZZ
@given(
    body=mutated(CONTEXT_SAMPLE) | keyed_json(CONTEXT_KEYS).map(lambda v: json.dumps(v).encode()) | st.binary(),
    headers=st.dictionaries(st.sampled_from(["x-ms-dynamics-msg-size-exceeded", "Content-Type", "x"]), st.text()),
)
def test_dataverse_deliveries_parse_or_are_refused_with_400_or_413(body: bytes, headers: dict[str, str]) -> None:
    parsed = attempt(lambda: parse_remote_execution_context(body, headers), WebhookRejected)
    record(parsed)
    if isinstance(parsed, WebhookRejected):
        assert parsed.status in (400, 413)
        return
    assert isinstance(parsed, DataverseEvent)
    json.dumps(parsed.to_dict())  # what the receiver enqueues must serialise


# -- the context's value conversions ------------------------------------------------------------------------
# Values built as JSON text, so that literals Python cannot write reach the parser as a sender would send
# them: numbers of thousands of digits, 1e400, NaN, dates far outside any calendar.
RAW_NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.integers(1, 6000).map(lambda n: "9" * n),  # past Python's 4,300-digit int limit
    st.sampled_from(["1e400", "-1e400", "1e308", "-0", "0.0", "NaN", "Infinity", "-Infinity", "1E-400", "2.5e-324"]),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)
DATE_TEXT = st.one_of(RAW_NUMBERS, st.integers(-(2**64), 2**64).map(str)).flatmap(
    lambda ms: st.sampled_from(["", "+0000", "-0700", "+9999"]).map(lambda zone: json.dumps(f"/Date({ms}{zone})/"))
)
GUID_TEXT = st.sampled_from([json.dumps(ACCOUNT_GUID), json.dumps("{" + ACCOUNT_GUID.upper() + "}"), '"nope"', "12",
                             json.dumps(ACCOUNT_GUID + "_"), json.dumps(ACCOUNT_GUID.replace("-", ""))])  # fmt: skip
WCF_KINDS = ["Money", "OptionSetValue", "EntityReference", "Entity", "EntityCollection", "AliasedValue", "Other"]


def wcf_values() -> st.SearchStrategy[str]:
    """JSON text for an attribute value: plain JSON, raw numbers, dates, and WCF-typed objects of them."""
    plain_values = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=12)
    leaves = st.one_of(plain_values.map(json.dumps), JSON_VALUES.map(json.dumps), RAW_NUMBERS, DATE_TEXT, GUID_TEXT)

    def extend(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        kind = st.sampled_from(WCF_KINDS).map(
            lambda k: json.dumps(f"{k}:http://schemas.microsoft.com/xrm/2011/Contracts")
        )
        members = st.dictionaries(
            st.sampled_from(["__type", "Value", "Id", "LogicalName", "Name", "Attributes", "Entities", "key", "value"])
            | st.text(max_size=6),
            children | kind,
            max_size=4,
        )
        return st.one_of(
            st.lists(children, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]"),
            members.map(lambda m: "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in m.items()) + "}"),
            st.tuples(kind, children).map(lambda kv: f'{{"__type": {kv[0]}, "Value": {kv[1]}}}'),
            st.tuples(GUID_TEXT | children, children).map(
                lambda ref: f'{{"__type": "EntityReference:c", "Id": {ref[0]}, "LogicalName": {ref[1]}}}'
            ),
            st.lists(st.tuples(st.text(max_size=6).map(json.dumps) | children, children), max_size=3).map(
                lambda pairs: '{"Attributes": [' + ", ".join(f'{{"key": {k}, "value": {v}}}' for k, v in pairs) + "]}"
            ),
        )

    return st.recursive(leaves, extend, max_leaves=12)


# Where a fuzzed value goes in the sample, and what a refusal's reason must name.
PLACES = {
    "Target attribute": "Target.fuzzed",
    "Target Attributes": "Target",
    "post image attribute": "PostEntityImages[Image].fuzzed",
    "post image": "PostEntityImages[Image]",
    "pre image attribute": "PreEntityImages[Pre].fuzzed",
    **{f"field {name}": name for name in ("PrimaryEntityId", "RequestId", "CorrelationId", "Depth", "Stage", "Mode",
                                          "OrganizationName", "MessageName")},
}  # fmt: skip


def placed(place: str, value_json: str) -> bytes:
    """The webhook sample of test_webhook_parsing with the value at ``place``, as JSON text."""
    context = json.loads(CONTEXT_SAMPLE)
    target = context["InputParameters"][0]["value"]
    marker = "__fuzzed__"
    pair = {"key": "fuzzed", "value": marker}
    if place == "Target attribute":
        target["Attributes"].append(pair)
    elif place == "Target Attributes":
        target["Attributes"] = marker
    elif place == "post image attribute":
        context["PostEntityImages"][0]["value"]["Attributes"].append(pair)
    elif place == "post image":
        context["PostEntityImages"][0]["value"] = marker
    elif place == "pre image attribute":
        context["PreEntityImages"] = [{"key": "Pre", "value": {"Attributes": [pair]}}]
    else:
        context[place.removeprefix("field ")] = marker
    return json.dumps(context).replace(json.dumps(marker), value_json).encode()


def plain(value: Any) -> bool:
    """What the processor may receive: JSON without NaN or infinities, whole numbers within 64 bits."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(plain(v) for v in value)
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return True
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    return isinstance(value, float) and math.isfinite(value)


@FUZZ
@given(
    # Attribute positions take any plain JSON, so they are drawn more often than the typed fields.
    place=st.sampled_from([p for p in PLACES if "attribute" in p]) | st.sampled_from(sorted(PLACES)),
    value_json=wcf_values(),
)
@example("Target attribute", '"/Date(' + "9" * 5000 + ')/"')  # found (issue 15): int max-str-digits -> 503
@example("Target attribute", '"/Date(99999999999999999)/"')  # found (issue 15): year out of range -> 503
@example("post image attribute", "1e400")  # accepted as inf before
def test_context_values_convert_or_are_refused_naming_where(place: str, value_json: str) -> None:
    parsed = attempt(lambda: parse_remote_execution_context(placed(place, value_json)), WebhookRejected)
    record(parsed)
    if isinstance(parsed, WebhookRejected):
        assert parsed.status == 400
        assert PLACES[place] in parsed.reason, parsed.reason
        assert len(parsed.reason) < 400  # a 5,000-digit value is quoted, not echoed
        return
    assert isinstance(parsed, DataverseEvent)
    event_ = parsed.to_dict()
    assert plain(event_), event_
    json.dumps(event_, allow_nan=False)  # what the receiver enqueues must serialise as strict JSON


# -- signed generic webhooks -------------------------------------------------------------------------------
SIGNED_HEADERS = ["X-Webhook-Timestamp", "X-Webhook-Nonce", "X-Webhook-Signature"]


@st.composite
def signed_requests(draw: st.DrawFn) -> tuple[dict[str, str], bytes, bool]:
    """A correctly signed request, then maybe tampered with; the flag says whether it is still genuine."""
    body = draw(st.binary(max_size=300))
    ts, nonce = int(time.time()) + draw(st.integers(-600, 600)), draw(st.text(min_size=1, max_size=80))
    headers = {SIGNED_HEADERS[0]: str(ts), SIGNED_HEADERS[1]: nonce, SIGNED_HEADERS[2]: sign("s3cret", ts, nonce, body)}
    tampered = False
    if draw(st.booleans()):
        name = draw(st.sampled_from(SIGNED_HEADERS))
        value = draw(st.text(max_size=100))
        tampered = value != headers[name]
        headers[name] = value
    if draw(st.booleans()):
        new_body = draw(mutated(body))
        tampered = tampered or new_body != body
        body = new_body
    return headers, body, not tampered


@FUZZ
@given(request=signed_requests())
def test_signed_webhooks_verify_only_when_untouched_and_fresh(request: tuple[dict[str, str], bytes, bool]) -> None:
    headers, body, genuine = request
    fresh = abs(time.time() - int(headers[SIGNED_HEADERS[0]])) < 290 if genuine else False
    nonce = attempt(lambda: verify("s3cret", headers, body), WebhookRejected)
    record(nonce)
    if isinstance(nonce, WebhookRejected):
        assert nonce.status == 401
        assert not (genuine and fresh and len(headers[SIGNED_HEADERS[1]]) <= 200), nonce.reason
        return
    assert genuine, "a tampered request was accepted"
    assert nonce == headers[SIGNED_HEADERS[1]]


# -- job definitions and webhook routes ------------------------------------------------------------------
JOBS_SAMPLE = (ROOT / "sync_jobs.yaml").read_bytes()
ROUTES_SAMPLE = (ROOT / "webhook_routes.yaml").read_bytes()


@st.composite
def yaml_documents(draw: st.DrawFn, sample: bytes) -> bytes:
    """The shipped file with whole lines dropped, repeated or given another value, or byte edits."""
    if draw(st.booleans()):
        return draw(mutated(sample))
    lines = sample.decode().splitlines()
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["drop", "repeat", "value"]))
        if action == "drop":
            del lines[i]
        elif action == "repeat":
            lines.insert(i, lines[i])
        elif ":" in lines[i]:
            head = lines[i].split(":", 1)[0]
            value = draw(st.sampled_from(["", "-1", "[]", "{}", "null", "1e999", "&a", "*a", "!!binary x"]) | st.text())
            lines[i] = f"{head}: {value}"
        if not lines:
            break
    return "\n".join(lines).encode()


def load_config_file[T](
    factory: pytest.TempPathFactory, name: str, document: bytes, loader: Callable[[Path], T]
) -> T | None:
    """Write the document and load it: a ConfigError must name the file in every problem; None then."""
    path = factory.mktemp("config") / name
    path.write_bytes(document)
    loaded = attempt(lambda: loader(path), ConfigError)
    record(loaded)
    if isinstance(loaded, ConfigError):
        assert all(str(path) in p for p in loaded.problems), loaded.problems
        return None
    return loaded


@FUZZ
@given(document=yaml_documents(JOBS_SAMPLE))
@example(b"\x80" + JOBS_SAMPLE)  # found: UnicodeDecodeError escaped
def test_job_files_load_or_raise_config_error(tmp_path_factory: pytest.TempPathFactory, document: bytes) -> None:
    jobs = load_config_file(tmp_path_factory, "sync_jobs.yaml", document, load_jobs)
    assert jobs is None or all(isinstance(name, str) for name in jobs)


@FUZZ
@given(document=yaml_documents(ROUTES_SAMPLE))
@example(b"\x80" + ROUTES_SAMPLE)  # the same, in the routes loader
def test_route_files_load_or_raise_config_error(tmp_path_factory: pytest.TempPathFactory, document: bytes) -> None:
    routes = load_config_file(tmp_path_factory, "webhook_routes.yaml", document, load_routes)
    assert routes is None or isinstance(routes.sources, dict)


# -- Event Grid (Key Vault expiry events) ---------------------------------------------------------------
EVENT_KEYS = ["id", "topic", "source", "subject", "eventType", "type", "data", "ObjectName", "VaultName", "EXP",
              "Version", "NBF"]  # fmt: skip


@st.composite
def vault_events(draw: st.DrawFn) -> Any:
    if draw(st.booleans()):
        return draw(keyed_json(EVENT_KEYS))
    event = json.loads(json.dumps(DOCS_SAMPLE))
    target = event if draw(st.booleans()) else event["data"]
    key = draw(st.sampled_from(sorted(target)))
    target[key] = draw(JSON_VALUES | st.integers(min_value=-(10**400), max_value=10**400))
    return event


@FUZZ
@given(event=vault_events())
@example({**DOCS_SAMPLE, "data": {**DOCS_SAMPLE["data"], "EXP": 10**400}})  # found: OverflowError escaped
def test_event_grid_events_parse_or_raise_event_rejected(event: Any) -> None:
    parsed = attempt(lambda: parse_vault_event(event, (TOPIC,)), EventRejected)
    record(parsed)
    if isinstance(parsed, EventRejected):
        assert str(parsed)
        return
    assert isinstance(parsed, VaultExpiryEvent)
    assert parsed.kind in ("secret", "certificate")
    assert parsed.object_name


# -- Dataverse connection strings ---------------------------------------------------------------------
CONNECTION_PARTS = st.sampled_from(
    ["AuthType", "Url", "ClientId", "ClientSecret", "Thumbprint", "TenantId", "Password", "=", ";", "'", '"', " "]
)


@FUZZ
@given(text=st.lists(CONNECTION_PARTS | st.text(max_size=12), max_size=20).map("".join) | st.text())
def test_connection_strings_parse_or_raise_credential_format_error(text: str) -> None:
    parsed = attempt(lambda: parse_connection_string(text), ConfigError)  # CredentialFormatError
    record(parsed)
    if isinstance(parsed, ConfigError):
        assert "connection string" in str(parsed)
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in parsed.items())


# -- app settings -------------------------------------------------------------------------------------------
def _app_read_settings() -> list[Any]:
    from shared.settings_registry import SETTINGS, ReadBy

    return [s for s in SETTINGS if s.read_by is not ReadBy.HOST and not s.pattern]


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    declared=st.sampled_from(_app_read_settings()),
    value=st.text(st.characters(blacklist_categories=["Cs"]), max_size=60) | st.from_regex(r"-?[0-9]{1,40}(\.[0-9]+)?"),
)
def test_any_value_of_any_setting_is_accepted_or_a_config_error_naming_it(declared: Any, value: str) -> None:
    """Whatever an operator types into an app setting, the reader answers with a value or a ConfigError that
    names the setting; a value that may hold a secret never appears in the message."""
    from shared.config import SettingsReader

    reader = SettingsReader({declared.name: value})
    reader.read(declared.name)
    refused: ConfigError | None = None
    try:
        reader.raise_problems()
    except ConfigError as exc:
        refused = exc
    event(f"{'refused' if refused else 'accepted'} {declared.type}")
    if refused is not None:
        assert declared.name in str(refused)
        if declared.secret and len(value.strip()) > 3:
            assert value.strip() not in str(refused)
