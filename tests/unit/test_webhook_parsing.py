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
# A Create of an account, composed from Microsoft's documented RemoteExecutionContext (escaped slashes as
# Dataverse writes them).
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


def with_target_attribute(value_json: str, *, key: str = "x") -> bytes:
    """The sample with one more Target attribute, its value given as raw JSON text (so that number literals
    Python could not serialise, like 5,000 digits, reach the parser as Dataverse would send them)."""
    marker = '"__placeholder__"'
    context = json.loads(SAMPLE)
    context["InputParameters"][0]["value"]["Attributes"].append({"key": key, "value": "__placeholder__"})
    return json.dumps(context).replace(marker, value_json).encode()


# Issue 15: each of these answered 503 (an exception other than WebhookRejected), or was accepted and
# poisoned the processor later; each must be a 400 naming the attribute and what is wrong.
BAD_VALUES = [
    ('"/Date(99999999999999999)/"', "Target.x: the date", "out of range"),  # year 3170843: ValueError
    ('"/Date(' + "9" * 400 + ')/"', "Target.x: the date", "out of range"),  # OverflowError in the division
    ('"/Date(' + "9" * 5000 + ')/"', "Target.x: the date", "out of range"),  # int max-str-digits ValueError
    ('"/Date(-99999999999999999)/"', "Target.x: the date", "out of range"),
    ("9" * 5000, "Target.x: the number", "5,000 characters"),  # "not JSON", naming no attribute
    ("-" + "9" * 30, "Target.x: the whole number", "64-bit"),
    ("1e400", "Target.x: the number 1e400", "64-bit floating-point"),  # became inf, accepted
    ("-1e400", "Target.x: the number -1e400", "64-bit floating-point"),
    ("NaN", "Target.x: the number NaN", "not a JSON number"),  # accepted as nan
    ("[1, [Infinity]]", "Target.x[1][0]: the number Infinity", "not a JSON number"),
    ('{"__type": "Money:c", "Value": "abc"}', "Target.x.Value", "must be a number"),  # accepted as "abc"
    ('{"__type": "Money:c", "Value": true}', "Target.x.Value", "must be a number"),
    ('{"__type": "Money:c", "Value": 1e300}', "Target.x.Value", "currency range"),
    ('{"__type": "Money:c", "Value": ' + "1" * 70 + "}", "Target.x.Value: the number", "characters"),
    ('{"__type": "Money:c"}', "Target.x.Value", "must be a number"),
    ('{"__type": "OptionSetValue:c", "Value": 1.5}', "Target.x.Value", "whole number"),
    ('{"__type": "OptionSetValue:c", "Value": 4294967296}', "Target.x.Value", "between"),
    ('{"__type": "OptionSetValue:c", "Value": false}', "Target.x.Value", "whole number"),
    ('{"__type": "EntityReference:c", "Id": 12, "LogicalName": "account"}', "Target.x.Id", "not a GUID"),
    ('{"__type": "EntityReference:c", "Id": "' + "1" * 5000 + '"}', "Target.x.Id", "not a GUID"),
    (f'{{"__type": "EntityReference:c", "Id": "{ACCOUNT_ID}", "LogicalName": 7}}', "Target.x.LogicalName", "string"),
    (f'{{"__type": "EntityReference:c", "Id": "{ACCOUNT_ID}", "Name": ["n"]}}', "Target.x.Name", "string"),
    (f'{{"LogicalName": "account", "Id": "{ACCOUNT_ID}_"}}', "Target.x.Id", "not a GUID"),  # int() took "_"
    ('{"__type": 5}', "Target.x.__type", "must be a string"),
    (
        '{"__type": "EntityCollection:c", "Entities": [{"Attributes": [{"key": "d", "value": "/Date('
        + "9" * 20
        + ')/"}]}]}',
        "Target.x.Entities[0].d: the date",
        "out of range",
    ),
    ('{"Attributes": {"key": "a"}}', "Target.x.Attributes", "list of key/value pairs"),
    ('{"Attributes": [{"value": 1}]}', "Target.x.Attributes[0]", "pair"),  # dropped silently before
    ('{"Attributes": [{"key": 5, "value": 1}]}', "Target.x.Attributes[0]", "pair"),
    ("[" * 40 + "]" * 40, "Target.x" + "[0]" * 32, "nested more than 32 levels"),
]


@pytest.mark.parametrize(("value_json", "where", "problem"), BAD_VALUES)
def test_a_bad_attribute_value_is_a_400_naming_the_attribute(value_json: str, where: str, problem: str) -> None:
    with pytest.raises(WebhookRejected) as caught:
        parse_remote_execution_context(with_target_attribute(value_json))
    assert caught.value.status == 400
    assert where in caught.value.reason
    assert problem in caught.value.reason
    assert len(caught.value.reason) < 400  # a 5,000-digit value is quoted, not echoed


