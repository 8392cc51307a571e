"""RemoteExecutionContext parsing and signed-webhook verification: typed events, typed refusals only.

Their fuzz targets live in tests/fuzz/test_parsers.py."""

from __future__ import annotations

import json
import time

import pytest

from shared.errors import WebhookRejected
from shared.webhooks.context import MAX_BODY_BYTES, parse_remote_execution_context
from shared.webhooks.signing import sign, verify

pytestmark = pytest.mark.unit

ACCOUNT_ID = "6d81597f-0f9f-e711-8122-000d3aa2331c"
C = "http:\\/\\/schemas.microsoft.com\\/xrm\\/2011\\/Contracts"
# Composed from the reference §8.4 sample (escaped slashes as Dataverse writes them).
SAMPLE = (
    '{"BusinessUnitId":"e2b9dd85-e89e-e711-8122-000d3aa2331c","CorrelationId":"b374239d-4233-41a9-8b17-a86cb4f737b5","Depth":1,'
    '"InitiatingUserId":"75c2dd85-e89e-e711-8122-000d3aa2331c","InputParameters":[{"key":"Target","value":{'
    f'"__type":"Entity:{C}","Attributes":['
    '{"key":"name","value":"Contoso"},'
    f'{{"key":"accountcategorycode","value":{{"__type":"OptionSetValue:{C}","Value":1}}}},'
    f'{{"key":"revenue","value":{{"__type":"Money:{C}","Value":5000000.0000}}}},'
    '{"key":"createdon","value":"\\/Date(1722582039000)\\/"},'
    f'{{"key":"ownerid","value":{{"__type":"EntityReference:{C}","Id":"75c2dd85-e89e-e711-8122-000d3aa2331c","KeyAttributes":[],"LogicalName":"systemuser","Name":null,"RowVersion":null}}}}'
    f'],"EntityState":null,"FormattedValues":[],"Id":"{ACCOUNT_ID}","KeyAttributes":[],"LogicalName":"account","RelatedEntities":[],"RowVersion":null}}}}],'
    '"MessageName":"Create","Mode":0,"OperationCreatedOn":"\\/Date(1722582039000+0000)\\/","OperationId":"00000000-0000-0000-0000-000000000000",'
    '"OrganizationId":"4ef5b371-e89e-e711-8122-000d3aa2331c","OrganizationName":"unq4ef5b371e89ee7118122000d3aa2",'
    f'"PostEntityImages":[{{"key":"Image","value":{{"Attributes":[{{"key":"name","value":"Contoso"}}],"Id":"{ACCOUNT_ID}","LogicalName":"account"}}}}],'
    f'"PreEntityImages":[],"PrimaryEntityId":"{ACCOUNT_ID}","PrimaryEntityName":"account","RequestId":"84d03007-6a8f-41da-aeae-7b6460bb7a04",'
    '"SecondaryEntityName":"none","SharedVariables":[],"Stage":40,"UserId":"75c2dd85-e89e-e711-8122-000d3aa2331c"}'
).encode()


def test_the_reference_sample_becomes_a_typed_event() -> None:
    event = parse_remote_execution_context(SAMPLE)
    assert (event.message, event.table, event.record_id, event.stage, event.depth) == (
        "Create",
        "account",
        ACCOUNT_ID,
        40,
        1,
    )
    assert event.attributes == {
        "name": "Contoso",
        "accountcategorycode": 1,
        "revenue": 5000000.0,
        "createdon": "2024-08-02T07:00:39Z",
        "ownerid": {"id": "75c2dd85-e89e-e711-8122-000d3aa2331c", "logical_name": "systemuser", "name": None},
    }
    assert event.post_image == {"name": "Contoso"}
    assert event.request_id == "84d03007-6a8f-41da-aeae-7b6460bb7a04"
    assert not event.size_exceeded


def test_a_stripped_context_is_flagged() -> None:
    stripped = json.loads(SAMPLE)
    for key in ("InputParameters", "PreEntityImages", "PostEntityImages", "ParentContext"):
        stripped.pop(key, None)
    event = parse_remote_execution_context(json.dumps(stripped).encode(), {"x-ms-dynamics-msg-size-exceeded": "true"})
    assert event.size_exceeded
    assert event.attributes == {}
    assert event.record_id == ACCOUNT_ID


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b"{not json", 400, "not JSON"),
        (b"[]", 400, "JSON object"),
        (b'{"MessageName": "Create"}', 400, "PrimaryEntityName, PrimaryEntityId"),
        (
            json.dumps({"MessageName": "Create", "PrimaryEntityName": "account", "PrimaryEntityId": "nope"}).encode(),
            400,
            "PrimaryEntityId is not a GUID",
        ),
        (b"[" * 100_000 + b"]" * 100_000, 400, ""),
        (b" " * (MAX_BODY_BYTES + 1), 413, "at most"),
    ],
)
def test_malformed_bodies_are_refused_with_the_reason(body: bytes, status: int, reason: str) -> None:
    with pytest.raises(WebhookRejected) as caught:
        parse_remote_execution_context(body)
    assert caught.value.status == status
    assert reason in caught.value.reason


def test_signature_window_and_tampering() -> None:
    body, now = b'{"id": 1}', time.time()
    ts = int(now)
    headers = {
        "X-Webhook-Timestamp": str(ts),
        "X-Webhook-Nonce": "n-1",
        "X-Webhook-Signature": sign("s3cret", ts, "n-1", body),
    }
    assert verify("s3cret", headers, body, now=now) == "n-1"
    for broken, reason in [
        ({**headers, "X-Webhook-Signature": sign("other", ts, "n-1", body)}, "does not match"),
        (
            {
                **headers,
                "X-Webhook-Timestamp": str(ts - 301),
                "X-Webhook-Signature": sign("s3cret", ts - 301, "n-1", body),
            },
            "away from now",
        ),
        ({k: v for k, v in headers.items() if k != "X-Webhook-Nonce"}, "missing"),
    ]:
        with pytest.raises(WebhookRejected) as caught:
            verify("s3cret", broken, body, now=now)
        assert caught.value.status == 401
        assert reason in caught.value.reason
    with pytest.raises(WebhookRejected):
        verify("s3cret", headers, body + b" ", now=now)  # the body was changed in transit
