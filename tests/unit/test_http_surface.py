"""The HTTP surface, audited: every route with its methods, auth level and body limit (AUDITED), and what it
reads of a request with the rules it holds each input to (INPUTS). A route added without an entry in both
fails this file, so each new input gets the same review. Each declared rule is tested: a value outside it
is a 4xx naming the input, with the route's dependencies up or down; only an outage is a 503.
tests/fuzz/test_routes.py fuzzes the same routes with the same fakes."""

from __future__ import annotations

import functools
import inspect
import json
import re
import time
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import azure.functions as func
import pytest
from azure.core.exceptions import ServiceRequestError

import function_app
from shared.expiry.functions import MAX_CREDENTIAL_ID_CHARS, MAX_SILENCE_DAYS
from shared.silences import MAX_BY_CHARS, MAX_SILENCE_BODY_BYTES
from shared.sync.functions import MAX_RUNS_LIMIT
from shared.webhooks import functions as webhook_functions
from shared.webhooks import reconciler_functions, signing, watcher_functions
from shared.webhooks.context import MAX_BODY_BYTES
from shared.webhooks.routes_file import routes
from tests.unit.test_webhook_parsing import SAMPLE as WEBHOOK_SAMPLE
from tests.unit.test_webhook_parsing import with_target_attribute

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
    "webhook_reconcile": ("webhooks-admin/reconcile", ("POST",), "admin", reconciler_functions.MAX_BODY_BYTES),
    "webhook_watch": ("webhooks-admin/watch", ("POST",), "admin", NO_BODY),
    "webhook_incidents": ("webhooks-admin/incidents", ("GET",), "function", NO_BODY),
    "webhook_incident_ack": (
        "webhooks-admin/incidents/{id}/ack",
        ("POST",),
        "function",
        watcher_functions.MAX_SILENCE_BODY_BYTES,
    ),
    "webhook_incident_snooze": (
        "webhooks-admin/incidents/{id}/snooze",
        ("POST",),
        "function",
        watcher_functions.MAX_SILENCE_BODY_BYTES,
    ),
    "credentials_list": ("credentials", ("GET",), "function", NO_BODY),
    "credentials_ack": ("credentials/{id}/ack", ("POST",), "function", MAX_SILENCE_BODY_BYTES),
    "credentials_snooze": ("credentials/{id}/snooze", ("POST",), "function", MAX_SILENCE_BODY_BYTES),
    "rotation_status": ("rotation", ("GET",), "function", NO_BODY),
    "rotation_start": ("rotation/start", ("POST",), "admin", NO_BODY),  # it changes the app's credential
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

    from shared.expiry import wiring as worker

    class Watch:  # the monitor needs Key Vault; the body is refused before it would be used
        clock = staticmethod(lambda: datetime.now(UTC))

    monkeypatch.setattr(worker, "monitor", lambda: Watch())
    snooze = http_functions()["credentials_snooze"][3].get_user_function()  # type: ignore[attr-defined]
    request = func.HttpRequest("POST", "http://localhost/api/credentials/x/snooze", body=body, route_params={"id": "x"})
    answer = snooze(request)
    assert answer.status_code == 400
    assert '{"days": 3}' in json.loads(answer.get_body())["error"]


# -- what each route reads, and the rules it holds them to -----------------------------------------------
@dataclass(frozen=True)
class Rule:
    """One input of a route: the rule it documents, one value inside it and values outside it. Each value
    outside is answered ``refused`` (400 unless said) with a JSON ``error`` that starts with the input's
    name. Body values are raw JSON text, so that literals Python cannot write (NaN, 5,000 digits) are sent."""

    rule: str
    good: str
    bad: tuple[str, ...] = ()
    refused: int = 400


