"""An in-memory Azure Table Storage for unit tests: ``FakeTableClient`` answers the calls dvbridge makes on
``azure.data.tables.TableClient`` the way the SDK does, down to the exception each failure raises.

Entities go through the SDK's own serializer and deserializer (so a value the SDK refuses is refused here, and
a value comes back with the type the SDK gives it), and errors are built from a service-shaped response by the
SDK's own decoder (so ``error_code``, ``status_code`` and the exception class are the ones production sees).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import requests
from azure.core import MatchConditions
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ResourceNotModifiedError,
    map_error,
)
from azure.core.paging import ItemPaged
from azure.core.pipeline.transport import RequestsTransportResponse
from azure.core.rest import HttpRequest
from azure.data.tables import TableEntity, TableTransactionError, UpdateMode
from azure.data.tables._deserialize import _convert_to_entity
from azure.data.tables._error import _decode_error
from azure.data.tables._serialize import _add_entity_properties, _get_match_condition, _parameter_filter_substitution

__all__ = ["FakeTableClient", "FakeTables", "UnsupportedQuery", "service_error"]

# What the generated operations map before the tables layer decodes the body (azure/data/tables/_generated).
_ERROR_MAP: dict[int, type[HttpResponseError]] = {
    401: ClientAuthenticationError,
    404: ResourceNotFoundError,
    409: ResourceExistsError,
    304: ResourceNotModifiedError,
}
_REASONS = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 409: "Conflict", 412: "Precondition Failed",
            500: "Internal Server Error", 503: "Service Unavailable"}  # fmt: skip
_FORBIDDEN_KEY_CHARS = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")  # what the service refuses in a key
MAX_KEY_BYTES = 1024
MAX_PROPERTIES = 255  # including PartitionKey, RowKey and Timestamp
MAX_STRING_CHARS = 32 * 1024  # 64 KiB of UTF-16
MAX_TRANSACTION_OPS = 100
_CODES = {404: "ResourceNotFound", 409: "EntityAlreadyExists", 412: "UpdateConditionNotSatisfied"}
_CONDITION = re.compile(r"\s*(PartitionKey|RowKey)\s+(eq|ne|gt|ge|lt|le)\s+'((?:[^']|'')*)'\s*")
_COMPARE: dict[str, Callable[[str, str], bool]] = {
    "eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b, "lt": lambda a, b: a < b, "le": lambda a, b: a <= b,
}  # fmt: skip


class UnsupportedQuery(AssertionError):
    """A filter shape the fake does not evaluate: teach it the new shape rather than match wrongly."""


def _transaction_error(index: int, status: int, code: str, message: str) -> TableTransactionError:
    """What ``submit_transaction`` raises: the service prefixes the message with the failing operation's index."""
    error: TableTransactionError = _decode_error(
        _response(status, code, f"{index}:{message.splitlines()[0] if message else code}"),
        error_type=TableTransactionError,
    )
    return error


def _response(status: int, code: str, message: str) -> RequestsTransportResponse:
    raw = requests.Response()
    raw.status_code = status
    raw.reason = _REASONS.get(status, "Error")
    raw.headers["Content-Type"] = "application/json;odata=minimalmetadata;streaming=true;charset=utf-8"
    raw.headers["x-ms-error-code"] = code
    body = {"odata.error": {"code": code, "message": {"lang": "en-US", "value": f"{message}\nRequestId:fake"}}}
    raw._content = json.dumps(body).encode()
    return RequestsTransportResponse(HttpRequest("GET", "https://fake.table.core.windows.net/"), raw)


def service_error(status: int, code: str, message: str = "", *, decoded: bool = True) -> HttpResponseError:
    """The exception the SDK raises for this service answer. ``decoded=False`` is what ``create_entity``
    raises (the generated layer's error, without ``error_code``); every other call decodes the body."""
    response = _response(status, code, message or code)
    raw: HttpResponseError
    try:
        map_error(status_code=status, response=response, error_map=_ERROR_MAP)
        raw = HttpResponseError(response=response)
    except HttpResponseError as mapped:
        raw = mapped
    if not decoded:
        return raw
    error: HttpResponseError = _decode_error(raw.response, raw.message)
    error.__cause__ = raw
    return error


