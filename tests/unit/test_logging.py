"""Redaction: tokens, private keys and loaded secret values never reach a log line."""

from __future__ import annotations

import logging

import pytest

from shared.logging import JsonLineFormatter, log_event, redact, register_secret

pytestmark = pytest.mark.unit

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL3gifQ.c2lnbmF0dXJlLWJ5dGVz"


def test_bearer_jwt_and_pem_are_masked() -> None:
    text = (
        f"Authorization: Bearer {JWT} token={JWT} -----BEGIN PRIVATE KEY-----\nMIIEvQIBADAN\n-----END PRIVATE KEY-----"
    )
    masked = redact(text)
    assert JWT not in masked
    assert "MIIEvQIBADAN" not in masked
    assert "Bearer ***" in masked


def test_registered_secret_is_masked_in_messages_args_and_exceptions(caplog) -> None:
    register_secret("Zq8Q~unit-test-secret-value")
    logger = logging.getLogger("tests.redaction")
    with caplog.at_level(logging.INFO):
        logger.info("loaded %s", "Zq8Q~unit-test-secret-value")
        try:
            raise ValueError("bad secret Zq8Q~unit-test-secret-value")
        except ValueError:
            logger.exception("failed")
    text = caplog.text + "".join(r.exc_text or "" for r in caplog.records)
    assert "Zq8Q~unit-test-secret-value" not in text
    assert text.count("***") >= 2


def test_structured_event_renders_as_one_json_line() -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("tests.events")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        log_event(logger, "secret_read", secret="dataverse-client-secret", version="abc")
    finally:
        logger.removeHandler(handler)
    (record,) = records
    assert record.getMessage() == "secret_read secret=dataverse-client-secret version=abc"
    line = JsonLineFormatter().format(record)
    assert '"event": "secret_read"' in line
    assert '"version": "abc"' in line


def test_sdk_request_lines_are_dropped_but_sdk_warnings_pass(caplog: pytest.LogCaptureFixture) -> None:
    from shared.logging import SDK_REQUEST_LOGGER, quiet_sdk_request_logging

    quiet_sdk_request_logging()
    sdk = logging.getLogger(SDK_REQUEST_LOGGER)
    with caplog.at_level(logging.DEBUG):
        sdk.info("Request URL: 'https://st.blob.core.windows.net/x'")
        sdk.warning("the SDK retries")
    assert [r.getMessage() for r in caplog.records if r.name == SDK_REQUEST_LOGGER] == ["the SDK retries"]