@dataclass(frozen=True)
class Inputs:
    """Everything a route reads of a request. ``strict_query``: a query parameter it does not declare is a
    400 naming it (the function key ``?code=`` excepted); ``body_fields``: the JSON fields it accepts, any
    other a 400. ``before_dependencies``: the refusals decided before any dependency is called, so that
    they stand while storage or Key Vault is down; ``needs``: what the route calls, whose outage is a 503."""

    ok: int  # the status of a good request with its dependencies up
    query: dict[str, Rule] = dataclass_field(default_factory=dict)
    route: dict[str, Rule] = dataclass_field(default_factory=dict)
    body: dict[str, Rule] = dataclass_field(default_factory=dict)
    body_rule: str = "not read"
    bad_bodies: tuple[tuple[bytes, int, str], ...] = ()  # (body, status, part of the error)
    headers: tuple[str, ...] = ()
    strict_query: bool = True
    strict_body: bool = False
    before_dependencies: frozenset[int] = frozenset({400, 413})
    needs: str = ""


NUMBERS_NOT_DAYS = ("null", "[1]", "{}", "true", "false", '"3"', "0", "-1", "3661", "1e300", "NaN", "Infinity",
                    "-Infinity", "9" * 4000, "1" * 40)  # fmt: skip
SILENCE_BODIES = (
    (b"\xff\xfe{}", 400, "not UTF-8"),
    (b"{", 400, "not JSON"),
    (b"[1]", 400, "JSON object"),
    (b'"days"', 400, "JSON object"),
    (b'{"by": "ops", "days": 1, "days": 2}', 400, "'days' appears twice"),
    (b'{"by": "ops", "dayz": 3}', 400, "unknown field(s) 'dayz'"),
    (b'{"by": "ops", "until": "2027-06-01T00:00:00Z", "days": 3}', 400, "either until or days"),
    (b"[" * 100_000 + b"]" * 100_000, 413, "at most"),
)
NOW = datetime.now(UTC)  # the tests' run: an "until" that is good must stay in the future whenever they run
GOOD_UNTIL = f'"{(NOW + timedelta(days=30)):%Y-%m-%dT%H:%M:%SZ}"'
TOO_FAR = f'"{(NOW + timedelta(days=MAX_SILENCE_DAYS + 1)):%Y-%m-%dT%H:%M:%SZ}"'
UNTIL_BAD = ('"9999-99-99"', '"next tuesday"', "5", "null", '"2020-01-01T00:00:00Z"', '"9999-12-31T23:59:59-01:00"',
             '"0001-01-01T00:00:00+01:00"', TOO_FAR, '"2027-01-01T00:00:00Z\\u0000"')  # fmt: skip
