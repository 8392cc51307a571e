"""Source rows, and the readers that turn a streamed blob into them (CSV with the job's dialect, JSON
Lines), decoding chunk by chunk so that no file is ever held in memory whole."""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

INVALID_LINE_CHARS = 500  # characters of an unparseable JSON line kept in its dead letter


@dataclass(frozen=True)
class SourceRow:
    blob: str
    etag: str
    line: int  # 1-based data line (after the header)
    values: dict[str, Any]


def text_lines(chunks: Iterable[bytes], encoding: str) -> Iterator[str]:
    """Decode chunk by chunk, yielding lines with their ends; a bad byte raises UnicodeDecodeError."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    pending = ""
    for chunk in chunks:
        pending += decoder.decode(chunk)
        *complete, pending = pending.splitlines(keepends=True) or [""]
        if pending.endswith(("\n", "\r")):
            complete.append(pending)
            pending = ""
        yield from complete
    pending += decoder.decode(b"", final=True)
    if pending:
        yield pending


def count_lines(chunks: Iterable[bytes]) -> int:
    """Line ends (a last line without one counts too): an upper bound on the records of a file that costs a
    byte scan instead of a CSV parse."""
    lines, last = 0, b"\n"
    for chunk in chunks:
        lines += chunk.count(b"\n")
        last = chunk[-1:] or last
    return lines + (last != b"\n")


def csv_rows(
    chunks: Iterable[bytes], blob: str, etag: str, *, encoding: str, delimiter: str, headers: dict[str, str]
) -> Iterator[SourceRow]:
    reader = csv.DictReader(text_lines(chunks, encoding), delimiter=delimiter)
    for line, row in enumerate(reader, start=1):
        values = {headers.get(k, k): v for k, v in row.items() if k is not None}
        yield SourceRow(blob, etag, line, values)


def jsonl_rows(chunks: Iterable[bytes], blob: str, etag: str, *, encoding: str) -> Iterator[SourceRow]:
    for line, text in enumerate(text_lines(chunks, encoding), start=1):
        if text.strip():
            try:
                values = json.loads(text)
            except ValueError as exc:
                values = {"__invalid_json__": text.strip()[:INVALID_LINE_CHARS], "__error__": str(exc)}
            yield SourceRow(blob, etag, line, values if isinstance(values, dict) else {"__value__": values})
