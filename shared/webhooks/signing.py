"""Signed generic webhooks: HMAC-SHA256 over ``<timestamp>.<nonce>.<body>`` with a per-source secret.

Headers: ``X-Webhook-Timestamp`` (Unix seconds), ``X-Webhook-Nonce`` (unique per delivery) and
``X-Webhook-Signature: sha256=<hex>``. A delivery is genuine when the signature matches (constant-time
compare), the timestamp is within five minutes of now, and the nonce was not seen before (checked by the
caller against the dedupe store). Every refusal is a WebhookRejected(401) with the reason.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

from shared.errors import WebhookRejected

TIMESTAMP_HEADER = "x-webhook-timestamp"
NONCE_HEADER = "x-webhook-nonce"
SIGNATURE_HEADER = "x-webhook-signature"
SIGNATURE_PREFIX = "sha256="
WINDOW_S = 300  # deliveries older or newer than five minutes are refused (replay protection)
MAX_NONCE_LENGTH = 200


def sign(secret: str, timestamp: int, nonce: str, body: bytes) -> str:
    """The header value a sender puts in ``X-Webhook-Signature``."""
    message = f"{timestamp}.{nonce}.".encode() + body
    return SIGNATURE_PREFIX + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify(secret: str, headers: Mapping[str, str], body: bytes, *, now: float | None = None) -> str:
    """Check signature and time window; return the nonce (for the caller's replay check)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    raw_timestamp = lowered.get(TIMESTAMP_HEADER, "")
    nonce = lowered.get(NONCE_HEADER, "")
    signature = lowered.get(SIGNATURE_HEADER, "")
    if not raw_timestamp or not nonce or not signature:
        raise WebhookRejected(401, f"missing {TIMESTAMP_HEADER}, {NONCE_HEADER} or {SIGNATURE_HEADER}")
    if not (raw_timestamp.isascii() and raw_timestamp.isdigit()) or len(raw_timestamp) > 12:  # "²".isdigit()
        raise WebhookRejected(401, f"{TIMESTAMP_HEADER} must be Unix seconds")
    if len(nonce) > MAX_NONCE_LENGTH:
        raise WebhookRejected(401, f"{NONCE_HEADER} is longer than {MAX_NONCE_LENGTH} characters")
    timestamp = int(raw_timestamp)
    current = time.time() if now is None else now
    if abs(current - timestamp) > WINDOW_S:
        raise WebhookRejected(401, f"the timestamp is {int(current - timestamp)} s away from now (window {WINDOW_S} s)")
    expected = sign(secret, timestamp, nonce, body)
    if not hmac.compare_digest(expected.encode(), signature.strip().encode("utf-8", "replace")):
        raise WebhookRejected(401, "the signature does not match")
    return nonce