CREDENTIAL_ID = "kv-secret:kv-dvbridge:erp-api-key"
ID_RULE = Rule(
    f"a credential id, 1..{MAX_CREDENTIAL_ID_CHARS} characters, none of / \\ # ? or control characters; unknown: 404",
    CREDENTIAL_ID,
    ("", "a/b", "a#b", "a?b", "a\\b", "a\nb", "a\x00b", "x" * (MAX_CREDENTIAL_ID_CHARS + 1)),
)
JOB_RULE = Rule(
    "a job of sync_jobs.yaml; any other name: 404", "accounts", ("nope", "", "accounts/..", "x" * 5000), 404
)
INCIDENT_ID = "20261201T195925Z-3f2a1b2c-0000-4000-8000-000000000001"
INCIDENT_ID_RULE = Rule(
    "an incident id: <first failure, UTC seconds>-<step id>; unknown: 404, resolved: 409",
    INCIDENT_ID,
    ("", "x", "a/b", INCIDENT_ID.upper(), INCIDENT_ID + "\n", "20261201T195925Z-not-a-step", "x" * 600),
)
INCIDENT_DAYS = f"a number of days, 0 < days <= {watcher_functions.MAX_SILENCE_DAYS}, not a boolean"
INCIDENT_DAYS_BAD = (*(v for v in NUMBERS_NOT_DAYS if v != "3661"), str(watcher_functions.MAX_SILENCE_DAYS + 1))
INCIDENT_UNTIL_BAD = (
    *UNTIL_BAD,
    f'"{(NOW + timedelta(days=watcher_functions.MAX_SILENCE_DAYS + 1)):%Y-%m-%dT%H:%M:%SZ}"',
)
INCIDENT_BODY = f"a JSON object, UTF-8, at most {watcher_functions.MAX_SILENCE_BODY_BYTES:,} bytes"
INPUTS: dict[str, Inputs] = {
    "health_live": Inputs(200, strict_query=False),  # a probe must never fail on its URL
    "health_doctor": Inputs(200, needs="the identity chain (a failed step is the doctor's own 503)"),
    "sync_runs": Inputs(
        200,
        query={
            "limit": Rule(
                f"whole number 1..{MAX_RUNS_LIMIT} (default 20)",
                "5",
                ("abc", "1e3", "0", "-1", str(MAX_RUNS_LIMIT + 1), " 5", "+5", "5.0", "٥", "", "9" * 5000),
            )
        },
        needs="storage",
    ),
    "sync_run_now": Inputs(
        200,
        route={"job": JOB_RULE},
        before_dependencies=frozenset({400, 404}),
        needs="storage, Key Vault, Entra, Dataverse",
    ),
    "sync_replay": Inputs(
        200,
        route={"job": JOB_RULE},
        query={
            "run": Rule(
                "a run id: letters, digits, . _ -, 1..100 characters",
                "20261201T195925-3f2a1b",
                ("", "../x", "a/b", "a b", "-x", "x" * 101, "*"),
            )
        },
        before_dependencies=frozenset({400, 404}),
        needs="storage, Key Vault, Entra, Dataverse",
    ),
    "dataverse_webhook": Inputs(
        202,
        body_rule=f"a RemoteExecutionContext, JSON, at most {MAX_BODY_BYTES:,} bytes: tests/unit/test_webhook_parsing",
        bad_bodies=(
            (b"{", 400, "not JSON"),
            (with_target_attribute('"/Date(99999999999999999)/"'), 400, "Target.x: the date"),  # was 503
            (with_target_attribute("9" * 5000), 400, "Target.x: the number"),
            (with_target_attribute('{"__type": "Money:c", "Value": 1e999}'), 400, "Target.x.Value"),
        ),
        headers=("x-ms-dynamics-msg-size-exceeded", "the header auth header, when webhook_routes.yaml sets one"),
        strict_query=False,  # Dataverse's HttpQueryString authentication adds parameters of the customer's choosing
        needs="storage (and Key Vault for header auth)",
    ),
    "signed_webhook": Inputs(
        202,
        route={"source": Rule("a source of webhook_routes.yaml; any other: 404", "erp", ("nope", ""), 404)},
        body_rule=f"a JSON object, at most {MAX_BODY_BYTES:,} bytes, signed",
        bad_bodies=(
            (b"{", 400, "not JSON"),
            (b"[1]", 400, "JSON object"),
            (b'{"customer_no": "C1", "qty": NaN}', 400, "body.qty: the number NaN"),  # was queued, failed later
            (b'{"n": 1e400}', 400, "body.n: the number 1e400"),
            (b'{"a": [{"n": ' + b"9" * 5000 + b"}]}", 400, "body.a[0].n: the number"),
            (b'{"n": 99999999999999999999}', 400, "body.n: the whole number"),
        ),
        headers=("X-Webhook-Timestamp", "X-Webhook-Nonce", "X-Webhook-Signature"),
        strict_query=False,  # senders' own conventions; the signature covers only the body
        before_dependencies=frozenset({404, 413}),  # a bad signature needs the secret to be known as bad
        needs="Key Vault, storage",
    ),
    "webhook_replay": Inputs(200, strict_query=False, needs="storage"),  # takes no input; extra parameters ignored
    "webhook_reconcile": Inputs(
        200,
        body={
            "tables": Rule(
                f"optional; a non-empty list of at most {reconciler_functions.MAX_TABLES} routed tables' logical"
                " names (absent or null: every routed table)",
                '["account"]',
                (
                    "[]",
                    '"account"',
                    "5",
                    "{}",
                    "[5]",
                    '[""]',
                    '["' + "x" * 200 + '"]',
                    "[" + ", ".join(['"account"'] * (reconciler_functions.MAX_TABLES + 1)) + "]",
                ),
            )
        },
        body_rule=f"a JSON object, UTF-8, at most {reconciler_functions.MAX_BODY_BYTES:,} bytes; empty: every table",
        bad_bodies=((b"{", 400, "not JSON"), (b"[1]", 400, "JSON object"), (b'{"table": []}', 400, "unknown field")),
        needs="storage, Key Vault, Entra, Dataverse",
    ),
    "webhook_watch": Inputs(200, needs="storage, Key Vault, Entra, Dataverse"),  # no input: strict query, no body
    "rotation_status": Inputs(200, needs="storage"),
    "rotation_start": Inputs(200, needs="storage, Key Vault, Graph, Entra, Dataverse"),
    "webhook_incidents": Inputs(200, needs="storage"),
    "webhook_incident_ack": Inputs(
        200,
        route={"id": INCIDENT_ID_RULE},
        body={
            "by": Rule(
                f"required; text 1..{MAX_BY_CHARS} characters, no control characters",
                '"ops@contoso.com"',
                (
                    "null",
                    "5",
                    "[]",
                    '""',
                    '"   "',
                    '"a\\u0000b"',
                    '"' + "x" * (MAX_BY_CHARS + 1) + '"',
                ),
            ),
            "until": Rule(
                f"ISO-8601, after now, at most {watcher_functions.MAX_SILENCE_DAYS} days away (or days; neither:"
                " 7 days)",
                GOOD_UNTIL,
                INCIDENT_UNTIL_BAD,
            ),
            "days": Rule(INCIDENT_DAYS, "3", INCIDENT_DAYS_BAD),
        },
        body_rule=f"{INCIDENT_BODY}; until and days exclusive",
        bad_bodies=(*SILENCE_BODIES, (b"{}", 400, "'by' is required")),
        strict_body=True,
        needs="storage",
    ),
    "webhook_incident_snooze": Inputs(
        200,
        route={"id": INCIDENT_ID_RULE},
        body={
            "by": Rule("optional; as for ack", '"ops@contoso.com"', ("5", '""')),
            "until": Rule(
                f"ISO-8601, after now, at most {watcher_functions.MAX_SILENCE_DAYS} days away; until or days required",
                GOOD_UNTIL,
                INCIDENT_UNTIL_BAD,
            ),
            "days": Rule(INCIDENT_DAYS, "3", INCIDENT_DAYS_BAD),
        },
        body_rule=f"{INCIDENT_BODY}; until or days, not both",
        bad_bodies=(*SILENCE_BODIES, (b"{}", 400, "'until' or 'days' is required"), (b"", 400, "is required")),
        strict_body=True,
        needs="storage",
    ),
    "credentials_list": Inputs(200, needs="storage, Key Vault"),
    "credentials_ack": Inputs(
        200,
        route={"id": ID_RULE},
        body={
            "by": Rule(
                f"required; text 1..{MAX_BY_CHARS} characters, no control characters",
                '"ops@contoso.com"',
                ("null", "5", "[]", '""', '"   "', '"a\\u0000b"', '"' + "x" * (MAX_BY_CHARS + 1) + '"'),
            ),
            "until": Rule(
                f"ISO-8601, after now, at most {MAX_SILENCE_DAYS} days away (or days; neither: 7 days)",
                GOOD_UNTIL,
                UNTIL_BAD,
            ),
            "days": Rule(f"a number of days, 0 < days <= {MAX_SILENCE_DAYS}, not a boolean", "3", NUMBERS_NOT_DAYS),
        },
        body_rule=f"a JSON object, UTF-8, at most {MAX_SILENCE_BODY_BYTES:,} bytes; until and days exclusive",
        bad_bodies=(*SILENCE_BODIES, (b"{}", 400, "'by' is required")),
        strict_body=True,
        needs="storage, Key Vault",
    ),
    "credentials_snooze": Inputs(
        200,
        route={"id": ID_RULE},
        body={
            "by": Rule("optional; as for ack", '"ops@contoso.com"', ("5", '""')),
            "until": Rule(
                f"ISO-8601, after now, at most {MAX_SILENCE_DAYS} days away; until or days required",
                GOOD_UNTIL,
                UNTIL_BAD,
            ),
            "days": Rule(f"a number of days, 0 < days <= {MAX_SILENCE_DAYS}, not a boolean", "3", NUMBERS_NOT_DAYS),
        },
        body_rule=f"a JSON object, UTF-8, at most {MAX_SILENCE_BODY_BYTES:,} bytes; until or days, not both",
        bad_bodies=(*SILENCE_BODIES, (b"{}", 400, "'until' or 'days' is required"), (b"", 400, "is required")),
        strict_body=True,
        needs="storage, Key Vault",
    ),
}
EXCLUSIVE = {"until": "days", "days": "until"}  # a body holding both is its own refusal


