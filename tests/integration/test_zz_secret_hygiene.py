"""No secret value, private key or token devstack issued appears in anything the whole suite produced:
every log line (this process at DEBUG with the SDKs' HTTP logging, devstack's and the local hosts' logs),
every dvbridge error message and repr, and every test report (failure text, captured output). The
conftest runs this file after every other test."""

from __future__ import annotations

import pytest

from tests.conftest import ERROR_MESSAGES, TEST_LOG, TEST_REPORTS
from tests.devstack_process import ARTIFACTS, RECORDED_SECRETS

pytestmark = pytest.mark.integration

MIN_FRAGMENT_LEN = 16  # PEM lines and tokens are far longer; shorter fragments would match by chance


def secret_fragments() -> list[str]:
    fragments: set[str] = set()
    for line in RECORDED_SECRETS.read_text().splitlines():
        value = line.replace("\\n", "\n")
        for part in value.splitlines() or [value]:
            part = part.strip()
            if len(part) >= MIN_FRAGMENT_LEN and not part.startswith("-----"):
                fragments.add(part)
        if 8 <= len(value) < MIN_FRAGMENT_LEN:
            fragments.add(value)  # short secrets (identity header) in full
    return sorted(fragments)


def leaks(text: str, fragments: list[str]) -> list[str]:
    return [f[:6] + "..." for f in fragments if f in text]


def test_no_secret_or_token_in_any_log(request: pytest.FixtureRequest) -> None:
    others = [i for i in request.session.items if "integration" in i.keywords and i.name != request.node.name]
    if not others:
        pytest.skip("scans what the integration suite logged: run it with the suite")
    fragments = secret_fragments()
    tokens = [f for f in fragments if f.startswith("eyJ")]
    assert len(tokens) >= 10, "devstack recorded too few tokens: the scan would prove nothing"
    logs = [*sorted(ARTIFACTS.glob("*.log")), TEST_LOG, ERROR_MESSAGES, TEST_REPORTS]
    text = "\n".join(p.read_text(errors="replace") for p in logs if p.exists())
    # The SDKs logged their HTTP traffic at DEBUG, so a leak would have been written here.
    assert "azure.core.pipeline.policies.http_logging_policy" in text
    assert "msal" in text
    # ... and typed errors and test reports were recorded, so those were scanned too.
    assert "AuthError: [" in ERROR_MESSAGES.read_text()
    assert TEST_REPORTS.exists()  # written only when a test printed or failed
    assert leaks(text, fragments) == []


def test_the_scan_finds_a_planted_leak() -> None:
    fragments = ["eyJhbGciOiJSUzI1NiJ9.planted.token-value"]
    assert leaks("GET / Authorization: eyJhbGciOiJSUzI1NiJ9.planted.token-value", fragments) == ["eyJhbG..."]
