"""The $batch codec: byte examples in Microsoft's documented grammar, both failure shapes, and hypothesis round trips."""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.dataverse.batch_codec import (
    ROLLED_BACK,
    UNKNOWN_OUTCOME,
    ChangeSet,
    Operation,
    decode_batch,
    encode_batch,
    match_results,
)

pytestmark = pytest.mark.unit

# A $batch request composed from the grammar Microsoft documents, as exact bytes (838).
REFERENCE_REQUEST = (
    b'--batch_7f1a\r\nContent-Type: multipart/mixed; boundary="changeset_9c2b"\r\n\r\n'
    b"--changeset_9c2b\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nContent-ID: 1\r\n\r\n"
    b"POST https://contoso.crm.dynamics.com/api/data/v9.2/accounts HTTP/1.1\r\nContent-Type: application/json; type=entry\r\n\r\n"
    b'{"name":"Contoso"}\r\n'
    b"--changeset_9c2b\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nContent-ID: 2\r\n\r\n"
    b"POST https://contoso.crm.dynamics.com/api/data/v9.2/contacts HTTP/1.1\r\nContent-Type: application/json; type=entry\r\n\r\n"
    b'{"lastname":"Smith","parentcustomerid_account@odata.bind":"$1"}\r\n'
    b"--changeset_9c2b--\r\n\r\n"
    b"--batch_7f1a\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
    b"GET https://contoso.crm.dynamics.com/api/data/v9.2/accounts?$select=name&$top=1 HTTP/1.1\r\nAccept: application/json\r\n\r\n\r\n"
    b"--batch_7f1a--\r\n"
)

ROOT = "https://contoso.crm.dynamics.com/api/data/v9.2"
B, C = "batchresponse_3f2e6c1a-0b7d-4e7a-9a51-2f7d8c0e1b11", "changesetresponse_8d9e0f12-3a4b-4c5d-8e6f-7a8b9c0d1e2f"
ID1, ID2 = "a1b2c3d4-0000-4000-8000-000000000001", "a1b2c3d4-0000-4000-8000-000000000002"
REFERENCE_RESPONSE = (
    f"--{B}\r\nContent-Type: multipart/mixed; boundary={C}\r\n\r\n"
    f"--{C}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nContent-ID: 1\r\n\r\n"
    f"HTTP/1.1 204 No Content\r\nOData-Version: 4.0\r\nLocation: {ROOT}/accounts({ID1})\r\nOData-EntityId: {ROOT}/accounts({ID1})\r\n\r\n\r\n"
    f"--{C}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nContent-ID: 2\r\n\r\n"
    f"HTTP/1.1 204 No Content\r\nOData-Version: 4.0\r\nLocation: {ROOT}/contacts({ID2})\r\nOData-EntityId: {ROOT}/contacts({ID2})\r\n\r\n\r\n"
    f"--{C}--\r\n"
    f"--{B}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
    "HTTP/1.1 200 OK\r\nContent-Type: application/json; odata.metadata=minimal; odata.streaming=true\r\nOData-Version: 4.0\r\n\r\n"
    f'{{"@odata.context":"{ROOT}/$metadata#accounts(name)","value":[{{"@odata.etag":"W/\\"77180907\\"","name":"Contoso","accountid":"{ID1}"}}]}}\r\n'
    f"--{B}--\r\n"
).encode()

REFERENCE_ITEMS = [
    ChangeSet(
        (
            Operation("POST", f"{ROOT}/accounts", {"name": "Contoso"}, content_id="1"),
            Operation(
                "POST",
                f"{ROOT}/contacts",
                {"lastname": "Smith", "parentcustomerid_account@odata.bind": "$1"},
                content_id="2",
            ),
        )
    ),
    Operation("GET", f"{ROOT}/accounts?$select=name&$top=1"),
]


def test_encoder_writes_the_reference_request_byte_for_byte() -> None:
    content_type, body = encode_batch(REFERENCE_ITEMS, boundary="batch_7f1a")
    body = body.replace(
        body.split(b'boundary="', 2)[1].split(b'"')[0], b"changeset_9c2b"
    )  # its generated inner boundary
    assert content_type == 'multipart/mixed; boundary="batch_7f1a"'
    assert body == REFERENCE_REQUEST


@pytest.mark.parametrize("line_end", [b"\r\n", b"\n"])
def test_decoder_reads_the_reference_response(line_end: bytes) -> None:
    parts = decode_batch(f"multipart/mixed; boundary={B}", REFERENCE_RESPONSE.replace(b"\r\n", line_end))
    results = match_results(REFERENCE_ITEMS, parts)
    assert [(r.status, r.content_id, r.entity_id) for r in results[:2]] == [(204, "1", ID1), (204, "2", ID2)]
    assert results[2].status == 200
    assert results[2].json()["value"][0]["name"] == "Contoso"


