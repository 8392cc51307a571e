"""The one place where data becomes part of a URL: what each kind of value turns into, what is refused, and
the regression cases of issue 15 (a key that decoded into another key, a key shaped like a path)."""

from __future__ import annotations

import pytest
import requests

from shared.dataverse.addressing import (
    KeyValueRefused,
    bind_path,
    entity_path,
    key_filter,
    key_text,
    needs_query_addressing,
    table_definition_path,
)
from shared.dataverse.batch_codec import Operation, encode_batch
from shared.dataverse.client import ClientOptions, DataverseClient
from shared.errors import DataverseError

pytestmark = pytest.mark.unit
ID = "0e6a24e1-0000-0000-0000-000000000001"


@pytest.mark.parametrize(
    ("key", "path"),
    [
        ({"accountnumber": "C000%3269"}, "accounts(accountnumber='C000%253269')"),  # no longer C000269
        ({"accountnumber": "O'Brien"}, "accounts(accountnumber='O''Brien')"),
        ({"accountnumber": "a?b#c&d"}, "accounts(accountnumber='a%3Fb%23c%26d')"),
        ({"accountnumber": "x%27) or (1"}, "accounts(accountnumber='x%2527%29%20or%20%281')"),
        ({"accountnumber": "Müller 中"}, "accounts(accountnumber='M%C3%BCller%20%E4%B8%AD')"),
        ({"firstname": "Joe", "emailaddress1": "a@b.c"}, "accounts(firstname='Joe',emailaddress1='a%40b.c')"),
        ({"n": 2, "flag": True}, "accounts(n=2,flag=true)"),
        (ID.upper(), f"accounts({ID})"),
        (
            {"_parentid_value": "0e6a24e1-0000-0000-0000-000000000001"},
            "accounts(_parentid_value=0e6a24e1-0000-0000-0000-000000000001)",
        ),
    ],
)
def test_each_key_value_is_quoted_and_percent_encoded(key: dict[str, object] | str, path: str) -> None:
    assert entity_path("accounts", key) == path
    assert bind_path("accounts", key) == "/" + path


@pytest.mark.parametrize("value", ["e@x.com\r\nX-Injected: 1", "a\x00b", "tab\there", "del\x7f"])
def test_control_characters_are_refused_naming_the_column(value: str) -> None:
    with pytest.raises(KeyValueRefused) as refused:
        entity_path("contacts", {"emailaddress1": value})
    assert refused.value.field == "emailaddress1"
    assert "control character" in refused.value.reason
    with pytest.raises(KeyValueRefused):
        key_filter({"emailaddress1": value})


@pytest.mark.parametrize("value", ["/../contacts#", "a/b", "a\\b", "a%2Fb/"])
def test_slashes_are_found_by_a_query_never_put_into_a_path(value: str) -> None:
    key = {"accountnumber": value}
    assert needs_query_addressing(key)
    with pytest.raises(KeyValueRefused, match="URL path"):
        entity_path("accounts", key)
    quoted = value.replace("'", "''")
    assert key_filter(key) == f"accountnumber eq '{quoted}'"  # requests percent-encodes the query string


@pytest.mark.parametrize("name", ["contacts/x", "accounts(1)", "../accounts", "", "a b", "ü"])
def test_names_are_identifiers_so_no_name_adds_a_segment(name: str) -> None:
    with pytest.raises(KeyValueRefused):
        entity_path(name, {"accountnumber": "A1"})
    with pytest.raises(KeyValueRefused):
        entity_path("accounts", {name: "A1"})
    with pytest.raises(KeyValueRefused):
        table_definition_path(name)


def test_key_text_is_the_unencoded_canonical_form() -> None:
    assert key_text({"accountnumber": "O'Brien", "n": 2, "flag": True}) == "accountnumber='O''Brien',n=2,flag=true"
    assert key_text({"a": "1"}) != key_text({"a": 1})


@pytest.mark.parametrize("url", ["accounts(accountnumber='a b')", "accounts(x='1')\r\nGET /x", "accounts(ü)", ""])
def test_a_batch_request_line_that_is_not_percent_encoded_is_never_written(url: str) -> None:
    with pytest.raises(ValueError, match="percent-encoded"):
        encode_batch([Operation("PATCH", url, {"name": "x"})])


def test_a_batch_part_header_with_a_line_break_is_never_written() -> None:
    with pytest.raises(ValueError, match="line break"):
        encode_batch([Operation("PATCH", "accounts(1)", {}, {"If-Match": "*\r\nX-Injected: 1"})])


class _Tokens:
    def token_for_invocation(self, *, force_refresh: bool = False) -> object:
        return type("T", (), {"value": "not-a-real-token"})()


class _RecordingSession(requests.Session):
    def __init__(self) -> None:
        super().__init__()
        self.sent: list[str] = []

    def request(self, method: str, url: str, *args: object, **kwargs: object) -> requests.Response:  # type: ignore[override]
        self.sent.append(url)
        response = requests.Response()
        response.status_code = 200
        response._content = b'{"value": [], "@odata.nextLink": "https://elsewhere.example/api/data/v9.2/accounts"}'
        return response


def test_a_next_link_to_another_host_never_gets_the_bearer_token() -> None:
    session = _RecordingSession()
    client = DataverseClient("https://org.example", _Tokens(), session=session, options=ClientOptions())
    with pytest.raises(DataverseError, match="outside"):
        list(client.query("accounts"))
    assert session.sent == ["https://org.example/api/data/v9.2/accounts"]


@pytest.mark.parametrize(
    ("value", "kept"),
    [("account", True), (ID, True), ("..", False), ("a/../b", False), ("x" * 101, False), ("", False)],
)
def test_event_data_becomes_a_blob_name_segment_only_when_plainly_safe(value: str, kept: bool) -> None:
    from shared.webhooks.processor import _name_part

    part = _name_part(value)
    assert (part == value) is kept
    assert "/" not in part
    assert part not in (".", "..")


def test_a_lone_surrogate_is_refused_not_a_crash() -> None:
    with pytest.raises(KeyValueRefused, match="lone surrogate"):
        entity_path("accounts", {"accountnumber": "a\ud800"})


@pytest.mark.parametrize(
    ("url", "inside"),
    [
        ("https://org.example/api/data/v9.2/accounts?$skiptoken=1", True),
        ("https://ORG.example:443/api/data/v9.2/accounts", True),
        ("https://org.example/api/data/v9.2", True),
        ("https://org.example/api/data/v9.20/accounts", False),
        ("https://org.example.evil/api/data/v9.2/accounts", False),
        ("http://org.example/api/data/v9.2/accounts", False),
        ("https://org.example:8443/api/data/v9.2/accounts", False),
    ],
)
def test_the_client_stays_below_its_web_api_root(url: str, inside: bool) -> None:
    from shared.dataverse.wire import within as _within

    assert _within(url, "https://Org.Example/api/data/v9.2") is inside
