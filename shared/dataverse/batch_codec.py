"""A pure OData ``$batch`` codec for the Dataverse Web API (Microsoft's "Execute batch operations").

:func:`encode_batch` turns operations (and change sets of operations) into ``multipart/mixed`` bytes
in the layout Microsoft's examples show. :func:`decode_batch` parses a reply, tolerant of LF or CRLF and extra blank
lines, and :func:`match_results` assigns one :class:`OperationResult` to every operation sent:

* a change set answered with fewer parts than it had operations failed as a whole; its failing part
  comes back in a ``changesetresponse`` (Dataverse's shape) or as a single ``application/http`` part
  (strict OData) - both are understood; the others are reported as rolled back;
* without ``odata.continue-on-error`` processing stops at the first failure and only that failure is
  listed; the other operations are reported with an unknown outcome.

No I/O happens here.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.errors import BatchDecodeError

CRLF = "\r\n"
ROLLED_BACK = "RolledBack"  # our code for a change-set member undone by another member's failure
UNKNOWN_OUTCOME = "UnknownOutcome"  # our code: the reply does not say what happened to this operation
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.I)
_STATUS = re.compile(r"^HTTP/\d\.\d\s+(\d{3})")
_NOT_IN_REQUEST_LINE = re.compile(r"[^\x21-\x7e]")  # request-target: visible ASCII only
_NOT_IN_HEADER = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass(frozen=True)
class Operation:
    """One request inside a batch. ``url`` is absolute, root-relative or a ``$n`` reference."""

    method: str
    url: str
    body: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    content_id: str | None = None


@dataclass(frozen=True)
class ChangeSet:
    """Operations that succeed or fail together."""

    operations: tuple[Operation, ...]


BatchItem = Operation | ChangeSet


@dataclass(frozen=True)
class OperationResult:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes = b""
    content_id: str | None = None
    code: str | None = None  # the error code (Dataverse hex, or ROLLED_BACK/NOT_EXECUTED)
    message: str | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def retry_after_s(self) -> float | None:
        value = self.headers.get("retry-after")
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None

    @property
    def entity_id(self) -> str | None:
        """The record id from ``OData-EntityId`` (``.../accounts(<id>)``), if any."""
        url = self.headers.get("odata-entityid") or self.headers.get("location")
        if not url or "(" not in url:
            return None
        return url.rsplit("(", 1)[1].rstrip(")")

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass(frozen=True)
class DecodedPart:
    """A top-level part of the reply: one result, or the results of a change set."""

    results: tuple[OperationResult, ...]
    changeset: bool


def new_boundary(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4()}"


def _check_request_line(op: Operation) -> None:
    """Data reaches a request line only through shared.dataverse.addressing, which percent-encodes it;
    anything else here (a space, a line break, a non-ASCII character) would change the request's shape."""
    if not op.url or _NOT_IN_REQUEST_LINE.search(op.url):
        raise ValueError(f"{op.method} request URL is not percent-encoded: {op.url[:80]!r}")
    for name, value in op.headers.items():
        if _NOT_IN_HEADER.search(name) or _NOT_IN_HEADER.search(str(value)) or ":" in name:
            raise ValueError(f"header {name[:40]!r} of a {op.method} part has a line break or control character")


def _render_operation(op: Operation) -> str:
    _check_request_line(op)
    head = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
    if op.content_id is not None:
        head.append(f"Content-ID: {op.content_id}")
    lines = [*head, "", f"{op.method.upper()} {op.url} HTTP/1.1"]
    headers = dict(op.headers)
    if op.body is not None:
        headers.setdefault("Content-Type", "application/json; type=entry")
    elif op.method.upper() == "GET":
        headers.setdefault("Accept", "application/json")
    lines += [f"{k}: {v}" for k, v in headers.items()]
    text = CRLF.join(lines) + CRLF + CRLF
    if op.body is not None:
        text += json.dumps(op.body, separators=(",", ":"), ensure_ascii=False) + CRLF
    else:
        text += CRLF  # the blank line, then the delimiter's own CRLF (a GET part ends in three CRLFs)
    return text


def encode_batch(items: Sequence[BatchItem], *, boundary: str | None = None) -> tuple[str, bytes]:
    """Return ``(content_type, body)`` for a ``POST $batch``."""
    boundary = boundary or new_boundary("batch")
    parts: list[str] = []
    for item in items:
        if isinstance(item, ChangeSet):
            if any(op.method.upper() == "GET" for op in item.operations):
                raise ValueError("GET requests cannot be part of a change set")
            inner = new_boundary("changeset")
            body = "".join(f"--{inner}{CRLF}{_render_operation(op)}" for op in item.operations)
            parts.append(f'Content-Type: multipart/mixed; boundary="{inner}"{CRLF}{CRLF}{body}--{inner}--{CRLF}{CRLF}')
        else:
            parts.append(_render_operation(item))
    body = "".join(f"--{boundary}{CRLF}{part}" for part in parts) + f"--{boundary}--{CRLF}"
    return f'multipart/mixed; boundary="{boundary}"', body.encode("utf-8")


def _boundary(content_type: str) -> str:
    match = _BOUNDARY.search(content_type)
    if not match or not content_type.lower().startswith("multipart/"):
        raise BatchDecodeError(f"not a multipart content type: {content_type!r}")
    return match.group(1).strip()


