"""The emulator reads a key in a URL as Dataverse does: the path is percent-decoded once, then split into
segments, so ``%25`` is a literal ``%`` and an encoded ``/`` still breaks the segment (odata.net#1708:
"Bad Request - Error in query syntax." with 0x8006088a), in a request's path, in a ``$batch`` request line
and in an ``@odata.bind`` value."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from shared.dataverse.batch_codec import Operation, decode_batch, encode_batch
from tests.dataverse_api import api_for

pytestmark = pytest.mark.integration


@pytest.fixture
def api(devstack: Any, app_env: Any) -> Any:
    app_env(devstack)
    return api_for(devstack)


def test_percent_25_is_a_literal_percent_and_decodes_once(api: Any) -> None:
    number = f"K{uuid.uuid4().hex[:6]}%32"
    assert api(
        "PATCH", f"accounts(accountnumber='{number.replace('%', '%25')}')", json={"name": "lit"}
    ).status_code in (
        201,
        204,
    )
    found = api("GET", "accounts", params={"$select": "name", "$filter": f"accountnumber eq '{number}'"}).json()
    assert [r["name"] for r in found["value"]] == ["lit"]
    # Sent unencoded, %32 is decoded to "2": another key, which does not exist.
    assert api("GET", f"accounts(accountnumber='{number}')").status_code == 404


@pytest.mark.parametrize("key", ["a%2Fb", "a/b", "a%5Cb", "a\\b"])
def test_an_encoded_or_plain_slash_in_a_key_breaks_the_segment_as_on_dataverse(api: Any, key: str) -> None:
    answer = api("PATCH", f"accounts(accountnumber='{key}')", json={"name": "x"})
    assert answer.status_code == 400
    assert answer.json()["error"] == {"code": "0x8006088a", "message": "Bad Request - Error in query syntax."}


def test_the_same_reading_applies_to_batch_request_lines_and_binds(api: Any) -> None:
    number = f"B{uuid.uuid4().hex[:6]}%41"
    path = f"accounts(accountnumber='{number.replace('%', '%25')}')"
    bind = "parentcustomerid_account@odata.bind"
    content_type, body = encode_batch(
        [
            Operation("PATCH", path, {"name": "in batch"}),
            Operation("PATCH", "accounts(accountnumber='x%2Fy')", {"name": "split"}),
            Operation("POST", "contacts", {"lastname": "L", bind: f"/{path}"}),
            Operation("POST", "contacts", {"lastname": "L", bind: "/accounts(accountnumber='x%2Fy')"}),
        ]
    )
    reply = api(
        "POST", "$batch", data=body, headers={"Content-Type": content_type, "Prefer": "odata.continue-on-error"}
    )
    statuses = [r.status for part in decode_batch(reply.headers["Content-Type"], reply.content) for r in part.results]
    assert statuses[0] in (201, 204)
    assert statuses[1:] == [400, 204, 400]
    found = api("GET", "accounts", params={"$select": "name", "$filter": f"accountnumber eq '{number}'"}).json()
    assert [r["name"] for r in found["value"]] == ["in batch"]
