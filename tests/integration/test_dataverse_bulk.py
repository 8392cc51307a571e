"""Bulk messages: CreateMultiple, UpdateMultiple, UpsertMultiple, atomic on standard tables."""

from __future__ import annotations

import uuid

import pytest
import requests

from tests.dataverse_api import DataverseApi, api_for

pytestmark = pytest.mark.integration

ACCOUNT = "Microsoft.Dynamics.CRM.account"


@pytest.fixture
def dv(devstack, app_env) -> DataverseApi:
    app_env(devstack)
    return api_for(devstack)


def names(dv, prefix: str) -> list[str]:
    rows = dv(
        "GET", "accounts", params={"$filter": f"startswith(name,'{prefix}')", "$select": "name", "$orderby": "name"}
    )
    return [r["name"] for r in rows.json()["value"]]


def error_code(response: requests.Response) -> str:
    return str(response.json()["error"]["code"])


def test_create_multiple_returns_ids_in_request_order(dv) -> None:
    tag = uuid.uuid4().hex[:8]
    targets = [{"@odata.type": ACCOUNT, "name": f"cm-{tag}-{i}"} for i in range(5)]
    r = dv("POST", "accounts/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": targets})
    assert r.status_code == 200
    assert r.json()["@odata.context"].endswith("#Microsoft.Dynamics.CRM.CreateMultipleResponse")
    ids = r.json()["Ids"]
    assert [dv("GET", f"accounts({i})").json()["name"] for i in ids] == [t["name"] for t in targets]


def test_upsert_multiple_by_alternate_key_creates_then_updates(dv) -> None:
    tag = uuid.uuid4().hex[:6]
    targets = [
        {"@odata.type": ACCOUNT, "name": f"um-{tag}-{i}", "@odata.id": f"accounts(accountnumber='U{tag}{i}')"}
        for i in range(3)
    ]
    assert dv("POST", "accounts/Microsoft.Dynamics.CRM.UpsertMultiple", json={"Targets": targets}).status_code == 204
    targets[0]["name"] = f"um-{tag}-0-renamed"
    assert dv("POST", "accounts/Microsoft.Dynamics.CRM.UpsertMultiple", json={"Targets": targets}).status_code == 204
    assert names(dv, f"um-{tag}") == [f"um-{tag}-0-renamed", f"um-{tag}-1", f"um-{tag}-2"]
    by_key = dv("GET", f"accounts(accountnumber='U{tag}1')").json()
    assert by_key["name"] == f"um-{tag}-1"


def test_failed_bulk_requests_leave_the_store_unchanged(dv) -> None:
    tag = uuid.uuid4().hex[:6]
    existing = dv(
        "POST",
        "accounts/Microsoft.Dynamics.CRM.CreateMultiple",
        json={"Targets": [{"@odata.type": ACCOUNT, "name": f"at-{tag}-keep"}]},
    )
    keep_id = existing.json()["Ids"][0]
    before = names(dv, f"at-{tag}")

    # The key column repeated in the body on the create path: Microsoft's SDK got 0x80040216 here.
    repeated = [
        {"@odata.type": ACCOUNT, "name": f"at-{tag}-new", "@odata.id": f"accounts(accountnumber='R{tag}')"},
        {
            "@odata.type": ACCOUNT,
            "name": f"at-{tag}-bad",
            "accountnumber": f"S{tag}",
            "@odata.id": f"accounts(accountnumber='S{tag}')",
        },
    ]
    r = dv("POST", "accounts/Microsoft.Dynamics.CRM.UpsertMultiple", json={"Targets": repeated})
    assert (r.status_code, error_code(r)) == (400, "0x80040216")

    duplicates = [{"@odata.type": ACCOUNT, "name": f"at-{tag}-d", "@odata.id": f"accounts(accountnumber='D{tag}')"}] * 2
    r = dv("POST", "accounts/Microsoft.Dynamics.CRM.UpsertMultiple", json={"Targets": duplicates})
    assert r.status_code == 400

    updates = [
        {"@odata.type": ACCOUNT, "accountid": keep_id, "name": f"at-{tag}-changed"},
        {"@odata.type": ACCOUNT, "accountid": str(uuid.uuid4()), "name": f"at-{tag}-ghost"},
    ]
    r = dv("POST", "accounts/Microsoft.Dynamics.CRM.UpdateMultiple", json={"Targets": updates})
    assert (r.status_code, error_code(r)) == (404, "0x80040217")

    too_long = [{"@odata.type": ACCOUNT, "name": f"at-{tag}-ok"}, {"@odata.type": ACCOUNT, "name": "x" * 161}]
    r = dv("POST", "accounts/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": too_long})
    assert (r.status_code, error_code(r)) == (400, "0x80044331")

    assert names(dv, f"at-{tag}") == before == [f"at-{tag}-keep"]


def test_update_multiple_rules(dv) -> None:
    tag = uuid.uuid4().hex[:6]
    ids = dv(
        "POST",
        "accounts/Microsoft.Dynamics.CRM.CreateMultiple",
        json={"Targets": [{"@odata.type": ACCOUNT, "name": f"up-{tag}"}]},
    ).json()["Ids"]
    duplicates = [
        {"@odata.type": ACCOUNT, "accountid": ids[0], "name": f"up-{tag}-first"},
        {"@odata.type": ACCOUNT, "accountid": ids[0], "name": f"up-{tag}-second"},
    ]
    assert dv("POST", "accounts/Microsoft.Dynamics.CRM.UpdateMultiple", json={"Targets": duplicates}).status_code == 204
    assert names(dv, f"up-{tag}") == [f"up-{tag}-first"]  # only the first of duplicate targets applies
    by_key = [{"@odata.type": ACCOUNT, "@odata.id": "accounts(accountnumber='X')", "name": "n"}]
    r = dv("POST", "accounts/Microsoft.Dynamics.CRM.UpdateMultiple", json={"Targets": by_key})
    assert r.status_code == 400
    assert "alternate keys" in r.json()["error"]["message"]


def test_bulk_input_errors(dv) -> None:
    r = dv(
        "POST",
        "contacts/Microsoft.Dynamics.CRM.CreateMultiple",
        json={"Targets": [{"@odata.type": "Microsoft.Dynamics.CRM.contact"}]},
    )
    assert r.status_code == 400
    assert "not supported" in r.json()["error"]["message"]
    r = dv("POST", "accounts/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": [{"name": "no type"}]})
    assert r.status_code == 400
    assert "@odata.type" in r.json()["error"]["message"]
