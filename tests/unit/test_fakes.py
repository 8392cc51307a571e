"""The fakes in tests/fakes hold to what the real SDKs and services do: a fake that accepted what the
service refuses, or raised another exception than the SDK, would let the unit tests built on it pass falsely.
Where it is cheap, the real SDK client is run against the same service answer and compared."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from azure.core import MatchConditions
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.core.pipeline.transport import HttpTransport, RequestsTransportResponse
from azure.data.tables import TableClient, TableEntity, UpdateMode

from shared.errors import AuthError
from shared.expiry.model import Alert, Credential
from shared.expiry.notify import Channel
from shared.logging import redact
from tests.fakes import (
    AlertSink,
    FakeGraph,
    FakeHttp,
    FakeProbe,
    FakeSecretStore,
    FakeTableClient,
    UnsupportedQuery,
    answer,
)
from tests.fakes.sockets import SocketUsed, no_sockets  # noqa: F401 - autouse: this module opens no socket
from tests.fakes.tables import service_error

pytestmark = pytest.mark.unit

NOW = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
ROW = {"PartitionKey": "p", "RowKey": "r", "Name": "one", "Count": 3, "Ratio": 0.5, "On": True, "At": NOW}


@pytest.fixture
def table() -> FakeTableClient:
    return FakeTableClient("credentialstate", clock=lambda: NOW)


# -- Table Storage: the fake against the real TableClient on the same service answer ----------------------
class _Answering(HttpTransport):  # type: ignore[misc]
    """An azure-core transport that gives the real TableClient one canned service answer, no socket."""

    def __init__(self, status: int, code: str) -> None:
        self.status, self.code = status, code

    def send(self, request: Any, **kwargs: Any) -> RequestsTransportResponse:
        raw = requests.Response()
        raw.status_code = self.status
        raw.headers["Content-Type"] = "application/json;odata=minimalmetadata;streaming=true;charset=utf-8"
        raw.headers["x-ms-error-code"] = self.code
        raw._content = json.dumps({"odata.error": {"code": self.code, "message": {"value": self.code}}}).encode()
        return RequestsTransportResponse(request, raw)

    def open(self) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> _Answering:
        return self

    def __exit__(self, *args: Any) -> None: ...


def real_client(status: int, code: str) -> TableClient:
    key = base64.b64encode(b"k" * 64).decode()
    return TableClient("https://fakeacct.table.core.windows.net", "credentialstate",
                       credential=AzureNamedKeyCredential("fakeacct", key), transport=_Answering(status, code),
                       retry_total=0)  # fmt: skip


def raised(call: Any) -> BaseException:
    with pytest.raises(HttpResponseError) as info:
        call()
    return info.value


def same_error(fake: BaseException, real: BaseException) -> None:
    assert type(fake) is type(real)
    assert getattr(fake, "status_code", None) == getattr(real, "status_code", None)
    assert getattr(fake, "error_code", None) == getattr(real, "error_code", None)


def test_a_missing_row_raises_what_the_sdk_raises(table: FakeTableClient) -> None:
    fake = raised(lambda: table.get_entity("p", "nope"))
    same_error(fake, raised(lambda: real_client(404, "ResourceNotFound").get_entity("p", "nope")))
    assert isinstance(fake, ResourceNotFoundError)
    assert fake.error_code == "ResourceNotFound"  # type: ignore[attr-defined]


def test_creating_an_existing_row_raises_what_the_sdk_raises(table: FakeTableClient) -> None:
    table.create_entity(ROW)
    fake = raised(lambda: table.create_entity(ROW))
    same_error(fake, raised(lambda: real_client(409, "EntityAlreadyExists").create_entity(ROW)))
    assert isinstance(fake, ResourceExistsError)
    assert fake.status_code == 409


def test_a_stale_etag_raises_what_the_sdk_raises_and_changes_nothing(table: FakeTableClient) -> None:
    first = table.create_entity(ROW)["etag"]
    table.update_entity({**ROW, "Name": "two"}, mode=UpdateMode.REPLACE)
    stale = {"etag": first, "match_condition": MatchConditions.IfNotModified}
    fake = raised(lambda: table.update_entity({**ROW, "Name": "three"}, mode=UpdateMode.REPLACE, **stale))
    real = raised(
        lambda: real_client(412, "UpdateConditionNotSatisfied").update_entity(ROW, mode=UpdateMode.REPLACE, **stale)
    )
    same_error(fake, real)
    assert isinstance(fake, ResourceModifiedError)
    assert table.get_entity("p", "r")["Name"] == "two"
    fake_delete = raised(lambda: table.delete_entity("p", "r", **stale))
    same_error(
        fake_delete, raised(lambda: real_client(412, "UpdateConditionNotSatisfied").delete_entity("p", "r", **stale))
    )
    assert table.get_entity("p", "r")["Name"] == "two"


def test_updating_a_missing_row_raises_not_found_and_deleting_one_does_not(table: FakeTableClient) -> None:
    fake = raised(lambda: table.update_entity(ROW, mode=UpdateMode.MERGE))
    same_error(fake, raised(lambda: real_client(404, "ResourceNotFound").update_entity(ROW)))
    assert table.delete_entity("p", "absent") is None
    assert real_client(404, "ResourceNotFound").delete_entity("p", "absent") is None


def test_entities_come_back_as_the_sdk_types_them_with_etag_and_timestamp(table: FakeTableClient) -> None:
    metadata = table.create_entity({**ROW, "Skipped": None})
    entity = table.get_entity("p", "r")
    assert isinstance(entity, TableEntity)
    assert entity.metadata["etag"] == metadata["etag"]
    assert metadata["etag"].startswith("W/\"datetime'2026-03-01T09%3A00%3A00")
    assert entity.metadata["timestamp"] == NOW
    assert {k: entity[k] for k in ROW} == ROW
    assert "Skipped" not in entity  # the SDK does not send a None property
    assert type(entity["Count"]) is int
    assert type(entity["Ratio"]) is float
    assert entity["On"] is True


def test_what_the_sdk_refuses_is_refused(table: FakeTableClient) -> None:
    with pytest.raises(TypeError):  # the SDK's int32 default
        table.create_entity({**ROW, "Big": 2**40})
    with pytest.raises(ValueError, match="IfNotModified must be specified with etag"):
        table.update_entity(ROW, match_condition=MatchConditions.IfNotModified)
    with pytest.raises(ValueError, match="Etag is not supported for an Unconditional operation"):
        table.update_entity(ROW, etag="W/x")
    with pytest.raises(ValueError, match="RowKey must be present"):
        table.create_entity({"PartitionKey": "p"})
    error = raised(lambda: table.create_entity({**ROW, "RowKey": "a/b"}))  # forbidden in a key
    assert error.status_code == 400
    assert table.rows() == []


def test_every_write_gets_a_new_etag_even_within_one_clock_tick(table: FakeTableClient) -> None:
    etags = {table.upsert_entity({**ROW, "Count": n})["etag"] for n in range(5)}
    assert len(etags) == 5


def test_replace_drops_columns_merge_keeps_them_and_upsert_inserts(table: FakeTableClient) -> None:
    table.upsert_entity(ROW)
    table.update_entity({"PartitionKey": "p", "RowKey": "r", "Name": "merged"}, mode=UpdateMode.MERGE)
    assert table.get_entity("p", "r")["Count"] == 3
    table.update_entity({"PartitionKey": "p", "RowKey": "r", "Name": "replaced"}, mode=UpdateMode.REPLACE)
    assert dict(table.get_entity("p", "r")) == {"PartitionKey": "p", "RowKey": "r", "Name": "replaced"}
    table.upsert_entity({"PartitionKey": "p", "RowKey": "new", "Name": "x"}, mode=UpdateMode.REPLACE)
    assert table.get_entity("p", "new")["Name"] == "x"


def test_an_etag_from_a_read_entity_guards_an_update_like_the_sdk(table: FakeTableClient) -> None:
    table.create_entity(ROW)
    read = table.get_entity("p", "r")
    read["Name"] = "mine"
    table.update_entity(read, match_condition=MatchConditions.IfNotModified)  # the SDK takes entity.metadata's
    with pytest.raises(ResourceModifiedError):
        table.update_entity(read, match_condition=MatchConditions.IfNotModified)


def test_queries_filter_by_keys_page_and_refuse_other_shapes(table: FakeTableClient) -> None:
    for pk, rk in [("a", "1"), ("a", "2"), ("a", "3"), ("b", "1"), ("it's", "1")]:
        table.create_entity({"PartitionKey": pk, "RowKey": rk})
    keys = [(e["PartitionKey"], e["RowKey"]) for e in table.query_entities("PartitionKey eq 'a'")]
    assert keys == [("a", "1"), ("a", "2"), ("a", "3")]
    assert [e["RowKey"] for e in table.query_entities("PartitionKey eq 'a' and RowKey ge '2'")] == ["2", "3"]
    assert [e["RowKey"] for e in table.query_entities("PartitionKey eq 'it''s'")] == ["1"]
    assert len(list(table.query_entities("PartitionKey eq @pk", parameters={"pk": "it's"}))) == 1
    pages = [len(list(p)) for p in table.query_entities("PartitionKey eq 'a'", results_per_page=2).by_page()]
    assert pages == [2, 1]
    assert len(list(table.list_entities())) == 5
    with pytest.raises(UnsupportedQuery):
        table.query_entities("Name eq 'x'")


def test_a_racing_writer_and_an_injected_fault_happen_where_asked(table: FakeTableClient) -> None:
    table.create_entity(ROW)
    etag = table.get_entity("p", "r").metadata["etag"]
    table.before_next("update_entity", lambda: table.upsert_entity({**ROW, "Name": "theirs"}))
    with pytest.raises(ResourceModifiedError):
        table.update_entity(ROW, etag=etag, match_condition=MatchConditions.IfNotModified)
    table.fail_next("get_entity", service_error(503, "ServerBusy"))
    with pytest.raises(HttpResponseError) as info:
        table.get_entity("p", "r")
    assert info.value.status_code == 503
    assert table.get_entity("p", "r")["Name"] == "theirs"


# -- Key Vault -----------------------------------------------------------------------------------------
def test_vault_properties_are_the_sdks_own_types_built_from_key_vault_json() -> None:
    store = FakeSecretStore("https://kv-unit.vault.azure.net/")
    store.set_secret("s", "value-0123456789", expires_on=NOW, tags={"entraKeyId": "k"}, content_type="text/plain")
    store.set_secret("backing", "x" * 20, managed=True)
    store.set_certificate("c", expires_on=NOW, thumbprint=bytes.fromhex("ab" * 20), enabled=False)
    secrets = {p.name: p for p in store.list_secret_properties()}
    assert type(secrets["s"]).__name__ == "SecretProperties"
    assert (secrets["s"].expires_on, secrets["s"].tags, secrets["s"].content_type) == (
        NOW,
        {"entraKeyId": "k"},
        "text/plain",
    )
    assert secrets["s"].enabled is True
    assert secrets["backing"].managed is True
    (cert,) = store.list_certificate_properties()
    assert (cert.name, cert.enabled, cert.x509_thumbprint.hex()) == ("c", False, "ab" * 20)


def test_vault_reads_fail_with_the_authErrors_the_real_store_maps() -> None:
    store = FakeSecretStore()
    store.set_secret("off", "value-0123456789", enabled=False)
    with pytest.raises(AuthError) as missing:
        store.get("absent")
    assert missing.value.code == "SecretNotFound"
    with pytest.raises(AuthError) as disabled:
        store.get("off")
    assert disabled.value.code == "SecretDisabled"
    store.fail("list_secrets", 403, "Forbidden", inner="ForbiddenByRbac")
    with pytest.raises(AuthError) as denied:
        store.list_secret_properties()
    assert (denied.value.code, denied.value.status) == ("ForbiddenByRbac", 403)
    store.heal()
    assert store.list_secret_properties()


def test_a_value_read_is_masked_in_logs_as_the_real_store_does() -> None:
    store = FakeSecretStore()
    store.set_secret("webhook", "https://hook.example.test/?sig=not-for-logs-5f2a9c")
    value = store.get("webhook").value
    assert value not in redact(f"posting to {value}")
    assert "value=***" in repr(store.get("webhook"))


# -- HTTP, Graph, alert channels -----------------------------------------------------------------------
def test_fake_http_records_what_requests_sent_and_refuses_unrouted_hosts() -> None:
    http = FakeHttp()
    http.route("https://api.example.test/v1", lambda r: answer(201, {"echo": r.json(), "q": r.query}))
    session = http.session()
    response = session.post("https://api.example.test/v1/items", params={"a": "1 2"}, json={"x": 1}, timeout=5)
    assert (response.status_code, response.json()) == (201, {"echo": {"x": 1}, "q": {"a": "1 2"}})
    (sent,) = http.requests
    assert (sent.method, sent.path, sent.timeout, sent.headers["Content-Type"]) == (
        "POST",
        "/v1/items",
        5,
        "application/json",
    )
    with pytest.raises(requests.ConnectionError):
        session.get("https://elsewhere.example.test/")
    http.route("https://text.example.test", lambda r: answer(500, "oops"))
    not_json = session.get("https://text.example.test/")
    with pytest.raises(ValueError, match="Expecting value"):  # requests' JSONDecodeError, caught as ValueError
        not_json.json()


def test_the_socket_guard_catches_a_real_connection() -> None:
    with pytest.raises(SocketUsed):
        requests.get("http://127.0.0.1:9/", timeout=1)


def test_graph_serves_the_real_reader_by_id_and_by_pages_and_answers_graph_errors() -> None:
    http = FakeHttp()
    graph = FakeGraph(http, page_size=2)
    for n in range(3):
        graph.add_app(
            f"app-{n}", f"App {n}", password_credentials=[{"keyId": f"k{n}", "endDateTime": "2026-04-01T00:00:00Z"}]
        )
    reader = graph.reader(http)
    assert [a["appId"] for a in reader.applications(["app-1"])] == ["app-1"]
    everything = list(reader.applications(["*"]))
    assert [a["appId"] for a in everything] == ["app-0", "app-1", "app-2"]
    assert "signInAudience" not in everything[0]  # $select honoured
    assert len(http.requests) == 3
    assert graph.credential.scopes == [f"{graph.graph_url}/.default"] * 3
    with pytest.raises(AuthError) as gone:
        list(reader.applications(["deleted-app"]))
    assert (gone.value.code, gone.value.status) == ("Request_ResourceNotFound", 404)
    graph.fail(403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")
    with pytest.raises(AuthError) as denied:
        list(reader.applications(["app-0"]))
    assert denied.value.code == "Authorization_RequestDenied"


def test_the_alert_sink_takes_the_real_notifiers_payloads_and_fails_a_channel_on_demand() -> None:
    http, store = FakeHttp(), FakeSecretStore()
    sink = AlertSink(http, store, [Channel("teams", "teams", "teams-url"), Channel("json", "json", "json-url"),
                                   Channel("ops", "slack", "ops-url")])  # fmt: skip
    notifier = sink.notifier(store)
    credential = Credential("kv-secret:v:s", "s", "keyvault-secret", NOW + timedelta(days=6), "vault v")
    alert = Alert("threshold", "7d", "warning", credential, "s expires in 6 days", "text", {"Days left": "6.0"})
    assert notifier.send(alert) == []
    assert sink.received["teams"][0]["attachments"][0]["content"]["type"] == "AdaptiveCard"
    assert sink.received["json"][0]["credential"]["id"] == "kv-secret:v:s"
    assert sink.received["ops"][0]["text"] == "s expires in 6 days"
    sink.down("ops", 503)
    sink.down("json", None)  # connection refused
    assert notifier.send(alert) == ["json", "ops"]
    assert len(http.to("https://alerts.example.test/ops")) == 1 + 3  # retried, as the notifier does on a 503


def test_the_probe_answers_until_told_to_fail() -> None:
    probe = FakeProbe()
    assert probe().startswith("token and WhoAmI ok")
    probe.fail("AADSTS7000215")
    with pytest.raises(AuthError, match="AADSTS7000215"):
        probe()
    probe.recover()
    assert probe()
    assert probe.calls == 3