def test_failed_changeset_in_both_shapes() -> None:
    failing = (
        "HTTP/1.1 400 Bad Request\r\nREQ_ID: 5ecd\r\nContent-Type: application/json; odata.metadata=minimal\r\nOData-Version: 4.0\r\n\r\n"
        '{"error":{"code":"0x80044331","message":"A validation error occurred."}}\r\n'
    )
    items = [ChangeSet(tuple(Operation("POST", "accounts", {"name": str(i)}, content_id=str(i)) for i in (1, 2, 3)))]
    dataverse_shape = (
        f"--{B}\r\nContent-Type: multipart/mixed; boundary={C}\r\n\r\n"
        f"--{C}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nContent-ID: 2\r\n\r\n{failing}"
        f"--{C}--\r\n--{B}--\r\n"
    ).encode()
    results = match_results(items, decode_batch(f"multipart/mixed; boundary={B}", dataverse_shape))
    assert [(r.status, r.code) for r in results] == [(400, ROLLED_BACK), (400, "0x80044331"), (400, ROLLED_BACK)]
    strict_shape = f"--{B}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n{failing}--{B}--\r\n".encode()
    results = match_results(items, decode_batch(f"multipart/mixed; boundary={B}", strict_shape))
    # Which member failed is not reported in this shape: each carries the change set's failure.
    assert [(r.status, r.code, r.content_id) for r in results] == [(400, "0x80044331", c) for c in ("1", "2", "3")]


def test_stop_at_first_failure_leaves_other_outcomes_unknown() -> None:
    items = [Operation("POST", "accounts", {"name": str(i)}) for i in range(3)]
    reply = (
        f"--{B}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
        'HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\n\r\n{"error":{"code":"0x80072322","message":"x"}}\r\n'
        f"--{B}--\r\n"
    ).encode()
    results = match_results(items, decode_batch(f"multipart/mixed; boundary={B}", reply))
    assert [r.code for r in results] == [UNKNOWN_OUTCOME] * 3
    part = decode_batch(f"multipart/mixed; boundary={B}", reply)[0].results[0]
    assert part.retry_after_s == 7.0
    assert part.code == "0x80072322"


def test_malformed_replies_are_typed_errors() -> None:
    from shared.errors import BatchDecodeError

    with pytest.raises(BatchDecodeError):
        decode_batch("application/json", b"{}")
    with pytest.raises(BatchDecodeError):
        decode_batch(
            f"multipart/mixed; boundary={B}", f"--{B}\r\nContent-Type: application/http\r\n\r\nnot http\r\n".encode()
        )


# -- property: what we encode, the emulator's parser reads back; what the emulator writes, we decode ------
names = st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=12)
values = st.one_of(st.text(max_size=40), st.integers(-(10**9), 10**9), st.booleans(), st.none())
bodies = st.dictionaries(names, values, max_size=5)
operations = st.builds(
    lambda method, body, cid: Operation(method, f"{ROOT}/accounts", body if method != "GET" else None, content_id=cid),
    st.sampled_from(["POST", "PATCH", "GET", "DELETE"]),
    bodies,
    st.one_of(st.none(), st.integers(1, 999).map(str)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(operations, min_size=1, max_size=8))
def test_round_trip_through_the_emulator_parser(ops: list[Operation]) -> None:
    from devstack.dataverse.batch import parse_batch

    content_type, body = encode_batch(ops)
    parsed = parse_batch(content_type, body)
    assert [(p.method, p.url, p.content_id) for p in parsed] == [(o.method, o.url, o.content_id) for o in ops]  # type: ignore[union-attr]
    for sent, got in zip(ops, parsed, strict=True):
        assert (json.loads(got.body) if got.body else None) == (sent.body if sent.body is not None else None)  # type: ignore[union-attr]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([200, 204, 400, 404, 412, 429]), bodies), min_size=1, max_size=8))
def test_round_trip_of_replies_written_by_the_emulator(replies: list[tuple[int, dict[str, object]]]) -> None:
    from devstack.dataverse.batch import CRLF, PartResult, _render_part

    parts = []
    for status, body in replies:
        payload = (
            json.dumps({"error": {"code": "0x80040203", "message": "bad"}} if status >= 400 else body).encode()
            if status != 204
            else b""
        )
        parts.append(
            _render_part(PartResult(status, [("Content-Type", "application/json")] if payload else [], payload, None))
        )
    reply = "".join(f"--{B}{CRLF}{p}" for p in parts) + f"--{B}--{CRLF}"
    decoded = decode_batch(f"multipart/mixed; boundary={B}", reply.encode())
    assert [d.results[0].status for d in decoded] == [s for s, _ in replies]
    for (status, body), part in zip(replies, decoded, strict=True):
        if status in (200,):
            assert part.results[0].json() == body
        if status >= 400:
            assert part.results[0].code == "0x80040203"
