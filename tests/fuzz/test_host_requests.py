"""Inputs nobody chose, through the real front end: devstack's host turns each request into ``RpcHttp``,
the pinned runtime turns that into ``func.HttpRequest`` in the worker process, and the fixture app echoes
what it received. Whatever the client sends — a route segment, query names and values, a header value,
any body — reaches the function unchanged, and nothing in between answers with a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.devstack_process import ROOT, DevstackProcess
from tests.fuzz.test_parsers import FUZZ

pytestmark = pytest.mark.e2e

FIXTURE_APP = Path(__file__).resolve().parents[1] / "e2e" / "fixture_app"
# A segment is any text but the path separator; "." and ".." are path syntax that clients resolve away.
SEGMENTS = st.text(st.characters(exclude_characters="/", exclude_categories=["Cs"]), min_size=1).filter(
    lambda s: s not in (".", "..")
)
QUERY_TEXT = st.text(st.characters(exclude_categories=["Cs"]))
# Header values as HTTP carries them: visible ASCII and spaces inside, no surrounding whitespace.
HEADER_VALUES = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevstackProcess]:
    process = DevstackProcess(
        ROOT / "devstack" / "scenarios" / "default.yaml", tmp_path_factory.mktemp("echo"), "echo",
        "--host", "--app-dir", str(FIXTURE_APP), "--host-port", "0", "--memory", "--no-azurite",
    )  # fmt: skip
    yield process
    process.stop()


@settings(FUZZ, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    segment=SEGMENTS,
    params=st.dictionaries(QUERY_TEXT.filter(bool), QUERY_TEXT, max_size=4),
    header=HEADER_VALUES,
    body=st.binary(max_size=2048),
)
def test_what_the_client_sent_is_what_the_function_gets(
    stack: DevstackProcess, segment: str, params: dict[str, str], header: str, body: bytes
) -> None:
    url = f"{stack.env['FUNCTIONS_BASE_URL']}/api/echo/{quote(segment, safe='')}?{urlencode(params)}"
    answer = requests.post(url, data=body, headers={"x-echo": header}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"segment": segment, "params": params, "header": header, "body": body.hex()}