# -- the routes' dependencies, up (in memory) or down ---------------------------------------------------------
SIGNING_SECRET = "test-signing-secret"  # what the fake Key Vault holds for the erp source
FUNCTION_KEY = "fn-key-never-echoed"  # sent as ?code=: no answer may contain it


class Dependencies:
    """Everything the routes call past their input checks, faked: up (in memory) or down, where every
    call raises ServiceRequestError as an unreachable storage account or Key Vault does. With them down a
    route may answer 503, and only a request it answers 2xx/404/409 with them up may: bad input is bad
    whatever the weather."""

    def __init__(self) -> None:
        self.down = False

    def _up(self) -> None:
        if self.down:
            raise ServiceRequestError("storage down (a test's fake)")

    def storage(self) -> Any:
        self._up()
        return SimpleNamespace(recent_reports=lambda limit: [{"job": "accounts"}] * min(limit, 3),
                               move_messages=lambda source, target: 0)  # fmt: skip

    def sync_context(self) -> Any:
        self._up()
        return SimpleNamespace(storage=self.storage())

    def run_job(self, name: str) -> dict[str, Any]:
        self._up()
        return {"job": name, "status": "succeeded"}

    def replay(self, name: str, job: object, ctx: object, *, run_id: str | None = None) -> Any:
        self._up()
        return SimpleNamespace(to_dict=lambda: {"job": name, "status": "succeeded", "run": run_id})

    def monitor(self) -> Any:
        self._up()

        def silence(credential_id: str, *args: object) -> Any:
            fields = {"acknowledged_by": None, "acknowledged_until": None, "snoozed_until": None}
            return SimpleNamespace(id=credential_id, **fields) if credential_id == CREDENTIAL_ID else None

        return SimpleNamespace(clock=lambda: datetime.now(UTC), levels=(), states=SimpleNamespace(all=list),
                               acknowledge=silence, snooze=silence)  # fmt: skip

    def secret(self, name: str) -> str:
        self._up()
        return SIGNING_SECRET

    def accept(self, *args: object) -> func.HttpResponse:
        self._up()
        return func.HttpResponse(json.dumps({"accepted": True}), status_code=202, mimetype="application/json")

    def reconciler(self) -> Any:
        self._up()
        report = SimpleNamespace(failed=[], to_dict=lambda: {"tables": {"account": {"status": "reconciled"}}})
        return SimpleNamespace(tables=lambda: ["account"], run=lambda tables=None: report)

    def watcher(self) -> Any:
        self._up()
        report = SimpleNamespace(failed=[], to_dict=lambda: {"steps": {}, "failed_jobs": 0})
        return SimpleNamespace(run=lambda: report)

    def incidents(self) -> Any:
        self._up()

        def silence(incident_id: str, *args: object) -> Any:
            if incident_id != INCIDENT_ID:
                return None
            fields = {"id": incident_id, "status": "open", "acknowledged_by": None, "acknowledged_until": None,
                      "snoozed_until": None}  # fmt: skip
            return SimpleNamespace(to_dict=lambda: fields)

        return SimpleNamespace(clock=lambda: datetime.now(UTC), listing=lambda: {"incidents": [], "steps": []},
                               acknowledge=silence, snooze=silence)  # fmt: skip

    def rotator(self) -> Any:
        self._up()
        report = SimpleNamespace(outcome="not due", notices=[], state=None)
        return SimpleNamespace(settings=SimpleNamespace(enabled=True, credential_name="dataverse-client-secret"),
                               states=SimpleNamespace(get=lambda name: None),
                               tick=lambda reason, force=False: report)  # fmt: skip

    def doctor(self) -> Any:
        ok = not self.down
        return SimpleNamespace(ok=ok, to_dict=lambda: {"ok": ok})

    def install(self, monkeypatch: pytest.MonkeyPatch) -> Dependencies:
        from shared import composition
        from shared.expiry import wiring as expiry_wiring
        from shared.identity import doctor
        from shared.sync import engine
        from shared.sync import functions as sync_functions

        monkeypatch.setattr(composition, "worker", lambda: SimpleNamespace(storage=self.storage))
        monkeypatch.setattr(sync_functions, "sync_context", self.sync_context)
        monkeypatch.setattr(sync_functions, "run_job", self.run_job)
        monkeypatch.setattr(engine, "replay_dead_letters", self.replay)
        monkeypatch.setattr(expiry_wiring, "monitor", self.monitor)
        monkeypatch.setattr(expiry_wiring, "build_rotator", self.rotator)
        monkeypatch.setattr(doctor, "run_doctor", self.doctor)
        monkeypatch.setattr(reconciler_functions, "reconciler", self.reconciler)
        monkeypatch.setattr(watcher_functions, "watcher", self.watcher)
        monkeypatch.setattr(watcher_functions, "incidents", self.incidents)
        monkeypatch.setattr(webhook_functions, "_secret", self.secret)
        monkeypatch.setattr(webhook_functions, "_accept_dataverse", self.accept)
        monkeypatch.setattr(webhook_functions, "_accept_signed", self.accept)
        return self


