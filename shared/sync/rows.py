"""Source rows, and the readers that turn a streamed blob into them (CSV with the job's dialect, JSON
Lines), decoding chunk by chunk so that no file is ever held in memory whole."""

from __future__ import annotations

import codecs
import csv
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

_LINE = re.compile(r"[^\r\n]*(?:\r\n|\n|\r)")
# Where str.splitlines splits but a line of a file does not end.
_OTHER_BREAKS = re.compile("[\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
INVALID_LINE_CHARS = 500  # characters of an unparseable JSON line kept in its dead letter


@dataclass(frozen=True)
class SourceRow:
    blob: str
    etag: str
    line: int  # 1-based data line (after the header)
    values: dict[str, Any]


def text_lines(chunks: Iterable[bytes], encoding: str) -> Iterator[str]:
    """Decode chunk by chunk, yielding lines with their ends; a bad byte raises UnicodeDecodeError.

    Lines end at \\n, \\r\\n or \\r only: the other Unicode line separators (U+0085, U+2028, form feed...)
    are data in CSV and JSON Lines, and splitting there would cut a record in two."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    pending = ""
    for chunk in chunks:
        lines, pending = _complete_lines(pending + decoder.decode(chunk))
        yield from lines
    lines, rest = _complete_lines(pending + decoder.decode(b"", final=True), final=True)
    yield from lines
    if rest:
        yield rest


def _complete_lines(text: str, *, final: bool = False) -> tuple[list[str], str]:
    """The complete lines of ``text`` and what is left; a last \\r waits for the next chunk's \\n."""
    if _OTHER_BREAKS.search(text) is None:  # the common case: str.splitlines, in C, splits where we would
        lines = text.splitlines(keepends=True)
    else:
        lines = _LINE.findall(text)
        if sum(map(len, lines)) < len(text):
            lines.append(text[sum(map(len, lines)) :])
    if not lines:
        return [], ""
    last = lines[-1]
    if not final and not last.endswith("\n"):
        return lines[:-1], last
    return lines, ""


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
