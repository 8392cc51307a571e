"""$batch over HTTPS: wire shape, change sets (atomic), Content-ID references, both error modes."""

from __future__ import annotations

import re
import uuid

import pytest

from tests.dataverse_api import DataverseApi, api_for

pytestmark = pytest.mark.integration

CRLF = "\r\n"


@pytest.fixture
def dv(devstack, app_env) -> DataverseApi:
    app_env(devstack)
    return api_for(devstack)


def part(method: str, url: str, body: str | None = None, content_id: int | None = None) -> str:
    head = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
    if content_id is not None:
        head.append(f"Content-ID: {content_id}")
    lines = [*head, "", f"{method} {url} HTTP/1.1"]
    if body is not None:
        lines += ["Content-Type: application/json; type=entry", "", body]
    else:
        lines += ["Accept: application/json", ""]
    return CRLF.join(lines) + CRLF


def batch(parts: list[str], boundary: str = "batch_AAA123") -> tuple[str, bytes]:
    body = "".join(f"--{boundary}{CRLF}{p}" for p in parts) + f"--{boundary}--{CRLF}"
    return f"multipart/mixed; boundary={boundary}", body.encode()


def changeset(parts: list[str], boundary: str = "changeset_BBB456") -> str:
    inner = "".join(f"--{boundary}{CRLF}{p}" for p in parts) + f"--{boundary}--{CRLF}"
    return f"Content-Type: multipart/mixed; boundary={boundary}{CRLF}{CRLF}{inner}"


def statuses(text: str) -> list[int]:
    return [int(s) for s in re.findall(r"^HTTP/1\.1 (\d{3})", text, re.M)]


def count(dv, flt: str) -> int:
    return len(dv("GET", "accounts", params={"$filter": flt, "$select": "name"}).json()["value"])


def test_changeset_with_content_id_references_and_a_get(dv) -> None:
    tag = uuid.uuid4().hex[:8]
    content_type, body = batch(
        [
            changeset(
                [
                    part("POST", f"{dv.root}/accounts", f'{{"name": "cs-{tag}", "accountnumber": "N{tag}"}}', 1),
                    part(
                        "POST",
                        "/api/data/v9.2/contacts",
                        '{"lastname": "Ref", "parentcustomerid_account@odata.bind": "$1"}',
                        2,
                    ),
                    part("PATCH", "$1", '{"telephone1": "555"}', 3),
                ]
            ),
            part("GET", f"accounts?$select=name,telephone1&$filter=accountnumber eq 'N{tag}'"),
        ]
    )
    r = dv("POST", "$batch", data=body, headers={"Content-Type": content_type, "Accept": "application/json"})
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("multipart/mixed; boundary=batchresponse_")
    text = r.text
    assert statuses(text) == [204, 204, 204, 200]
    assert "Content-Type: multipart/mixed; boundary=changesetresponse_" in text
    assert text.count("Content-ID: ") == 3
    assert re.search(r"OData-EntityId: .*/accounts\([0-9a-f-]{36}\)\r\n", text)
    assert "odata.streaming=true" in text
    assert text.endswith("--\r\n")
    assert "\r\n" in text
    assert "\n\n" not in text.replace("\r\n", "")
    fetched = dv("GET", "accounts", params={"$filter": f"accountnumber eq 'N{tag}'", "$select": "telephone1"})
    assert fetched.json()["value"][0]["telephone1"] == "555"


def test_failed_changeset_rolls_everything_back(dv) -> None:
    tag = uuid.uuid4().hex[:8]
    content_type, body = batch(
        [
            changeset(
                [
                    part("POST", "accounts", f'{{"name": "rb-{tag}-1"}}', 1),
                    part("POST", "accounts", f'{{"name": "rb-{tag}-2"}}', 2),
                    part("POST", "accounts", '{"name": "' + "x" * 161 + '"}', 3),
                ]
            )
        ]
    )
    r = dv("POST", "$batch", data=body, headers={"Content-Type": content_type})
    assert r.status_code == 400
    assert statuses(r.text) == [400]
    assert "Content-ID: 3" in r.text
    assert '"code":"0x80044331"' in r.text.replace(" ", "")
    assert "REQ_ID: " in r.text
    assert count(dv, f"startswith(name,'rb-{tag}')") == 0


def test_continue_on_error_modes(dv) -> None:
    tag = uuid.uuid4().hex[:8]
    parts = [
        part("POST", "accounts", '{"name": "' + "x" * 161 + '"}'),
        part("POST", "accounts", f'{{"name": "coe-{tag}-a"}}'),
        part("POST", "accounts", f'{{"name": "coe-{tag}-b"}}'),
    ]
    content_type, body = batch(parts)
    stop = dv("POST", "$batch", data=body, headers={"Content-Type": content_type})
    assert stop.status_code == 400
    assert statuses(stop.text) == [400]
    assert count(dv, f"startswith(name,'coe-{tag}')") == 0  # stopped at the first failure

    go_on = dv("POST", "$batch", data=body, headers={"Content-Type": content_type, "Prefer": "odata.continue-on-error"})
    assert go_on.status_code == 200
    assert statuses(go_on.text) == [400, 204, 204]
    assert go_on.text.count("Location: ") == 2
    assert count(dv, f"startswith(name,'coe-{tag}')") == 2


def test_batch_level_errors(dv) -> None:
    unknown_ref = batch([changeset([part("PATCH", "$7", '{"name": "x"}', 1)])])
    r = dv("POST", "$batch", data=unknown_ref[1], headers={"Content-Type": unknown_ref[0]})
    assert "Content-ID Reference: '$7' does not exist in the batch context." in r.text
    too_many = batch([part("GET", "WhoAmI")] * 1001)
    r = dv("POST", "$batch", data=too_many[1], headers={"Content-Type": too_many[0]})
    assert r.status_code == 400
    assert "A maximum number of '1000' operations" in r.json()["error"]["message"]
    r = dv("POST", "$batch", data=b"--nope\r\n", headers={"Content-Type": "multipart/mixed; boundary=batch_x"})
    assert r.status_code == 400
    assert "error" in r.json()
    get_in_cs = batch([changeset([part("GET", "WhoAmI", content_id=1)])])
    r = dv("POST", "$batch", data=get_in_cs[1], headers={"Content-Type": get_in_cs[0]})
    assert statuses(r.text) == [400]


def test_lenient_parsing_of_lf_and_quoted_boundaries(dv) -> None:
    tag = uuid.uuid4().hex[:8]
    _content_type, body = batch([part("POST", "accounts", f'{{"name": "lf-{tag}"}}')], boundary="batch_lf")
    r = dv(
        "POST",
        "$batch",
        data=body.replace(b"\r\n", b"\n"),
        headers={"Content-Type": 'multipart/mixed; boundary="batch_lf"'},
    )
    assert r.status_code == 200
    assert statuses(r.text) == [204]
    assert count(dv, f"name eq 'lf-{tag}'") == 1