@pytest.fixture
def deps(monkeypatch: pytest.MonkeyPatch) -> Dependencies:
    return Dependencies().install(monkeypatch)


def signed_headers(body: bytes, *, nonce: str = "n-1") -> dict[str, str]:
    ts = int(time.time())
    return {"X-Webhook-Timestamp": str(ts), "X-Webhook-Nonce": nonce,
            "X-Webhook-Signature": signing.sign(SIGNING_SECRET, ts, nonce, body)}  # fmt: skip


def good_request(name: str) -> dict[str, Any]:
    """The parts of a request the route accepts: query, route parameters, headers, body."""
    inputs = INPUTS[name]
    body = {"dataverse_webhook": WEBHOOK_SAMPLE, "signed_webhook": b'{"customer_no": "C1"}'}.get(name, b"")
    if inputs.body:
        first = {"credentials_ack": ("by",), "credentials_snooze": ("days",), "webhook_reconcile": ("tables",),
                 "webhook_incident_ack": ("by",), "webhook_incident_snooze": ("days",)}[name]  # fmt: skip
        body = ("{" + ", ".join(f'"{f}": {inputs.body[f].good}' for f in first) + "}").encode()
    return {
        "params": {"code": FUNCTION_KEY} | {n: rule.good for n, rule in inputs.query.items()},
        "route_params": {n: rule.good for n, rule in inputs.route.items()},
        "headers": signed_headers(body) if name == "signed_webhook" else {},
        "body": body,
    }