def _split(text: str, boundary: str) -> list[str]:
    parts: list[str] = []
    current: list[str] | None = None
    for line in text.split("\n"):
        stripped = line.rstrip("\r").rstrip()
        if stripped == f"--{boundary}--":
            if current is not None:
                parts.append("\n".join(current))
            return parts
        if stripped == f"--{boundary}":
            if current is not None:
                parts.append("\n".join(current))
            current = []
        elif current is not None:
            current.append(line.rstrip("\r"))
    raise BatchDecodeError(f"the reply is not closed by --{boundary}--")


def _headers(block: str) -> tuple[dict[str, str], str]:
    block = block.lstrip("\n")
    head, _, rest = block.partition("\n\n")
    headers: dict[str, str] = {}
    for line in head.split("\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers, rest


def _parse_http(part: str) -> OperationResult:
    part_headers, rest = _headers(part)
    rest = rest.lstrip("\n")
    status_line, _, after = rest.partition("\n")
    match = _STATUS.match(status_line.strip())
    if match is None:
        raise BatchDecodeError(f"no HTTP status line in a batch part: {status_line[:80]!r}")
    # Headers run up to the first blank line (there may be none at all); the rest is the body.
    lines = after.split("\n")
    headers: dict[str, str] = {}
    index = 0
    while index < len(lines) and lines[index].strip():
        name, sep, value = lines[index].partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
        index += 1
    body = "\n".join(lines[index + 1 :]).strip("\n")
    result = OperationResult(int(match.group(1)), headers, body.encode("utf-8"), part_headers.get("content-id"))
    if result.status >= 400 and body:
        try:
            error = json.loads(body).get("error") or {}
        except (ValueError, AttributeError):
            error = {}
        return OperationResult(
            result.status, headers, result.body, result.content_id, str(error.get("code", "")), error.get("message")
        )
    return result


def decode_batch(content_type: str, body: bytes) -> list[DecodedPart]:
    """Parse a ``$batch`` reply into its top-level parts."""
    outer = _boundary(content_type)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BatchDecodeError(
            f"the reply is not UTF-8 (byte {exc.start}): {body[exc.start : exc.start + 8]!r}"
        ) from None
    decoded: list[DecodedPart] = []
    for part in _split(text, outer):
        headers, rest = _headers(part)
        if headers.get("content-type", "").lower().startswith("multipart/mixed"):
            inner = _boundary(headers["content-type"])
            results = tuple(_parse_http(p) for p in _split(rest, inner))
            if not results:  # a change set always answers for its members; an empty one lost them
                raise BatchDecodeError(f"a change set of the reply (boundary {inner}) has no parts")
            decoded.append(DecodedPart(results, changeset=True))
        else:
            decoded.append(DecodedPart((_parse_http(part),), changeset=False))
    return decoded


def match_results(items: Sequence[BatchItem], parts: Sequence[DecodedPart]) -> list[OperationResult]:
    """One result per operation sent, in order (change sets expanded).

    With a part per item (continue-on-error, or no failure) results pair up by position. With fewer
    parts, the batch stopped at a failure and Dataverse listed only that failure: it is placed by its
    Content-ID when it has one; every other operation gets ``UNKNOWN_OUTCOME`` (an independent
    operation before the failure may or may not have committed - Microsoft's docs do not say), so
    callers re-send them, which is safe for upserts.
    """
    if len(parts) == len(items):
        results: list[OperationResult] = []
        for item, part in zip(items, parts, strict=True):
            if isinstance(item, ChangeSet):
                results += _changeset_results(item, part)
            else:
                results.append(part.results[0])
        return results
    failures = [r for part in parts for r in part.results if not r.ok]
    by_id = {r.content_id: r for r in failures if r.content_id is not None}
    results = []
    for op in flatten(items):
        found = by_id.get(op.content_id) if op.content_id is not None else None
        results.append(
            found
            or OperationResult(
                0,
                {},
                content_id=op.content_id,
                code=UNKNOWN_OUTCOME,
                message="the batch stopped at another operation's failure; this one's outcome is not reported",
            )
        )
    return results


def _changeset_results(item: ChangeSet, part: DecodedPart) -> list[OperationResult]:
    if len(part.results) == len(item.operations) and all(r.ok for r in part.results):
        return list(part.results)
    failure = next((r for r in part.results if not r.ok), part.results[-1])
    if failure.content_id is None:
        # Strict OData shape: the reply does not say which member failed, so each reports the failure.
        return [
            OperationResult(
                failure.status,
                failure.headers,
                failure.body,
                op.content_id,
                failure.code,
                f"a member of this change set failed (which one is not reported): {failure.message}",
            )
            for op in item.operations
        ]
    return [
        failure
        if op.content_id == failure.content_id
        else OperationResult(
            failure.status,
            {},
            content_id=op.content_id,
            code=ROLLED_BACK,
            message=f"rolled back: change set member {failure.content_id} failed with {failure.code}",
        )
        for op in item.operations
    ]


def flatten(items: Iterable[BatchItem]) -> list[Operation]:
    return [op for item in items for op in (item.operations if isinstance(item, ChangeSet) else (item,))]
