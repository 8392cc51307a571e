"""Conformance of the Dataverse emulator over HTTPS with raw requests, as the Dataverse Web API v9.2 answers them."""

from __future__ import annotations

import uuid

import pytest
import requests

from shared.composition import dataverse_token
from tests.dataverse_api import DataverseApi, api_for

pytestmark = pytest.mark.integration

Api = DataverseApi


@pytest.fixture
def api(devstack, app_env) -> Api:
    app_env(devstack)
    return api_for(devstack)


def error_of(response: requests.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_whoami_and_standard_headers(api: Api) -> None:
    r = api("GET", "WhoAmI")
    assert r.status_code == 200
    assert r.json()["UserId"] == "9b1d3f5a-2c4e-4a6b-8d0f-3e5a7c9b1d01"
    assert r.json()["@odata.context"].endswith("/$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse")
    assert r.headers["OData-Version"] == "4.0"
    assert r.headers["REQ_ID"] == r.headers["x-ms-service-request-id"]
    assert int(r.headers["x-ms-dop-hint"]) >= 1
    assert api("POST", "WhoAmI").status_code == 404  # a function called with POST


def test_metadata_shapes(api: Api) -> None:
    listed = api("GET", "EntityDefinitions", params={"$filter": "LogicalName eq 'contact'"}).json()["value"]
    assert [t["EntitySetName"] for t in listed] == ["contacts"]
    shipment = api("GET", "EntityDefinitions(LogicalName='dvb_shipment')", params={"$expand": "Attributes,Keys"}).json()
    assert shipment["PrimaryIdAttribute"] == "dvb_shipmentid"
    assert shipment["Keys"][0]["KeyAttributes"] == ["dvb_carrier", "dvb_trackingnumber"]
    lookup = next(a for a in shipment["Attributes"] if a["LogicalName"] == "dvb_accountid")
    assert lookup["AttributeType"] == "Lookup"
    assert lookup["Targets"] == ["account"]
    picklist = api(
        "GET",
        "EntityDefinitions(LogicalName='account')/Attributes(LogicalName='accountcategorycode')"
        "/Microsoft.Dynamics.CRM.PicklistAttributeMetadata",
        params={"$expand": "OptionSet"},
    ).json()
    labels = {o["Value"]: o["Label"]["UserLocalizedLabel"]["Label"] for o in picklist["OptionSet"]["Options"]}
    assert labels == {1: "Preferred Customer", 2: "Standard"}


def test_create_read_and_representation(api: Api) -> None:
    number = unique("A")
    created = api("POST", "accounts", json={"name": "Contoso", "accountnumber": number, "revenue": 5000000})
    assert created.status_code == 204
    entity_id = created.headers["OData-EntityId"]
    record_id = entity_id.rsplit("(", 1)[1].rstrip(")")
    got = api("GET", f"accounts({record_id})", params={"$select": "name,revenue"})
    assert got.status_code == 200
    assert got.json()["revenue"] == 5000000.0
    assert got.headers["ETag"] == got.json()["@odata.etag"]
    assert api("GET", f"accounts({record_id})", headers={"If-None-Match": got.headers["ETag"]}).status_code == 304
    by_key = api("GET", f"accounts(accountnumber='{number}')").json()
    assert by_key["accountid"] == record_id

    rep = api(
        "POST",
        "accounts",
        json={"name": "Rep"},
        params={"$select": "name"},
        headers={"Prefer": "return=representation"},
    )
    assert rep.status_code == 201
    assert "OData-EntityId" not in rep.headers
    assert rep.headers["Preference-Applied"] == "return=representation"
    assert set(rep.json()) == {"@odata.context", "@odata.etag", "name", "accountid"}


def test_conditional_patch_table(api: Api) -> None:
    number = unique("C")
    key = f"accounts(accountnumber='{number}')"
    assert error_of(api("PATCH", key, json={"name": "x"}, headers={"If-Match": "*"})) == (404, "0x80060891")
    first = api("PATCH", key, json={"name": "Upserted"}, headers={"Prefer": "return=representation"})
    assert first.status_code == 201  # upsert create path
    assert api("PATCH", key, json={"name": "Again"}, headers={"Prefer": "return=representation"}).status_code == 200
    plain = api("PATCH", key, json={"name": "Plain"})
    assert plain.status_code == 204
    assert plain.headers["OData-EntityId"].endswith(key)
    conflict = api("PATCH", key, json={"name": "x"}, headers={"If-None-Match": "*"})
    assert error_of(conflict) == (412, "0x80040237")
    assert conflict.json()["error"]["message"] == "A record with matching key values already exists."
    stale = api("PATCH", key, json={"name": "x"}, headers={"If-Match": first.headers["ETag"]})
    assert error_of(stale) == (412, "0x80060882")
    # None of the refused writes changed the record.
    assert api("GET", key).json()["name"] == "Plain"
    assert api("DELETE", key).status_code == 204
    assert error_of(api("DELETE", key)) == (404, "0x80060891")


def test_composite_key_escaped_values_and_binds(api: Api) -> None:
    number = unique("B")
    account = api("POST", "accounts", json={"name": "Bound", "accountnumber": number})
    account_id = account.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")
    tracking = unique("O''Brien")
    path = f"dvb_shipments(dvb_carrier='DHL',dvb_trackingnumber='{tracking}')"
    r = api("PATCH", path, json={"dvb_name": "S1", "dvb_accountid@odata.bind": f"/accounts(accountnumber='{number}')"})
    assert r.status_code == 204
    shipment = api("GET", path).json()
    assert shipment["dvb_trackingnumber"] == tracking.replace("''", "'")
    assert shipment["_dvb_accountid_value"] == account_id
    contact = api(
        "POST", "contacts", json={"lastname": "Doe", "parentcustomerid_account@odata.bind": f"accounts({account_id})"}
    )
    assert contact.status_code == 204
    wrong = api("POST", "contacts", json={"lastname": "Doe", "parentcustomerid@odata.bind": f"/accounts({account_id})"})
    assert error_of(wrong) == (400, "0x80048d19")
    missing = api("POST", "contacts", json={"parentcustomerid_account@odata.bind": f"/accounts({uuid.uuid4()})"})
    assert error_of(missing) == (404, "0x80040217")


def test_validation_errors_have_the_reference_shape(api: Api) -> None:
    assert error_of(api("POST", "accounts", json={"name": "x" * 161})) == (400, "0x80044331")
    assert error_of(api("POST", "accounts", json={"Name": "case matters"})) == (400, "0x80048d19")
    assert error_of(api("POST", "accounts", json={"name": "n", "numberofemployees": "ten"})) == (400, "0x80048d19")
    assert error_of(api("GET", "Accounts")) == (404, "0x8006088a")
    assert error_of(api("GET", "accounts", params={"$select": "Name"})) == (400, "0x0")
    number = unique("D")
    api("POST", "accounts", json={"name": "one", "accountnumber": number})
    duplicate = api("POST", "accounts", json={"name": "two", "accountnumber": number})
    assert error_of(duplicate) == (412, "0x80060892")
    found = api("GET", "accounts", params={"$filter": f"accountnumber eq '{number}'", "$select": "name"}).json()[
        "value"
    ]
    assert [a["name"] for a in found] == ["one"]  # the refused duplicate left no trace


def test_queries_filter_order_count_and_paging(api: Api) -> None:
    tag = unique("Q")
    for i in range(7):
        api("POST", "accounts", json={"name": f"{tag}-{i}", "numberofemployees": i * 10, "creditonhold": i % 2 == 0})
    params = {
        "$select": "name,numberofemployees",
        "$filter": (
            f"startswith(name,'{tag.lower()}') and (numberofemployees ge 20 or creditonhold eq true)"
            " and not (numberofemployees eq 60)"
        ),
        "$orderby": "numberofemployees desc",
        "$count": "true",
    }
    pages, link = [], None
    first = api("GET", "accounts", params=params, headers={"Prefer": "odata.maxpagesize=2"})
    assert first.headers["Preference-Applied"] == "odata.maxpagesize=2"
    body = first.json()
    assert body["@odata.count"] == 5
    pages.append(body["value"])
    link = body.get("@odata.nextLink")
    while link:
        body = api.session.get(link, headers={"Prefer": "odata.maxpagesize=2"}, timeout=30, verify=api.verify).json()
        pages.append(body["value"])
        link = body.get("@odata.nextLink")
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [r["numberofemployees"] for p in pages for r in p] == [50, 40, 30, 20, 0]
    top = api("GET", "accounts", params={**params, "$top": "3"}).json()["value"]
    assert len(top) == 3
    bad = api("GET", "accounts", params={"$filter": "name eq 'O'Bryan''"})
    assert error_of(bad) == (400, "0x0")
    assert error_of(api("GET", "accounts", params={"$skip": "2"}))[0] == 400


def test_auth_outcomes(devstack, faults_devstack, app_env) -> None:
    root = devstack.env["DATAVERSE_URL"] + "/api/data/v9.2"
    anonymous = requests.get(f"{root}/WhoAmI", verify=devstack.env["REQUESTS_CA_BUNDLE"], timeout=30)
    assert anonymous.status_code == 401
    assert anonymous.content == b""
    challenge = anonymous.headers["WWW-Authenticate"]
    assert "authorization_uri=" in challenge
    assert f"resource_id={devstack.env['DATAVERSE_URL']}/" in challenge
    # A valid token for another environment (the faults world's org) is refused with the challenge.
    app_env(faults_devstack)
    foreign = Api(devstack, dataverse_token().value)
    assert foreign("GET", "WhoAmI").status_code == 401
    # In the faults world, the app's role grants accounts only.
    faults = Api(faults_devstack, dataverse_token().value)
    assert faults("GET", "accounts").status_code == 200
    denied = faults("GET", "contacts")
    assert error_of(denied) == (403, "0x80040220")
    assert "is missing prvReadContact privilege" in denied.json()["error"]["message"]


def test_stats_agree_with_the_store(devstack, api: Api) -> None:
    tag = unique("S")
    api(
        "POST",
        "accounts/Microsoft.Dynamics.CRM.CreateMultiple",
        json={"Targets": [{"@odata.type": "Microsoft.Dynamics.CRM.account", "name": f"{tag}-{i}"} for i in range(4)]},
    )
    stats = api.stats()
    listed = 0
    link: str | None = f"{api.root}/accounts?$select=accountid"
    while link:
        page = api.session.get(link, verify=api.verify, timeout=30).json()
        listed += len(page["value"])
        link = page.get("@odata.nextLink")
    assert stats["records_per_table"]["account"] == listed
    assert stats["counters"]["requests by user 9b1d3f5a-2c4e-4a6b-8d0f-3e5a7c9b1d01"] >= 1
    assert stats["counters"]["entitlement records"] >= 4
    assert stats["requests"]["POST /api/data/v9.2/{path:path}"]["200"] >= 1