def call(name: str, *, params: dict[str, str], route_params: dict[str, str], headers: dict[str, str],
         body: bytes) -> tuple[int, Any]:  # fmt: skip
    """The route's user function on that request, as the host calls it: (status, JSON body or None)."""
    route, methods, _, _ = AUDITED[name]
    user_function = http_functions()[name][3].get_user_function()  # type: ignore[attr-defined]
    request = func.HttpRequest(
        methods[0], f"http://localhost/api/{route}", headers=headers, params=params, route_params=route_params,
        body=body,
    )  # fmt: skip
    answer = user_function(request)
    text = answer.get_body().decode("utf-8", "replace")
    assert FUNCTION_KEY not in text  # the key is never read, let alone echoed
    try:
        return answer.status_code, json.loads(text)
    except ValueError:
        return answer.status_code, None


def error_of(parsed: Any) -> str:
    assert isinstance(parsed, dict), parsed
    assert isinstance(parsed.get("error"), str), parsed
    return str(parsed["error"])


def test_the_audit_declares_the_inputs_of_every_route() -> None:
    assert set(INPUTS) == set(AUDITED)
    for name, inputs in INPUTS.items():
        route = AUDITED[name][0]
        assert set(inputs.route) == set(re.findall(r"\{(\w+)\}", route)), name  # every {param} has its rule
        assert (inputs.body_rule != "not read") == (AUDITED[name][3] is not NO_BODY), name


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_a_good_request_is_answered_with_its_dependencies_up(name: str, deps: Dependencies) -> None:
    status, parsed = call(name, **good_request(name))
    assert status == INPUTS[name].ok, parsed


