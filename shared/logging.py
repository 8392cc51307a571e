"""Structured log lines and the redaction that keeps secrets and tokens out of them.

Redaction happens when a record is *created* (a log-record factory), so every handler sees the
masked text: the Functions worker's, Application Insights', pytest's and our own. It masks

* bearer tokens (``Bearer eyJ...``) and anything shaped like a JWT,
* PEM private-key blocks,
* every secret value this process loaded from Key Vault (:func:`register_secret`).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from typing import Any

REDACTED = "***"
MIN_REGISTERED_SECRET_LEN = 6  # shorter values would mask ordinary words; secrets are never this short

_BEARER = re.compile(r"(?i)\bbearer\s+[A-Za-z0-9\-._~+/]+=*")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_PEM_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S)

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_installed = False
_base_factory = logging.getLogRecordFactory()


def register_secret(value: str) -> None:
    """Mask ``value`` (and each line of it, for multi-line PEM/PFX material) in every later log line."""
    candidates = {value.strip(), *(line.strip() for line in value.splitlines())}
    with _secrets_lock:
        for candidate in candidates:
            if len(candidate) >= MIN_REGISTERED_SECRET_LEN and not candidate.startswith("-----"):
                _secrets.add(candidate)


def redact(text: str) -> str:
    """Return ``text`` with tokens, private keys and registered secret values masked."""
    text = _PEM_KEY.sub("-----PRIVATE KEY " + REDACTED + "-----", text)
    text = _BEARER.sub("Bearer " + REDACTED, text)
    text = _JWT.sub(REDACTED, text)
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def _redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record = _base_factory(*args, **kwargs)
    try:
        message = record.getMessage()
    except Exception:  # a malformed format string is the caller's bug; keep the raw text
        message = str(record.msg)
    record.msg = redact(message)
    record.args = None
    if record.exc_info and record.exc_info[0] is not None:
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        # Handlers re-format exc_info unless exc_text is set; drop the live exception so they can't.
        record.exc_info = None
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    return record


def install_redaction() -> None:
    """Install the redacting log-record factory (idempotent)."""
    global _installed
    if _installed:
        return
    logging.setLogRecordFactory(_redacting_factory)
    _installed = True


# The Azure SDKs log every request and response (method, URL, headers) at INFO. In a Functions worker each
# line becomes an RpcLog and then a trace: several per storage call, per event, for nothing our own events
# do not already say. Warnings and errors still pass.
SDK_REQUEST_LOGGER = "azure.core.pipeline.policies.http_logging_policy"


def quiet_sdk_request_logging() -> None:
    logging.getLogger(SDK_REQUEST_LOGGER).setLevel(logging.WARNING)


class JsonLineFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the record's ``event`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update({k: v for k, v in fields.items() if k not in line})
        if record.exc_text:
            line["exception"] = record.exc_text
        return redact(json.dumps(line, default=str))


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log a structured event: ``event key=value ...`` as text, the fields also attached as ``fields``.

    The text form is what the Functions host ships to Application Insights, so alert rules can
    match on ``event``; the ``fields`` attribute feeds :class:`JsonLineFormatter`.
    """
    rendered = " ".join(f"{k}={_render(v)}" for k, v in fields.items())
    logger.log(level, f"{event} {rendered}".strip(), extra={"fields": {"event": event, **fields}})


def _render(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (" " in text or not text) else text


install_redaction()