class FakeTableClient:
    """One table. Rows are kept as the JSON the SDK would send, so reads deserialize like the SDK's."""

    def __init__(self, table_name: str = "faketable", *, clock: Callable[[], datetime] | None = None) -> None:
        self.table_name = table_name
        self._rows: dict[tuple[str, str], dict[str, Any]] = {}
        self._lock = threading.RLock()
        self._clock = clock or (lambda: datetime.now(UTC))
        self._last_write: datetime | None = None
        self._hooks: dict[str, list[Callable[[], Any]]] = {}
        self._faults: dict[str, list[BaseException]] = {}
        self.calls: list[tuple[str, str | None, str | None]] = []  # (operation, PartitionKey, RowKey)

    # -- test controls -----------------------------------------------------------------------------------
    def before_next(self, operation: str, action: Callable[[], Any]) -> None:
        """Run ``action`` just before the next ``operation`` (e.g. another writer racing for the row)."""
        self._hooks.setdefault(operation, []).append(action)

    def fail_next(self, operation: str, error: BaseException) -> None:
        """Make the next ``operation`` raise ``error`` (see :func:`service_error`) without touching the row."""
        self._faults.setdefault(operation, []).append(error)

    def rows(self) -> list[TableEntity]:
        """Every entity, as ``get_entity`` would return it (for assertions)."""
        with self._lock:
            return [self._entity(key) for key in sorted(self._rows)]

    # -- the TableClient surface -------------------------------------------------------------------------
    def get_entity(self, partition_key: str, row_key: str, *, select: str | list[str] | None = None,
                   **kwargs: Any) -> TableEntity:  # fmt: skip
        self._enter("get_entity", partition_key, row_key)
        key = (_key(partition_key), _key(row_key))
        with self._lock:
            if key not in self._rows:
                raise service_error(404, "ResourceNotFound", "The specified resource does not exist.")
            return self._entity(key, select)

    def create_entity(self, entity: Mapping[str, Any], **kwargs: Any) -> dict[str, Any]:
        wire = _add_entity_properties(entity)
        self._enter("create_entity", wire.get("PartitionKey"), wire.get("RowKey"))
        if wire.get("PartitionKey") is None:
            raise ValueError("PartitionKey must be present in an entity")
        if wire.get("RowKey") is None:
            raise ValueError("RowKey must be present in an entity")
        self._validate(wire, decoded=False)
        key = (wire["PartitionKey"], wire["RowKey"])
        with self._lock:
            if key in self._rows:
                raise service_error(409, "EntityAlreadyExists", "The specified entity already exists.", decoded=False)
            return self._write(key, wire)

    def update_entity(
        self,
        entity: Mapping[str, Any],
        mode: UpdateMode = UpdateMode.MERGE,
        *,
        etag: str | None = None,
        match_condition: MatchConditions | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        if match_condition and not etag and isinstance(entity, TableEntity):
            etag = entity.metadata.get("etag")
        _get_match_condition(etag=etag, match_condition=match_condition or MatchConditions.Unconditionally)
        wire = _add_entity_properties(entity)
        key = (wire["PartitionKey"], wire["RowKey"])  # a KeyError when missing, as in the SDK
        self._enter("update_entity", *key)
        if mode not in (UpdateMode.MERGE, UpdateMode.REPLACE):
            raise ValueError(f"Mode type '{mode}' is not supported.")
        self._validate(wire)
        with self._lock:
            current = self._rows.get(key)
            if current is None:
                raise service_error(404, "ResourceNotFound", "The specified resource does not exist.")
            if etag is not None and current["odata.etag"] != etag:
                raise service_error(412, "UpdateConditionNotSatisfied",
                                    "The update condition specified in the request was not satisfied.")  # fmt: skip
            return self._write(key, _merged(current, wire) if mode == UpdateMode.MERGE else wire)

    def upsert_entity(self, entity: Mapping[str, Any], mode: UpdateMode = UpdateMode.MERGE,
                      **kwargs: Any) -> dict[str, Any]:  # fmt: skip
        wire = _add_entity_properties(entity)
        key = (wire["PartitionKey"], wire["RowKey"])
        self._enter("upsert_entity", *key)
        if mode not in (UpdateMode.MERGE, UpdateMode.REPLACE):
            raise ValueError(
                f"Update mode {mode} is not supported. For a list of supported modes see the UpdateMode enum."
            )
        self._validate(wire)
        with self._lock:
            current = self._rows.get(key)
            merge = mode == UpdateMode.MERGE and current is not None
            return self._write(key, _merged(current, wire) if merge and current is not None else wire)

    def delete_entity(self, *args: Any, etag: str | None = None, match_condition: MatchConditions | None = None,
                      **kwargs: Any) -> None:  # fmt: skip
        entity = kwargs.pop("entity", None) or (args[0] if args and isinstance(args[0], Mapping) else None)
        if entity is not None:
            partition_key, row_key = entity["PartitionKey"], entity["RowKey"]
        else:
            partition_key = kwargs.pop("partition_key", None) or args[0]
            row_key = kwargs.pop("row_key", None) or args[1]
        if match_condition and not etag and isinstance(entity, TableEntity):
            etag = entity.metadata.get("etag")
        _get_match_condition(etag=etag, match_condition=match_condition or MatchConditions.Unconditionally)
        key = (_key(partition_key), _key(row_key))
        self._enter("delete_entity", *key)
        with self._lock:
            current = self._rows.get(key)
            if current is None:
                return  # the SDK swallows a 404 on delete
            if etag is not None and current["odata.etag"] != etag:
                raise service_error(412, "UpdateConditionNotSatisfied",
                                    "The update condition specified in the request was not satisfied.")  # fmt: skip
            del self._rows[key]

    def query_entities(self, query_filter: str, *, results_per_page: int | None = None,
                       select: str | list[str] | None = None, parameters: dict[str, Any] | None = None,
                       **kwargs: Any) -> ItemPaged[TableEntity]:  # fmt: skip
        query_filter = _parameter_filter_substitution(parameters, query_filter)
        conditions = _parse_filter(query_filter)  # an unsupported shape fails here, at the call, like a 400 would
        self._enter("query_entities", None, None)
        return self._paged(conditions, results_per_page, select)

    def submit_transaction(self, operations: Any, **kwargs: Any) -> list[dict[str, Any]]:
        """An entity-group transaction: every operation or none, all in one partition, at most 100; a
        failure raises ``TableTransactionError`` with the failing operation's index, status and code."""
        operations = list(operations)
        self._enter("submit_transaction", None, None)
        if len(operations) > MAX_TRANSACTION_OPS:
            raise _transaction_error(0, 400, "InvalidInput", "The batch request operation exceeds the maximum 100")
        partitions = {operation[1].get("PartitionKey") for operation in operations}
        if len(partitions) > 1:
            raise _transaction_error(0, 400, "CommandsInBatchActOnDifferentPartitions",
                                     "All commands in a batch must operate on same entity group.")  # fmt: skip
        seen: set[tuple[Any, Any]] = set()
        for index, operation in enumerate(operations):
            row = (operation[1].get("PartitionKey"), operation[1].get("RowKey"))
            if row in seen:  # what Azure Table storage (and Azurite) answer
                raise _transaction_error(index, 400, "InvalidDuplicateRow",
                                         "The batch request contains multiple changes with same row key.")  # fmt: skip
            seen.add(row)
        with self._lock:
            saved, last_write = dict(self._rows), self._last_write
            answers = []
            for index, (verb, entity, *rest) in enumerate(operations):
                options = dict(rest[0]) if rest else {}
                calls = self.calls[:]  # the transaction is one call, not one per operation
                try:
                    if verb == "create":
                        answers.append(self.create_entity(entity))
                    elif verb == "update":
                        answers.append(self.update_entity(entity, **options))
                    elif verb == "upsert":
                        answers.append(self.upsert_entity(entity, **options))
                    elif verb == "delete":
                        self.delete_entity(entity, **options)
                        answers.append({})
                    else:
                        raise ValueError(f"Unexpected operation type in transaction: {verb}")
                except HttpResponseError as exc:
                    self._rows, self._last_write = saved, last_write
                    code = str(getattr(exc, "error_code", None) or _CODES.get(exc.status_code or 0, exc.reason))
                    raise _transaction_error(index, exc.status_code or 400, code, str(exc.message)) from None
                finally:
                    self.calls = calls
            return [{"etag": answer.get("etag")} for answer in answers]

    def list_entities(self, *, results_per_page: int | None = None, select: str | list[str] | None = None,
                      **kwargs: Any) -> ItemPaged[TableEntity]:  # fmt: skip
        self._enter("list_entities", None, None)
        return self._paged([], results_per_page, select)

    # -- internals ---------------------------------------------------------------------------------------
    def _enter(self, operation: str, partition_key: str | None, row_key: str | None) -> None:
        self.calls.append((operation, partition_key, row_key))
        hooks = self._hooks.get(operation)
        if hooks:
            hooks.pop(0)()  # popped first: the action may itself call this operation
        faults = self._faults.get(operation)
        if faults:
            raise faults.pop(0)

    def _validate(self, wire: dict[str, Any], *, decoded: bool = True) -> None:
        for name in ("PartitionKey", "RowKey"):
            value = wire[name]
            if not isinstance(value, str):
                raise TypeError("PartitionKey or RowKey must be of type string.")
            if _FORBIDDEN_KEY_CHARS.search(value) or len(value.encode("utf-16-le")) > MAX_KEY_BYTES:
                raise service_error(400, "OutOfRangeInput", "One of the request inputs is out of range.",
                                    decoded=decoded)  # fmt: skip
        properties = [n for n in wire if not n.endswith("@odata.type")]
        if len(properties) + 1 > MAX_PROPERTIES:
            raise service_error(400, "TooManyProperties", "The entity contains more properties than allowed.",
                                decoded=decoded)  # fmt: skip
        if any(isinstance(v, str) and len(v) > MAX_STRING_CHARS for v in wire.values()):
            raise service_error(400, "PropertyValueTooLarge", "The property value exceeds the maximum allowed size.",
                                decoded=decoded)  # fmt: skip

    def _write(self, key: tuple[str, str], wire: dict[str, Any]) -> dict[str, Any]:
        now = self._clock()
        if self._last_write is not None and now <= self._last_write:
            now = self._last_write + timedelta(microseconds=1)  # every write gets a new ETag
        self._last_write = now
        stamp = f"{now.astimezone(UTC):%Y-%m-%dT%H:%M:%S.%f}0Z"  # the service's 7 fractional digits
        etag = "W/\"datetime'" + quote(stamp) + "'\""
        self._rows[key] = {**wire, "Timestamp": stamp, "Timestamp@odata.type": "Edm.DateTime", "odata.etag": etag}
        return {"date": now, "etag": etag, "version": "2019-02-02"}

    def _entity(self, key: tuple[str, str], select: str | list[str] | None = None) -> TableEntity:
        row = dict(self._rows[key])
        if select:
            wanted = set(select.split(",") if isinstance(select, str) else select)
            row = {n: v for n, v in row.items() if n.split("@")[0] in wanted or n.startswith("odata.")}
        entity: TableEntity = _convert_to_entity(row)
        return entity

    def _paged(self, conditions: list[list[Condition]], per_page: int | None,
               select: str | list[str] | None) -> ItemPaged[TableEntity]:  # fmt: skip
        size = per_page or 1000  # the service's page size

        def get_next(token: tuple[str, str] | None) -> list[TableEntity]:
            with self._lock:  # a page reads the table as it is then, like a continuation does
                keys = sorted(k for k in self._rows if (token is None or k >= token) and _matches(k, conditions))
                return [self._entity(k, select) for k in keys[: size + 1]]

        def extract(page: list[TableEntity]) -> tuple[tuple[str, str] | None, Iterator[TableEntity]]:
            more = len(page) > size
            token = (page[size]["PartitionKey"], page[size]["RowKey"]) if more else None
            return token, iter(page[:size])

        return ItemPaged(get_next, extract)


class FakeTables:
    """A storage account's tables: ``table(name)`` (what ``shared.sync.storage`` offers) and the
    ``TableServiceClient`` calls behind it, one shared :class:`FakeTableClient` per name."""

    def __init__(self, *, clock: Callable[[], datetime] | None = None) -> None:
        self._clock = clock
        self._tables: dict[str, FakeTableClient] = {}
        self._lock = threading.Lock()

    def table(self, name: str) -> FakeTableClient:
        with self._lock:
            if name not in self._tables:
                self._tables[name] = FakeTableClient(name, clock=self._clock)
            return self._tables[name]

    def create_table_if_not_exists(self, table_name: str, **kwargs: Any) -> FakeTableClient:
        return self.table(table_name)

    def get_table_client(self, table_name: str, **kwargs: Any) -> FakeTableClient:
        return self.table(table_name)


def _key(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("PartitionKey or RowKey must be of type string.")
    return value


def _merged(current: dict[str, Any] | None, wire: dict[str, Any]) -> dict[str, Any]:
    kept = {n: v for n, v in (current or {}).items() if not n.startswith(("odata.", "Timestamp"))}
    for name in wire:  # a property sent with another type loses its old annotation
        kept.pop(f"{name.split('@')[0]}@odata.type", None)
    return {**kept, **wire}


Condition = tuple[str, str, str]


def _top_level(text: str, word: str) -> list[str]:
    """``text`` split at ``word`` (`` and ``/`` or ``) outside quotes and parentheses."""
    parts, depth, quoted, start, i = [], 0, False, 0, 0
    while i < len(text):
        char = text[i]
        if char == "'":
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
        elif not quoted and depth == 0 and text.startswith(word, i):
            parts.append(text[start:i])
            i += len(word)
            start = i
            continue
        i += 1
    parts.append(text[start:])
    return parts


def _wrapped(text: str) -> bool:
    """Whether the parenthesis opening ``text`` is the one closing it."""
    depth, quoted = 0, False
    for i, char in enumerate(text):
        if char == "'":
            quoted = not quoted
        elif not quoted and char in "()":
            depth += 1 if char == "(" else -1
            if depth == 0:
                return i == len(text) - 1
    return False


def _unwrap(text: str) -> str:
    text = text.strip()
    while text.startswith("(") and _wrapped(text):
        text = text[1:-1].strip()
    return text


def _parse_filter(query_filter: str) -> list[list[Condition]]:
    """PartitionKey/RowKey comparisons joined by ``and``, each term a comparison or a parenthesised
    ``or`` of them: a list of terms, each a list of alternatives."""
    terms = []
    for term in _top_level(_unwrap(query_filter), " and "):
        alternatives = []
        for part in _top_level(_unwrap(term), " or "):
            match = _CONDITION.fullmatch(_unwrap(part))
            if match is None:
                raise UnsupportedQuery(
                    "the fake evaluates PartitionKey/RowKey comparisons joined by 'and' (each maybe an 'or' of"
                    f" them), not {query_filter!r}"
                )
            alternatives.append((match[1], match[2], match[3].replace("''", "'")))
        terms.append(alternatives)
    return terms


def _matches(key: tuple[str, str], conditions: list[list[Condition]]) -> bool:
    values = {"PartitionKey": key[0], "RowKey": key[1]}
    return all(any(_COMPARE[op](values[name], literal) for name, op, literal in term) for term in conditions)