DECLARED = [
    (name, where, field, value)
    for name, inputs in INPUTS.items()
    for where, rules in (("query", inputs.query), ("route", inputs.route), ("body", inputs.body))
    for field, rule in rules.items()
    for value in rule.bad
]


@pytest.mark.parametrize(("name", "where", "field", "value"), DECLARED)
@pytest.mark.parametrize("down", [False, True], ids=["dependencies up", "dependencies down"])
def test_each_declared_rule_is_enforced_naming_the_input(
    name: str, where: str, field: str, value: str, down: bool, deps: Dependencies
) -> None:
    deps.down = down  # refused before any dependency is called: the same answer during an outage
    request = good_request(name)
    rule = {"query": INPUTS[name].query, "route": INPUTS[name].route, "body": INPUTS[name].body}[where][field]
    if where == "body":
        fields = {f: r.good for f, r in INPUTS[name].body.items() if f in json.loads(request["body"] or b"{}")}
        fields.pop(EXCLUSIVE.get(field, ""), None)
        fields[field] = value
        request["body"] = ("{" + ", ".join(f'"{f}": {v}' for f, v in fields.items()) + "}").encode()
    else:
        request["params" if where == "query" else "route_params"][field] = value
    status, parsed = call(name, **request)
    assert status == rule.refused, (status, parsed)
    error = error_of(parsed)
    if rule.refused == 400:
        assert error.startswith(f"{field} must be"), error
    assert len(error) < 600  # a 5,000-character value is quoted, not echoed


@pytest.mark.parametrize(
    ("name", "body", "status", "reason"),
    [(name, body, status, reason) for name, inputs in INPUTS.items() for body, status, reason in inputs.bad_bodies],
    ids=lambda v: repr(v)[:40] if isinstance(v, bytes) else str(v),
)
def test_bad_bodies_are_refused_with_the_reason(
    name: str, body: bytes, status: int, reason: str, deps: Dependencies
) -> None:
    request = good_request(name)
    request["body"] = body
    if name == "signed_webhook":
        request["headers"] = signed_headers(body)
    answer, parsed = call(name, **request)
    assert answer == status, parsed
    assert reason in error_of(parsed)


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_undeclared_query_parameters_are_refused_where_the_route_is_strict(name: str, deps: Dependencies) -> None:
    request = good_request(name)
    request["params"] |= {"limt": "5", "Code": "another-key"}  # a misspelt parameter; the key in any case
    status, parsed = call(name, **request)
    if INPUTS[name].strict_query:
        assert status == 400
        assert error_of(parsed).startswith("unknown query parameter(s) 'limt'; this route takes:")
        assert "Code" not in error_of(parsed)
    else:
        assert status == INPUTS[name].ok


