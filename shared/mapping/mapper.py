"""Source row -> Dataverse columns, validated against the table's metadata.

A row either maps to the columns to write (with ``@odata.bind`` for lookups) or is rejected with a
code and a reason that names the field, ready for the dead-letter store. Nothing here does I/O:
the table's metadata comes in as a :class:`TableSchema` (built once per worker from
``EntityDefinitions``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.dataverse.addressing import KeyValueRefused, bind_path, check_key_value
from shared.dataverse.schema import Column, TableSchema
from shared.mapping.spec import ColumnMapping, Transform

TRUE_WORDS = {"true", "yes", "y", "1", "ja", "oui"}
FALSE_WORDS = {"false", "no", "n", "0", "nein", "non"}
DEFAULT_DATE_FORMATS = ("%Y-%m-%d",)
DATE_CACHE_ENTRIES = 65_536  # distinct (text, formats) pairs kept per worker: a bound on the cache's memory


@dataclass(frozen=True)
class Rejection:
    code: str
    reason: str
    field: str | None = None


class _Reject(Exception):
    def __init__(self, code: str, reason: str, field: str | None) -> None:
        self.rejection = Rejection(code, reason, field)


class Mapper:
    """Maps source rows to the columns of one table: ``mapping`` says how each column is filled, ``key``
    names the alternate-key columns every row must fill, ``schema`` is the table's metadata."""

    def __init__(self, mapping: Mapping[str, ColumnMapping], key: Sequence[str], schema: TableSchema) -> None:
        self.mapping = dict(mapping)
        self.key = tuple(key)
        self.schema = schema

    def map(self, row: Mapping[str, Any]) -> dict[str, Any] | Rejection:
        """The columns to write (keys included), or why the row cannot be written."""
        out: dict[str, Any] = {}
        try:
            for column, spec in self.mapping.items():
                value = self._value(row, column, spec)
                if spec.lookup is not None:
                    if value is not None:
                        try:
                            target = bind_path(spec.lookup.entity_set, {spec.lookup.key: str(value)})
                        except KeyValueRefused as refused:
                            reason = f"{column}: {refused.reason}"
                            if "URL path" in refused.reason:  # a '/': a bind is a path, with no query form
                                reason += "; a lookup binds by URL: match it by another key"
                            raise _Reject("InvalidLookupKey", reason, column) from None
                        out[f"{spec.lookup.navigation}@odata.bind"] = target
                    continue
                out[column] = self._validate(column, spec, value)
            for key in self.key:
                if out.get(key) in (None, ""):
                    raise _Reject("MissingKey", f"key column {key!r} is empty (source {self._source_name(key)!r})", key)
                try:
                    check_key_value(key, out[key], in_path=False)  # a '/' is found by a query (the planner)
                except KeyValueRefused as refused:
                    raise _Reject("InvalidKey", f"{refused} (source {self._source_name(key)!r})", key) from None
        except _Reject as rejected:
            return rejected.rejection
        return out

    def _source_name(self, column: str) -> str | None:
        spec = self.mapping.get(column)
        return spec.source if spec else None

    def _value(self, row: Mapping[str, Any], column: str, spec: ColumnMapping) -> Any:
        value = spec.value if spec.source is None else row.get(spec.source)
        if isinstance(value, str) and value.strip() == "" and spec.source is not None:
            value = None  # an empty CSV cell means "no value"
        for transform in spec.transforms:
            value = _apply(transform, value, row, column)
        if spec.option_label and value is not None:
            options = self.schema.columns.get(column, Column(column, "Picklist")).options
            chosen = options.get(str(value).strip().lower())
            if chosen is None:
                known = ", ".join(sorted(options)) or "none"
                raise _Reject(
                    "UnknownOptionLabel", f"{column}: {value!r} is not a label of this choice (known: {known})", column
                )
            value = chosen
        return value

    def _validate(self, name: str, spec: ColumnMapping, value: Any) -> Any:
        column = self.schema.columns.get(name)
        if column is None:
            raise _Reject("UnknownColumn", f"{name}: the {self.schema.logical_name} table has no such column", name)
        if value is None:
            if name in self.key:
                raise _Reject("MissingKey", f"key column {name!r} is empty (source {spec.source!r})", name)
            if spec.required or column.required:
                raise _Reject("MissingRequired", f"{name} is required but empty", name)
            return None
        kind = column.type
        if kind in ("String", "Memo"):
            text = str(value)
            if column.max_length is not None and len(text) > column.max_length:
                raise _Reject("TooLong", f"{name}: {len(text)} characters, the column allows {column.max_length}", name)
            return text
        if kind in ("Integer", "Picklist"):
            if isinstance(value, bool) or not isinstance(value, int):
                try:
                    return int(str(value).strip())
                except ValueError:
                    raise _Reject("BadType", f"{name}: {value!r} is not a whole number", name) from None
            return value
        if kind in ("Decimal", "Money", "Double"):
            if isinstance(value, bool):
                raise _Reject("BadType", f"{name}: {value!r} is not a number", name)
            try:
                return float(value)
            except (TypeError, ValueError):
                raise _Reject("BadType", f"{name}: {value!r} is not a number", name) from None
        if kind == "Boolean":
            if isinstance(value, bool):
                return value
            raise _Reject("BadType", f"{name}: {value!r} is not a boolean (add a 'bool' transform)", name)
        if kind == "DateTime":
            if isinstance(value, str) and _looks_iso(value):
                return value
            raise _Reject("BadDate", f"{name}: {value!r} is not a date (add a 'date' transform with formats)", name)
        return value


def _looks_iso(text: str) -> bool:
    try:
        datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=DATE_CACHE_ENTRIES)
def _parse_date(text: str, formats: tuple[str, ...]) -> str | None:
    """The first format that parses, as UTC ISO 8601; None if none does. Cached because strptime is
    slow (a locale check and a regex per call) and exports repeat dates: a large file holds few distinct ones."""
    for fmt in formats:
        try:
            parsed = datetime.strptime(text, fmt)
        except ValueError:
            continue
        parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return None


def _apply(transform: Transform, value: Any, row: Mapping[str, Any], column: str) -> Any:
    op = transform.op
    if op == "default":
        return transform.value if value in (None, "") else value
    if op == "concat":
        parts = [str(row.get(f)).strip() for f in transform.fields if row.get(f) not in (None, "")]
        return transform.separator.join(parts) or None
    if value is None:
        return None
    if op == "trim":
        return str(value).strip()
    if op == "upper":
        return str(value).upper()
    if op == "lower":
        return str(value).lower()
    if op == "title":
        return str(value).title()
    if op == "bool":
        word = str(value).strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise _Reject("BadType", f"{column}: {value!r} is not yes/no", column)
    if op in ("number", "integer"):
        text = str(value).strip().replace(" ", "")
        if transform.decimal_separator != ".":
            text = text.replace(".", "").replace(transform.decimal_separator, ".")
        else:
            text = text.replace(",", "")
        try:
            return int(text) if op == "integer" else float(text)
        except ValueError:
            raise _Reject("BadNumber", f"{column}: {value!r} is not a number", column) from None
    if op == "date":
        formats = transform.formats or DEFAULT_DATE_FORMATS
        parsed = _parse_date(str(value).strip(), formats)
        if parsed is None:
            raise _Reject("BadDate", f"{column}: {value!r} matches none of the formats [{', '.join(formats)}]", column)
        return parsed
    raise _Reject("BadTransform", f"{column}: unknown transform {op!r}", column)  # prevented by the schema
