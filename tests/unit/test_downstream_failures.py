"""Issue 17: no route answers a dependency's failure with a bare 500. Each HTTP route is driven in-process through
the registered blueprints with its dependencies failing in each way that matters to it: storage unreachable,
busy or refusing; Key Vault refusing or unreachable; Entra refusing or unreachable; Dataverse throttled, down
or denying a privilege; an HTTP sink or source API refusing or unreachable. The sync routes run the real
door, context builder and run code on in-memory storage, client, planner and HTTP (tests/fakes), so an HTTP
sink's 400 travels through the real outbound run.

The answer is 503 for what a retry can fix (with Retry-After when throttled), 502 for a refusal no retry
changes, never 500; its JSON names what failed and what to check, and holds no secret, token or query string
(each failure plants some). A route registered without a case here fails this file."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Any

import azure.functions as func
import pytest
from azure.core.exceptions import HttpResponseError, ServiceRequestError

from shared import composition
from shared.errors import AuthError, DataverseError, ThrottledError
from shared.failure_answers import scrub
from shared.sync import engine, http_source, jobs_file
from shared.sync.jobs import InboundJob, OutboundJob
from shared.webhooks import functions as webhook_functions
from shared.webhooks.routes_file import routes
from tests.fakes.http import FakeHttp, answer
from tests.fakes.sockets import no_sockets  # noqa: F401  # autouse: these tests never open a socket
from tests.fakes.sync_store import FakeDataverse, FakeMetadata, FakePlanner, FakeSyncStore, Outcome
from tests.unit.test_http_surface import AUDITED, CREDENTIAL_ID, SIGNING_SECRET, http_functions, signed_headers
from tests.unit.test_webhook_parsing import SAMPLE as WEBHOOK_SAMPLE

pytestmark = pytest.mark.unit

PLANTED_SECRET = "SECRET123"  # a SAS signature in a URL's query string
FAKE_TOKEN = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJkdmJyaWRnZS10ZXN0In0.ZmFrZS1zaWduYXR1cmU"  # a bearer token's shape
SINK_URL = f"https://sink.example.test/in?sig={PLANTED_SECRET}"
SOURCE_URL = f"https://erp.example.test/customers?sig={PLANTED_SECRET}"
CONTAINER = "erp"
RealContext = engine.SyncContext  # before install() puts its subclass in its place
NO_DEPENDENCY = {"health_live": "reads nothing and calls nothing: it cannot meet a downstream failure"}


# -- failures, each with the status the rule gives it --------------------------------------------------------
def _http_error(status: int, retry_after: str | None = None) -> HttpResponseError:
    error = HttpResponseError(
        message=f"Operation returned {status} for https://acct.queue.core.windows.net/q?sig={PLANTED_SECRET}"
        f" Authorization: Bearer {FAKE_TOKEN}"
    )
    error.status_code = status
    error.response = SimpleNamespace(headers={"Retry-After": retry_after} if retry_after else {})  # type: ignore[assignment]
    return error


def storage_unreachable() -> BaseException:
    return ServiceRequestError(f"connection refused: https://acct.blob.core.windows.net/c?sig={PLANTED_SECRET}")


def key_vault_refusing() -> BaseException:
    return AuthError("ForbiddenByRbac", cause="The identity may not read secrets.", step="key_vault", status=403,
                     fix="Grant the function app's identity 'Key Vault Secrets User' on the vault.",
                     detail=f"caller token {FAKE_TOKEN}")  # fmt: skip


def key_vault_unreachable() -> BaseException:
    return AuthError("KeyVaultUnreachable", cause="Key Vault did not answer.", step="key_vault", retryable=True,
                     fix="Check the vault's network rules and DNS from the function app.")  # fmt: skip


def entra_refusing() -> BaseException:
    return AuthError("AADSTS7000215", cause="The client secret is not valid.", step="entra_token",
                     fix="Store the secret's Value (not its ID) in Key Vault.")  # fmt: skip


def entra_unreachable() -> BaseException:
    return AuthError("EntraUnreachable", cause="login.microsoftonline.com did not answer.", step="entra_token",
                     retryable=True, fix="Check outbound access to the authority from the function app.")  # fmt: skip


def dataverse_throttled() -> BaseException:
    return ThrottledError(429, "0x80072321", "Number of requests exceeded the limit", retry_after_s=12.5)


def dataverse_down() -> BaseException:
    return DataverseError(503, "0x80044151", "The service is temporarily unavailable")


def dataverse_unreachable() -> BaseException:  # the client's own words for no answer quote the request's URL
    return DataverseError(
        0, "ConnectionError", f"ConnectionError: url: /api/data/v9.2/accounts?$deltatoken={PLANTED_SECRET}"
    )


def dataverse_forbidden() -> BaseException:
    return DataverseError(403, "0x80040220", "Principal user is missing prvCreateAccount privilege")


@dataclass(frozen=True)
class Failure:
    """One way a dependency fails: which fake it breaks, the error, and the answer it must get."""

    name: str
    where: str  # storage | secret | dataverse | sink | source | doctor
    error: Callable[[], BaseException] | None  # None: the fake HTTP world decides (sink, source)
    status: int
    failed: str  # part of the body's "failed"
    throttled: bool = False
    http: str = ""  # for sink/source: "refusing" (400) or "unreachable"


STORAGE_DOWN = Failure("storage unreachable", "storage", storage_unreachable, 503, "Azure Storage")
STORAGE_BUSY = Failure("storage 503 ServerBusy", "storage", lambda: _http_error(503, "7"), 503, "Azure Storage",
                       throttled=True)  # fmt: skip
STORAGE_FORBIDDEN = Failure("storage 403", "storage", lambda: _http_error(403), 502, "Azure Storage")
KV_REFUSING = Failure("Key Vault refusing", "secret", key_vault_refusing, 502, "key_vault")
KV_UNREACHABLE = Failure("Key Vault unreachable", "secret", key_vault_unreachable, 503, "key_vault")
ENTRA_REFUSING = Failure("Entra refusing", "dataverse", entra_refusing, 502, "entra_token")
ENTRA_UNREACHABLE = Failure("Entra unreachable", "dataverse", entra_unreachable, 503, "entra_token")
DV_THROTTLED = Failure("Dataverse 429 after retries", "write", dataverse_throttled, 503, "Dataverse", throttled=True)
DV_DOWN = Failure("Dataverse 503", "write", dataverse_down, 503, "Dataverse")
DV_UNREACHABLE = Failure("Dataverse unreachable", "write", dataverse_unreachable, 503, "Dataverse")
DV_FORBIDDEN = Failure("Dataverse 403 privilege", "write", dataverse_forbidden, 502, "Dataverse")
SINK_REFUSING = Failure("HTTP sink 400", "sink", None, 502, "HTTP sink at https://sink.example.test", http="refusing")
SINK_UNREACHABLE = Failure("HTTP sink unreachable", "sink", None, 503, "HTTP sink", http="unreachable")
SOURCE_REFUSING = Failure("source API 400", "source", None, 502, "source API at https://erp.example.test",
                          http="refusing")  # fmt: skip
SOURCE_UNREACHABLE = Failure("source API unreachable", "source", None, 503, "source API", http="unreachable")

# A run reads Key Vault when the worker builds its Dataverse client (the credential), and for a source's
# auth header.
KV_CREDENTIAL = replace(KV_REFUSING, name="Key Vault refusing the credential", where="dataverse")
RUN_NOW_INBOUND = (STORAGE_DOWN, STORAGE_BUSY, KV_CREDENTIAL, ENTRA_REFUSING, ENTRA_UNREACHABLE, DV_THROTTLED,
                   DV_DOWN, DV_UNREACHABLE, DV_FORBIDDEN, SOURCE_REFUSING, SOURCE_UNREACHABLE)  # fmt: skip
RUN_NOW_OUTBOUND = (STORAGE_DOWN, ENTRA_REFUSING, SINK_REFUSING, SINK_UNREACHABLE)
REPLAY = (STORAGE_DOWN, replace(KV_UNREACHABLE, where="dataverse"), ENTRA_REFUSING, DV_THROTTLED, DV_DOWN, DV_FORBIDDEN)
STORAGE_ONLY = (STORAGE_DOWN, STORAGE_BUSY, STORAGE_FORBIDDEN)
RECEIVER = (*STORAGE_ONLY, KV_REFUSING, KV_UNREACHABLE)
DOCTOR = (replace(KV_REFUSING, where="doctor"), replace(ENTRA_REFUSING, where="doctor"),
          replace(ENTRA_UNREACHABLE, where="doctor"), replace(DV_THROTTLED, where="doctor"),
          replace(DV_FORBIDDEN, where="doctor"))  # fmt: skip
# (route function, what the case drives, failures)
CASES: list[tuple[str, str, tuple[Failure, ...]]] = [
    ("sync_run_now", "inbound", RUN_NOW_INBOUND),
    ("sync_run_now", "outbound", RUN_NOW_OUTBOUND),
    ("sync_replay", "inbound", REPLAY),
    ("sync_runs", "", STORAGE_ONLY),
    ("dataverse_webhook", "header auth", RECEIVER),
    ("signed_webhook", "erp", RECEIVER),
    ("webhook_replay", "", STORAGE_ONLY),
    ("credentials_list", "", (*STORAGE_ONLY, KV_REFUSING)),
    ("credentials_ack", "", (*STORAGE_ONLY, KV_UNREACHABLE)),
    ("credentials_snooze", "", (*STORAGE_ONLY, KV_REFUSING)),
    ("health_doctor", "", DOCTOR),
    ("webhook_reconcile", "", (*STORAGE_ONLY, ENTRA_REFUSING, ENTRA_UNREACHABLE)),
    ("webhook_watch", "", (*STORAGE_ONLY, ENTRA_REFUSING, ENTRA_UNREACHABLE)),
    ("webhook_incidents", "", STORAGE_ONLY),
    ("webhook_incident_ack", "", STORAGE_ONLY),
    ("webhook_incident_snooze", "", STORAGE_ONLY),
    ("rotation_status", "", STORAGE_ONLY),
    ("rotation_start", "", (*STORAGE_ONLY, KV_UNREACHABLE, KV_REFUSING)),
]
INCIDENT_ID = "20261201T195925Z-5f1c7d4e-9a0b-4c2d-8e3f-112233445566"
PARAMS = [
    pytest.param(name, kind, failure, id=f"{name}[{kind}]-{failure.name}" if kind else f"{name}-{failure.name}")
    for name, kind, failures in CASES
    for failure in failures
]


# -- the fakes -------------------------------------------------------------------------------------------
class Broken:
    """A stand-in whose every method raises ``error``, as a client of a failing service does."""

    def __init__(self, error: Callable[[], BaseException]) -> None:
        self._error = error

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def fail(*args: object, **kwargs: object) -> Any:
            raise self._error()

        return fail


class FailingStorage(Broken):
    """Storage whose tables fail on use (so the monitor is built and fails where it reads)."""

    def table(self, name: str) -> Broken:
        return Broken(self._error)


class World:
    """The composition root's objects for one test: in-memory, with one dependency failing."""

    def __init__(self, failure: Failure) -> None:
        self.failure = failure
        self.store = FakeSyncStore()
        self.client = FakeDataverse()
        self.http = FakeHttp()
        error = failure.error
        verdict = (lambda record: error()) if failure.where == "write" and error else None
        self.planner = FakePlanner(self.client, verdict)

    def _breaks(self, where: str) -> Callable[[], BaseException] | None:
        return self.failure.error if self.failure.where == where else None

    # Worker's methods
    def storage(self) -> Any:
        error = self._breaks("storage")
        return FailingStorage(error) if error else self.store

    def dataverse(self) -> Any:
        error = self._breaks("dataverse")
        if error:  # the worker builds its client on first use: the token provider reads Key Vault and Entra
            raise error()
        return self.client

    def metadata(self) -> Any:
        self.dataverse()
        return FakeMetadata()

    def secret(self, name: str) -> str:
        error = self._breaks("secret")
        if error:
            raise error()
        return SIGNING_SECRET if name == "erp-webhook-secret" else FAKE_TOKEN

    def secret_store(self) -> Any:
        error = self._breaks("secret")
        if error:  # the credentials routes read no secret per request: the store is what the monitor needs
            raise error()
        return SimpleNamespace()

    def settings(self) -> Any:
        return SimpleNamespace(client_secret_name="dataverse-client-secret", client_id="3b9d7c1e-0000-4000-8000-1",
                               credential_name="dataverse-client-secret", uses_certificate=False,
                               secret_cache_ttl_s=900, key_vault_url="https://kv-test.vault.azure.net/",
                               verify_challenge_resource=True, managed_identity_client_id=None)  # fmt: skip

    def graph(self) -> Any:
        return SimpleNamespace()

    def credential(self) -> Any:
        return SimpleNamespace()

    def http_session(self) -> Any:
        return self.http.session()