@pytest.mark.parametrize("name", [n for n, inputs in INPUTS.items() if inputs.strict_body])
def test_undeclared_body_fields_are_refused(name: str, deps: Dependencies) -> None:
    request = good_request(name)
    request["body"] = request["body"][:-1] + b', "owner": "me"}'
    status, parsed = call(name, **request)
    assert status == 400
    assert error_of(parsed).startswith("unknown field(s) 'owner'; the fields are by, until, days")


@pytest.mark.parametrize("name", sorted(n for n, inputs in INPUTS.items() if inputs.needs))
def test_an_outage_is_a_503_with_the_cause(name: str, deps: Dependencies) -> None:
    deps.down = True
    status, parsed = call(name, **good_request(name))
    assert status == 503, parsed
    assert parsed is not None


@pytest.mark.parametrize(
    ("query", "fault"),
    [({"limit": "abc"}, "limit must be a whole number 1..500"), ({"limit": "1e3"}, "got '1e3'")],
)
def test_issue_15_sync_runs_limit_is_a_400_not_an_empty_500(
    query: dict[str, str], fault: str, deps: Dependencies
) -> None:
    status, parsed = call("sync_runs", params=query, route_params={}, headers={}, body=b"")
    assert status == 400
    assert fault in error_of(parsed)


@pytest.mark.parametrize("days", ["null", "[1]", "{}"])
def test_issue_15_ack_days_of_the_wrong_type_is_a_400_not_a_500(days: str, deps: Dependencies) -> None:
    body = f'{{"by": "ops@contoso.com", "days": {days}}}'.encode()
    status, parsed = call("credentials_ack", params={}, route_params={"id": CREDENTIAL_ID}, headers={}, body=body)
    assert status == 400
    assert error_of(parsed).startswith("days must be a number of days greater than 0 and at most 3660")


def test_a_replay_of_one_run_never_becomes_a_replay_of_all(deps: Dependencies) -> None:
    status, parsed = call("sync_replay", params={"run": ""}, route_params={"job": "accounts"}, headers={}, body=b"")
    assert status == 400  # ?run= left empty by a script read as "no run given" before: every dead letter
    status, parsed = call("sync_replay", params={"run": "20261201T195925-3f2a1b"}, route_params={"job": "accounts"},
                          headers={}, body=b"")  # fmt: skip
    assert (status, parsed["run"]) == (200, "20261201T195925-3f2a1b")


def test_an_outbound_job_has_nothing_to_replay(deps: Dependencies) -> None:
    status, parsed = call("sync_replay", params={}, route_params={"job": "shipments-out"}, headers={}, body=b"")
    assert status == 404
    assert "no inbound job named 'shipments-out'" in error_of(parsed)


def test_a_silence_lands_where_the_body_says(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.expiry import wiring as worker

    now = datetime(2026, 12, 1, tzinfo=UTC)
    calls: list[tuple[str, object]] = []

    def silence(action: str) -> Any:
        def record(credential_id: str, *args: object) -> Any:
            calls.append((action, args[-1]))
            return SimpleNamespace(id=credential_id, acknowledged_by=None, acknowledged_until=None, snoozed_until=None)

        return record

    monkeypatch.setattr(worker, "monitor", lambda: SimpleNamespace(clock=lambda: now, acknowledge=silence("ack"),
                                                                     snooze=silence("snooze")))  # fmt: skip
    for name, body in [("credentials_ack", b'{"by": " ops ", "days": 1.5}'), ("credentials_ack", b'{"by": "ops"}'),
                       ("credentials_snooze", b'{"until": "2027-01-01T01:00:00+01:00"}')]:  # fmt: skip
        status, _ = call(name, params={}, route_params={"id": CREDENTIAL_ID}, headers={}, body=body)
        assert status == 200
    assert calls == [
        ("ack", now + timedelta(days=1.5)),
        ("ack", None),  # the monitor's default (7 days)
        ("snooze", datetime(2027, 1, 1, tzinfo=UTC)),
    ]