@pytest.mark.parametrize(
    ("field", "value_json", "problem"),
    [
        ("PrimaryEntityId", "1" * 4000, "PrimaryEntityId is not a GUID"),  # the reason quotes 60 digits
        ("PrimaryEntityId", f'"{ACCOUNT_ID[:-1]}g"', "PrimaryEntityId is not a GUID"),
        ("RequestId", "12", "RequestId is not a GUID"),
        ("Depth", "1" * 4000, "Depth: the number"),  # accepted before
        ("Depth", "-1", "Depth must be between 0"),
        ("Depth", "true", "Depth must be a whole number"),
        ("Stage", "1e400", "Stage: the number 1e400"),
        ("Mode", "4294967296", "Mode must be between"),
        ("OrganizationName", "{}", "OrganizationName: must be a string"),  # became the text "{}"
        ("MessageName", "NaN", "MessageName must be a string"),
    ],
)
def test_a_bad_context_field_is_a_400_naming_it(field: str, value_json: str, problem: str) -> None:
    context = json.loads(SAMPLE)
    context[field] = "__placeholder__"
    body = json.dumps(context).replace('"__placeholder__"', value_json).encode()
    with pytest.raises(WebhookRejected) as caught:
        parse_remote_execution_context(body)
    assert (caught.value.status, problem in caught.value.reason) == (400, True), caught.value.reason


@pytest.mark.parametrize(
    ("where", "image_json", "problem"),
    [
        ("PostEntityImages", '[{"key": "Image", "value": 5}]', "PostEntityImages[Image]: must be an Entity"),
        (
            "PostEntityImages",
            '[{"key": "Image", "value": {"Attributes": [{"key": "n", "value": 1e999}]}}]',
            "PostEntityImages[Image].n: the number 1e999",
        ),
        ("PreEntityImages", '[{"key": "Pre", "value": {"Attributes": [{"key": "c", "value": "/Date(1e3)/"}]}}]', ""),
        (
            "PreEntityImages",
            '[{"key": "Pre", "value": {"Attributes": [{"key": "c", "value": "/Date(' + "1" * 16 + ')/"}]}}]',
            "PreEntityImages[Pre].c: the date",
        ),
    ],
)
def test_a_bad_image_value_is_a_400_naming_the_image_and_attribute(where: str, image_json: str, problem: str) -> None:
    context = json.loads(SAMPLE)
    context[where] = "__placeholder__"
    body = json.dumps(context).replace('"__placeholder__"', image_json).encode()
    if not problem:  # not the WCF date form: a text value, kept as it is
        assert parse_remote_execution_context(body).pre_image == {"c": "/Date(1e3)/"}
        return
    with pytest.raises(WebhookRejected) as caught:
        parse_remote_execution_context(body)
    assert caught.value.status == 400
    assert problem in caught.value.reason


@pytest.mark.parametrize(
    ("value_json", "converted"),
    [
        ('"/Date(253402300799999)/"', "9999-12-31T23:59:59Z"),  # the last millisecond datetime holds
        ('"/Date(-62135596800000)/"', "0001-01-01T00:00:00Z"),  # the first; 4-digit year, not "1-01-01"
        ('"/Date(1722582039000-0700)/"', "2024-08-02T07:00:39Z"),  # the offset is the sender's zone, not a shift
        ('"/Date(١٢٣)/"', "/Date(١٢٣)/"),  # other scripts' digits: text, not a date
        ('"/Date(1)/\\n"', "/Date(1)/\n"),  # a trailing newline: text
        ('{"__type": "Money:c", "Value": -922337203685477}', -922337203685477),
        ('{"__type": "OptionSetValue:c", "Value": -2147483648}', -2147483648),
        (str(2**63 - 1), 2**63 - 1),
        ("1e308", 1e308),
        ("[true, null, 0.5]", [True, None, 0.5]),
        (
            f'{{"__type": "EntityReference:c", "Id": "{{{ACCOUNT_ID.upper()}}}", "LogicalName": "account"}}',
            {"id": ACCOUNT_ID, "logical_name": "account", "name": None},
        ),
        (
            '{"__type": "AliasedValue:c", "AttributeLogicalName": "a", "Value": {"__type": "Money:c", "Value": 2}}',
            {"AttributeLogicalName": "a", "Value": 2},
        ),
        ("[" * 30 + "]" * 30, [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]),  # within the bound
    ],
)
def test_values_at_the_edge_of_each_range_are_accepted(value_json: str, converted: object) -> None:
    assert parse_remote_execution_context(with_target_attribute(value_json)).attributes["x"] == converted


def test_two_updates_without_request_or_operation_ids_are_not_one_delivery() -> None:
    import uuid

    def event(correlation: str) -> str:
        context = {**json.loads(SAMPLE), "RequestId": None, "OperationId": None, "CorrelationId": correlation}
        return parse_remote_execution_context(json.dumps(context).encode()).dedupe_key

    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    assert event(first) != event(second)
    assert event(first) == event(first)  # Dataverse's retry of one delivery is still one
