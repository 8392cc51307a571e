"""Byte-level conformance with a $batch example in Microsoft's grammar, the seed control, and requests spread
over web servers.

Runs on a fresh, in-memory world so the $batch GET sees exactly the records the batch created.
"""

from __future__ import annotations

import re

import pytest

from tests.dataverse_api import api_for
from tests.devstack_process import ROOT, DevstackProcess

pytestmark = pytest.mark.integration

# A $batch request composed from the grammar Microsoft documents (838 bytes; the same as test_batch_codec.py).
REQUEST = (
    '--batch_7f1a\r\nContent-Type: multipart/mixed; boundary="changeset_9c2b"\r\n\r\n'
    "--changeset_9c2b\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nContent-ID: 1\r\n\r\n"
    "POST https://contoso.crm.dynamics.com/api/data/v9.2/accounts HTTP/1.1\r\nContent-Type: application/json; type=entry\r\n\r\n"
    '{"name":"Contoso"}\r\n'
    "--changeset_9c2b\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nContent-ID: 2\r\n\r\n"
    "POST https://contoso.crm.dynamics.com/api/data/v9.2/contacts HTTP/1.1\r\nContent-Type: application/json; type=entry\r\n\r\n"
    '{"lastname":"Smith","parentcustomerid_account@odata.bind":"$1"}\r\n'
    "--changeset_9c2b--\r\n\r\n"
    "--batch_7f1a\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
    "GET https://contoso.crm.dynamics.com/api/data/v9.2/accounts?$select=name&$top=1 HTTP/1.1\r\nAccept: application/json\r\n\r\n\r\n"
    "--batch_7f1a--\r\n"
)

# The answer in the same grammar, with the org root, ids, boundaries and etag as placeholders.
EXPECTED = (
    "--batchresponse_<B>\r\nContent-Type: multipart/mixed; boundary=changesetresponse_<C>\r\n\r\n"
    "--changesetresponse_<C>\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nContent-ID: 1\r\n\r\n"
    "HTTP/1.1 204 No Content\r\nOData-Version: 4.0\r\nLocation: <ROOT>/accounts(<ID1>)\r\nOData-EntityId: <ROOT>/accounts(<ID1>)\r\n\r\n\r\n"
    "--changesetresponse_<C>\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nContent-ID: 2\r\n\r\n"
    "HTTP/1.1 204 No Content\r\nOData-Version: 4.0\r\nLocation: <ROOT>/contacts(<ID2>)\r\nOData-EntityId: <ROOT>/contacts(<ID2>)\r\n\r\n\r\n"
    "--changesetresponse_<C>--\r\n"
    "--batchresponse_<B>\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
    "HTTP/1.1 200 OK\r\nContent-Type: application/json; odata.metadata=minimal; odata.streaming=true\r\nOData-Version: 4.0\r\n\r\n"
    '{"@odata.context":"<ROOT>/$metadata#accounts(name)","value":[{"@odata.etag":"W/\\"<V>\\"","name":"Contoso","accountid":"<ID1>"}]}\r\n'
    "--batchresponse_<B>--\r\n"
)


@pytest.fixture(scope="module")
def fresh_devstack(tmp_path_factory: pytest.TempPathFactory):
    process = DevstackProcess(
        ROOT / "devstack" / "scenarios" / "default.yaml",
        tmp_path_factory.mktemp("fresh"),
        "fresh",
        "--no-azurite",
        "--memory",
        "--time-scale",
        "0.01",
    )
    yield process
    process.stop()


def test_reference_batch_example_byte_for_byte(fresh_devstack, app_env) -> None:
    app_env(fresh_devstack)
    api = api_for(fresh_devstack)
    assert len(REQUEST.encode()) == 838
    response = api(
        "POST", "$batch", data=REQUEST.encode(), headers={"Content-Type": 'multipart/mixed; boundary="batch_7f1a"'}
    )
    assert response.status_code == 200
    body = response.content.decode()
    outer = re.search(r"boundary=batchresponse_([0-9a-f-]{36})$", response.headers["Content-Type"]).group(1)  # type: ignore[union-attr]
    inner = re.search(r"changesetresponse_([0-9a-f-]{36})", body).group(1)  # type: ignore[union-attr]
    ids = re.findall(r"\((" + "[0-9a-f-]{36}" + r")\)", body)
    version = re.search(r'W/\\"(\d+)\\"', body).group(1)  # type: ignore[union-attr]
    normalised = (
        body.replace(outer, "<B>")
        .replace(inner, "<C>")
        .replace(api.root, "<ROOT>")
        .replace(ids[0], "<ID1>")
        .replace(ids[2], "<ID2>")
        .replace(f'W/\\"{version}\\"', 'W/\\"<V>\\"')
    )
    assert normalised == EXPECTED
    contact = api("GET", f"contacts({ids[2]})", params={"$select": "_parentcustomerid_value"}).json()
    assert contact["_parentcustomerid_value"] == ids[0]  # the $1 reference bound the lookup


def test_seed_and_web_servers(fresh_devstack, app_env) -> None:
    app_env(fresh_devstack)
    api = api_for(fresh_devstack)
    api.control({"seed": {"account": [{"name": f"seeded-{i}", "accountnumber": f"SEED{i}"} for i in range(3)]}})
    assert api("GET", "accounts(accountnumber='SEED2')").json()["name"] == "seeded-2"
    api.control({"limits": {"web_servers": 3}})
    try:
        before = api.stats()["counters"]
        api.session.cookies.clear()
        for _ in range(6):
            response = api("GET", "WhoAmI", headers={"Cookie": ""})
        assert response.headers["x-ms-dop-hint"] == "12"
        after = api.stats()["counters"]
        spread = [after.get(f"requests by server {i}", 0) - before.get(f"requests by server {i}", 0) for i in range(3)]
        assert spread == [2, 2, 2]  # no affinity cookie: round-robin over the servers
        pinned = response.cookies["ARRAffinity"]
        for _ in range(3):
            api("GET", "WhoAmI", headers={"Cookie": f"ARRAffinity={pinned}"})
        final = api.stats()["counters"]
        pinned_counts = [
            final.get(f"requests by server {i}", 0) - after.get(f"requests by server {i}", 0) for i in range(3)
        ]
        assert sorted(pinned_counts) == [0, 0, 3]  # the cookie pins one server
    finally:
        api.control({"limits": {"web_servers": 1}})
