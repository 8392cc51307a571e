"""DataverseClient against the emulator: reads, writes, paging, change tracking, retries, 401 refresh."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from shared.composition import token_provider
from shared.dataverse.addressing import entity_path, key_text
from shared.dataverse.batch_codec import ChangeSet, Operation
from shared.dataverse.client import ClientOptions, DataverseClient
from shared.errors import DataverseError
from tests.dataverse_api import api_for

pytestmark = pytest.mark.integration


@pytest.fixture
def client(devstack, app_env) -> Iterator[DataverseClient]:
    app_env(devstack)
    dv = DataverseClient(
        devstack.env["DATAVERSE_URL"],
        token_provider(),
        options=ClientOptions(verify=devstack.env["REQUESTS_CA_BUNDLE"]),
    )
    yield dv
    api_for(devstack).control({"faults": [], "max_token_age_s": None})


def test_key_formatting_escapes_quotes_and_percent_encodes_for_the_url() -> None:
    assert key_text({"accountnumber": "O'Brien", "n": 2, "flag": True}) == "accountnumber='O''Brien',n=2,flag=true"
    assert entity_path("accounts", {"accountnumber": "O'Brien 100%"}) == "accounts(accountnumber='O''Brien%20100%25')"


def test_reads_writes_and_whoami(client: DataverseClient) -> None:
    assert client.whoami()["UserId"] == "9b1d3f5a-2c4e-4a6b-8d0f-3e5a7c9b1d01"
    number = f"CL{uuid.uuid4().hex[:8]}"
    record_id = client.create("accounts", {"name": "Client", "accountnumber": number})
    assert client.get("accounts", record_id, select=["name"])["name"] == "Client"  # type: ignore[index]
    assert client.upsert("accounts", {"accountnumber": f"{number}'x"}, {"name": "Quoted"}) is True
    assert client.upsert("accounts", {"accountnumber": f"{number}'x"}, {"name": "Quoted again"}) is False
    assert client.get("accounts", {"accountnumber": f"{number}'x"})["name"] == "Quoted again"  # type: ignore[index]
    client.update("accounts", record_id, {"telephone1": "555"})
    client.delete("accounts", record_id)
    assert client.get("accounts", record_id) is None
    with pytest.raises(DataverseError) as caught:
        client.update("accounts", record_id, {"name": "gone"})
    assert (caught.value.status, caught.value.code) == (404, "0x80040217")


def test_paging_and_change_tracking(client: DataverseClient) -> None:
    tag = uuid.uuid4().hex[:6]
    for i in range(5):
        client.create(
            "dvb_shipments", {"dvb_name": f"pg-{tag}-{i}", "dvb_carrier": "DHL", "dvb_trackingnumber": f"{tag}{i}"}
        )
    pages = list(
        client.pages("dvb_shipments", select=["dvb_name"], filter=f"startswith(dvb_name,'pg-{tag}')", page_size=2)
    )
    assert [len(p) for p in pages] == [2, 2, 1]
    initial = client.track_changes("dvb_shipments", select=["dvb_name"])
    assert initial.delta_link
    gone = next(client.query("dvb_shipments", select=["dvb_shipmentid"], filter=f"dvb_name eq 'pg-{tag}-0'"))[
        "dvb_shipmentid"
    ]
    client.delete("dvb_shipments", gone)
    client.update(
        "dvb_shipments", {"dvb_carrier": "DHL", "dvb_trackingnumber": f"{tag}1"}, {"dvb_name": f"pg-{tag}-1b"}
    )
    delta = client.track_changes("dvb_shipments", delta_link=initial.delta_link)
    assert [r["dvb_name"] for r in delta.changed] == [f"pg-{tag}-1b"]
    assert delta.deleted == [gone]


def test_retries_honour_faults_and_refresh_the_token(client: DataverseClient, devstack) -> None:
    control = api_for(devstack).control
    control({"faults": [
        {"kind": "429", "route": "GET WhoAmI", "count": 2, "retry_after_s": 1},
        {"kind": "503", "route": "GET WhoAmI", "count": 1},
        {"kind": "reset", "route": "GET WhoAmI", "count": 1},
    ]})  # fmt: skip
    sent = client.requests_sent
    assert client.whoami()["UserId"]
    assert client.requests_sent - sent == 5  # 2 x 429, 1 x 503, 1 reset, then success
    assert client.governor.throttles == 2
    control({"faults": [], "max_token_age_s": 0})  # every token older than now is refused
    import time

    time.sleep(1.1)
    control({"faults": [], "max_token_age_s": 1})
    assert client.whoami()["UserId"]  # 401 -> one refresh -> a fresh token passes


def test_a_broken_create_is_not_resent(client: DataverseClient, devstack) -> None:
    api_for(devstack).control({"faults": [{"kind": "reset", "route": "POST accounts$", "count": 1}]})
    with pytest.raises(DataverseError) as caught:
        client.create("accounts", {"name": "maybe"})
    assert caught.value.code == "OutcomeUnknown"  # the caller decides; we did not risk a duplicate


def test_batch_through_the_client(client: DataverseClient) -> None:
    tag = uuid.uuid4().hex[:6]
    results = client.execute_batch(
        [
            ChangeSet(
                (
                    Operation("POST", "accounts", {"name": f"bc-{tag}"}, content_id="1"),
                    Operation("POST", "accounts", {"name": "x" * 161}, content_id="2"),
                )
            ),
            Operation("POST", "accounts", {"name": f"bc-{tag}-solo"}),
        ]
    )
    assert [(r.status, r.code) for r in results] == [(400, "RolledBack"), (400, "0x80044331"), (204, None)]
    assert results[2].entity_id
    assert [r["name"] for r in client.query("accounts", select=["name"], filter=f"startswith(name,'bc-{tag}')")] == [
        f"bc-{tag}-solo"
    ]
