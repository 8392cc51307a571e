"""The one place where data becomes part of a Dataverse URL: key segments, ``@odata.bind`` and
``@odata.id`` paths, ``$batch`` request lines and ``$filter`` literals.

A value taken from input must address exactly the record whose key equals it, so every value is
rendered as an OData literal (strings quoted, ``'`` doubled) and then percent-encoded (UTF-8), with
nothing left unencoded but unreserved characters and the quote. Dataverse decodes the path once and
then parses the key segment (odata.net#1708), so ``C000%3269`` is sent as ``C000%253269`` and reaches
the server as itself.

Control characters (U+0000-U+001F, U+007F) cannot be addressed at all and are refused before anything is
sent (:class:`KeyValueRefused`, one record's dead letter, never a request): a key column is single-line
text, and a NUL or a line break in a request line or path is a different request.

A value holding ``/`` or ``\\`` is a third kind: Dataverse decodes ``%2F`` before it splits the path into
segments, so such a key value breaks the segment ("Bad Request - Error in query syntax", odata.net#1708,
MicrosoftDocs/powerapps-docs#117), while a ``$filter`` literal carries it fine. Such a record is addressed
by a query on its key (:func:`needs_query_addressing`, :func:`key_filter`) and then by its id.

Entity-set and column names come from configuration or from input (a webhook's table name); both are
checked to be OData identifiers, so no name can add a path segment either.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, TypeGuard
from urllib.parse import quote

from shared.errors import DvbridgeError

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
PATH_UNSAFE_CHARACTERS = "/\\"  # Dataverse splits the decoded path on these (see the module docstring)
_LITERAL_SAFE = "'"  # the quote is a sub-delimiter RFC 3986 allows in a path; doubling already escaped it
KeyValues = Mapping[str, Any]


class KeyValueRefused(DvbridgeError, ValueError):
    """A key value or name that no URL can carry to the right record; ``field`` names the column."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


def identifier(name: str, what: str = "column") -> str:
    """``name`` if it is an OData identifier (a table, entity set or column name), else refused."""
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise KeyValueRefused(what, f"{str(name)[:60]!r} is not a Dataverse {what} name (letters, digits and '_' only)")
    return name


def guid(value: Any, field: str = "id") -> str:
    """A record id in its canonical form, or refused."""
    text = str(value).strip("{}") if isinstance(value, str | uuid.UUID) else ""
    if not _GUID.fullmatch(text):
        raise KeyValueRefused(field, f"{str(value)[:60]!r} is not a GUID")
    return text.lower()


def check_key_value(field: str, value: Any, *, in_path: bool = True) -> None:
    """Refuse what Dataverse cannot store in a key or carry in a path (see the module docstring)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (from JSON's "\ud800"): no UTF-8, so no URL
            raise KeyValueRefused(field, "the key value is not valid Unicode text (a lone surrogate)") from None
        if _CONTROL.search(value):
            raise KeyValueRefused(
                field, "the key value contains a control character (tab, line break, NUL...); remove it at the source"
            )
        if in_path and any(c in value for c in PATH_UNSAFE_CHARACTERS):
            raise KeyValueRefused(
                field,
                "the key value contains '/' or '\\', which no Dataverse URL path can carry (Dataverse splits "
                "the path there)",
            )
    elif isinstance(value, float) and not math.isfinite(value):
        raise KeyValueRefused(field, f"{value!r} is not a number Dataverse can store")


def needs_query_addressing(key: KeyValues | str) -> TypeGuard[KeyValues]:
    """True when a key value holds a character no URL path can carry (``/``, ``\\``): find it by query."""
    return not isinstance(key, str) and any(
        isinstance(v, str) and any(c in v for c in PATH_UNSAFE_CHARACTERS) for v in key.values()
    )


def key_filter(key: KeyValues) -> str:
    """``accountnumber eq 'A/1' and …``; the HTTP layer (requests) percent-encodes the query string."""
    clauses = []
    for name, value in key.items():
        identifier(name)
        if value is None:
            raise KeyValueRefused(name, "the key value is empty")
        check_key_value(name, value, in_path=False)
        clauses.append(f"{name} eq {literal(name, value)}")
    return " and ".join(clauses)


def literal(field: str, value: Any) -> str:
    """The OData literal for ``value``, not yet percent-encoded: ``'O''Brien'``, ``42``, ``true``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, int | Decimal):
        return str(value)
    if isinstance(value, float):
        check_key_value(field, value)
        return repr(value)
    if field.startswith("_") and field.endswith("_value"):
        return guid(value, field)  # a lookup column's key value is the referenced record's id
    return "'" + str(value).replace("'", "''") + "'"


def key_text(key: KeyValues | str) -> str:
    """The key predicate as text (unencoded): ``accountnumber='O''Brien'``; a GUID stays bare.

    For comparing and indexing keys (the unchanged-row hash index, duplicate detection), never for a URL."""
    if isinstance(key, str):
        return key
    return ",".join(f"{name}={literal(name, value)}" for name, value in key.items())


def key_predicate(key: KeyValues | str) -> str:
    """The inside of ``(…)`` in a URL: each value checked, rendered and percent-encoded."""
    if isinstance(key, str):
        return guid(key)
    if not key:
        raise KeyValueRefused("key", "no key columns were given")
    parts = []
    for name, value in key.items():
        identifier(name)
        if value is None:
            raise KeyValueRefused(name, "the key value is empty")
        check_key_value(name, value)
        parts.append(f"{name}={quote(literal(name, value), safe=_LITERAL_SAFE)}")
    return ",".join(parts)


def entity_path(entity_set: str, key: KeyValues | str) -> str:
    """``accounts(accountnumber='C000%253269')``: relative to the Web API root."""
    return f"{identifier(entity_set, 'entity set')}({key_predicate(key)})"


def bind_path(entity_set: str, key: KeyValues | str) -> str:
    """The value of an ``…@odata.bind`` (or a bulk target's ``@odata.id``): ``/accounts(…)``."""
    return "/" + entity_path(entity_set, key)


def table_definition_path(table: str) -> str:
    """``EntityDefinitions(LogicalName='account')`` for a table's metadata."""
    return f"EntityDefinitions(LogicalName='{identifier(table, 'table')}')"
