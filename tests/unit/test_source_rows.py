"""Source files become the same rows however Blob Storage splits them into chunks: any text in any cell
(quotes, delimiters, line breaks, Unicode's other line separators such as U+0085 and U+2028), cut at any
byte, multi-byte characters and a \r\n split in two included."""

from __future__ import annotations

import csv
import io
import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.sync.rows import count_lines, csv_rows, jsonl_rows
from tests.fakes.sockets import no_sockets  # noqa: F401  # autouse: reading a file opens no connection

pytestmark = pytest.mark.unit

cells = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
tables = st.lists(st.tuples(cells, cells), min_size=1, max_size=8)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@settings(max_examples=200, deadline=None)
@given(tables, st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_csv_rows_do_not_depend_on_where_the_chunks_end(rows: list[tuple[str, str]], cuts: list[int]) -> None:
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["CustomerNo", "Name"])
    writer.writerows(rows)
    data = text.getvalue().encode("utf-8")
    read = list(csv_rows(split(data, cuts), "f.csv", "e", encoding="utf-8", delimiter=",", headers={"Name": "name"}))
    assert [r.values for r in read] == [{"CustomerNo": number, "name": name} for number, name in rows]
    assert [r.line for r in read] == list(range(1, len(rows) + 1))
    assert count_lines(split(data, cuts)) >= len(rows) + 1  # an upper bound of the records, header included


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(cells, cells, max_size=3), min_size=1, max_size=6),
       st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))  # fmt: skip
def test_jsonl_rows_do_not_depend_on_where_the_chunks_end(records: list[dict[str, str]], cuts: list[int]) -> None:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    read = list(jsonl_rows(split(data, cuts), "f.jsonl", "e", encoding="utf-8"))
    assert [r.values for r in read] == records


def test_a_bad_line_of_json_lines_is_kept_as_a_row_naming_the_error() -> None:
    (row,) = jsonl_rows([b'{"a": 1\n'], "f.jsonl", "e", encoding="utf-8")
    assert row.values["__invalid_json__"] == '{"a": 1'
    assert "Expecting" in row.values["__error__"]


@pytest.mark.parametrize("separator", ["\x85", "\u2028", "\u2029", "\x0c", "\x1e"])
def test_unicode_line_separators_inside_a_record_are_data(separator: str) -> None:
    data = f"CustomerNo,Name\r\nC1,One{separator}Two\r\nC2,Three\r\n".encode()
    rows = list(csv_rows([data[:20], data[20:]], "f.csv", "e", encoding="utf-8", delimiter=",", headers={}))
    assert [r.values["Name"] for r in rows] == [f"One{separator}Two", "Three"]
    (row,) = jsonl_rows([json.dumps({"n": f"a{separator}b"}, ensure_ascii=False).encode()], "f", "e", encoding="utf-8")
    assert row.values == {"n": f"a{separator}b"}