def inbound_job(failure: Failure) -> InboundJob:
    source: dict[str, Any] = {"kind": "blob_csv", "container": CONTAINER}
    if failure.where == "source":
        source = {"kind": "http_json", "url": SOURCE_URL, "auth_header": "Authorization", "auth_secret": "erp-api"}
    return InboundJob.model_validate({
        "direction": "inbound", "source": source, "table": "account", "entity_set": "accounts",
        "key": ["accountnumber"], "mapping": {"accountnumber": {"source": "CustomerNo"}, "name": {"source": "Name"}},
    })  # fmt: skip


def outbound_job() -> OutboundJob:
    return OutboundJob.model_validate({"direction": "outbound", "table": "account", "entity_set": "accounts",
                                       "sink": {"kind": "http_post", "url": SINK_URL}})  # fmt: skip


def install(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real doors and context builders on ``world``; only the wire and the jobs file are replaced."""
    from shared import outgoing_http
    from shared.expiry import wiring

    failure = world.failure
    monkeypatch.setattr(composition, "worker", lambda: world)
    monkeypatch.setattr(wiring, "worker", lambda: world)  # imported by name there
    monkeypatch.setattr(jobs_file, "jobs", lambda: {"accounts": inbound_job(failure), "shipments-out": outbound_job()})

    class Context(RealContext):  # what sync_context() builds, with the in-memory planner and HTTP
        def __init__(self, storage: Any, client: Any, **kwargs: Any) -> None:
            super().__init__(storage, client, **{**kwargs, "planner": world.planner, "http": world.http.session()})

    monkeypatch.setattr(engine, "SyncContext", Context)
    # No waiting between the retries of a sink or source that is down: the budget of attempts is unchanged.
    monkeypatch.setattr(outgoing_http, "HTTP_SINK", replace(outgoing_http.HTTP_SINK, backoff_base_s=0.0))
    monkeypatch.setattr(http_source, "SOURCE_API", replace(http_source.SOURCE_API, backoff_base_s=0.0))
    refusal = answer(400, {"error": "schema mismatch", "echo": f"?sig={PLANTED_SECRET}"})
    if failure.http == "refusing":
        world.http.route("https://sink.example.test", lambda request: refusal)
        world.http.route("https://erp.example.test", lambda request: refusal)
    world.client.changed = [{"accountid": "1", "name": "One", "@odata.etag": 'W/"1"'}]
    world.store.upload(CONTAINER, "a.csv", "CustomerNo,Name\nC1,One\n")


def request_for(name: str, kind: str, world: World, monkeypatch: pytest.MonkeyPatch) -> func.HttpRequest:
    route, methods, _, _ = AUDITED[name]
    params: dict[str, str] = {}
    route_params: dict[str, str] = {}
    headers: dict[str, str] = {}
    body = b""
    if name == "sync_run_now":
        route_params = {"job": "accounts" if kind == "inbound" else "shipments-out"}
    elif name == "sync_replay":
        route_params = {"job": "accounts"}
        leave_a_dead_letter(world)
    elif name == "dataverse_webhook":
        body = WEBHOOK_SAMPLE
        auth = SimpleNamespace(secret="dataverse-webhook-key", header="X-Dvbridge-Key")
        monkeypatch.setattr(webhook_functions, "routes", lambda: replace_header_auth(auth))
        headers = {"X-Dvbridge-Key": FAKE_TOKEN}
    elif name == "signed_webhook":
        route_params = {"source": kind}
        body = b'{"customer_no": "C1"}'
        headers = signed_headers(body, nonce="n-17")
    elif name == "webhook_watch":  # the steps named: no discovery, so storage is the first thing it reads
        monkeypatch.setenv("WEBHOOK_WATCH_STEP_IDS", INCIDENT_ID.split("-", 1)[1])
    elif name in ("webhook_incident_ack", "webhook_incident_snooze"):
        route_params = {"id": INCIDENT_ID}
        body = b'{"by": "ops@contoso.com", "days": 3}' if name == "webhook_incident_ack" else b'{"days": 3}'
    elif name in ("credentials_ack", "credentials_snooze"):
        route_params = {"id": CREDENTIAL_ID}
        body = b'{"by": "ops@contoso.com", "days": 3}' if name == "credentials_ack" else b'{"days": 3}'
    return func.HttpRequest(methods[0], f"http://localhost/api/{route}", headers=headers, params=params,
                            route_params=route_params, body=body)  # fmt: skip


def leave_a_dead_letter(world: World) -> None:
    """A dead letter to replay, left by an earlier (real) run whose record Dataverse refused."""
    verdict = world.planner.verdict
    world.planner.verdict = lambda record: Outcome(0, "failed", "0x80040237", "bad value")
    ctx = RealContext(world.store, world.client, metadata=FakeMetadata(), planner=world.planner)  # type: ignore[arg-type]
    engine.run_inbound("accounts", inbound_job(world.failure), ctx, run_id="r1")
    assert world.store.dead["accounts/r1.jsonl"]
    world.planner.verdict = verdict


def replace_header_auth(auth: Any) -> Any:
    """The routes file with header auth on the Dataverse receiver, so that it reads Key Vault."""
    real = routes()
    return SimpleNamespace(dataverse_header_auth=auth, sources=real.sources)


def call(name: str, request: func.HttpRequest) -> func.HttpResponse:
    user_function = http_functions()[name][3].get_user_function()  # type: ignore[attr-defined]
    answer_: func.HttpResponse = user_function(request)
    return answer_


# -- the tests ---------------------------------------------------------------------------------------------
def test_every_http_route_has_its_downstream_failures_here() -> None:
    """A new route fails this test until its failures are listed in CASES (or it truly calls nothing)."""
    covered = {name for name, _, _ in CASES}
    assert set(http_functions()) == covered | set(NO_DEPENDENCY)
    assert not covered & set(NO_DEPENDENCY)


@pytest.mark.parametrize(("name", "kind", "failure"), PARAMS)
def test_a_downstream_failure_is_answered_naming_it_never_a_bare_500(
    name: str, kind: str, failure: Failure, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = World(failure)
    install(world, monkeypatch)
    if failure.where == "doctor":
        from shared.identity import doctor

        error = failure.error
        assert error is not None

        def failing_doctor() -> Any:  # a failure the walk did not turn into a step (a token refresh mid-probe)
            raise error()

        monkeypatch.setattr(doctor, "run_doctor", failing_doctor)
    request = request_for(name, kind, world, monkeypatch)
    response = call(name, request)
    text = response.get_body().decode("utf-8", "replace")

    assert response.status_code == failure.status, text
    for planted in (PLANTED_SECRET, FAKE_TOKEN, SIGNING_SECRET, "?sig=", "$deltatoken="):
        assert planted not in text
    body = json.loads(text)
    assert failure.failed in body["failed"], body
    assert body["check"], body  # what to check, in words
    assert body["retry"] is (failure.status == 503)
    assert body["error"]
    if failure.throttled:
        assert int(response.headers["Retry-After"]) >= 1
        assert body["retry_after_s"] == int(response.headers["Retry-After"])
    if name in ("sync_run_now", "sync_replay"):
        assert (body["job"], body["status"]) == (request.route_params["job"], "failed")


def test_dataverse_throttling_carries_its_own_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(DV_THROTTLED)
    install(world, monkeypatch)
    response = call("sync_run_now", request_for("sync_run_now", "inbound", world, monkeypatch))
    assert (response.status_code, response.headers["Retry-After"]) == (503, "13")  # 12.5 s, rounded up


def test_an_http_sink_refusing_went_through_the_real_outbound_run_once(monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(SINK_REFUSING)
    install(world, monkeypatch)
    response = call("sync_run_now", request_for("sync_run_now", "outbound", world, monkeypatch))
    body = json.loads(response.get_body())
    assert response.status_code == 502
    assert len(world.http.to("https://sink.example.test")) == 1  # a 400 is not retried
    assert "HTTP 400" in body["error"]
    assert "the delta link is kept" in body["error"]
    (saved,) = world.store.reports.values()
    assert saved["status"] == "failed"  # the run saved its failure; the door answered it


def test_an_unreachable_sink_was_retried_before_the_503(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.outgoing_http import HTTP_SINK

    world = World(SINK_UNREACHABLE)
    install(world, monkeypatch)
    response = call("sync_run_now", request_for("sync_run_now", "outbound", world, monkeypatch))
    assert response.status_code == 503
    assert len(world.http.requests) == HTTP_SINK.attempts
    assert "reachable" in json.loads(response.get_body())["check"]


def test_a_bug_is_still_a_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a dependency's failure: re-raised to the host (its 500), never disguised as something to retry."""
    world = World(replace(DV_DOWN, error=lambda: KeyError("a bug")))
    install(world, monkeypatch)
    with pytest.raises(KeyError):
        call("sync_run_now", request_for("sync_run_now", "inbound", world, monkeypatch))


@pytest.mark.parametrize(
    "text",
    [f"https://a.example/x?sig={PLANTED_SECRET}&se=2026", f"url: /api/data/v9.2/accounts?$deltatoken={PLANTED_SECRET}",
     f"Authorization: Bearer {PLANTED_SECRET}", f"token {FAKE_TOKEN}"],
)  # fmt: skip
def test_scrub_removes_query_strings_and_tokens(text: str) -> None:
    cleaned = scrub(text)
    assert PLANTED_SECRET not in cleaned
    assert FAKE_TOKEN not in cleaned
    assert scrub("is it up? retry") == "is it up? retry"  # a question mark in words stays
