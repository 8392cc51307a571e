"""OData grammar the emulator needs: key segments (``(guid)``, ``(k='v',k2=2)``) and ``$filter``.

``$filter`` compiles to a predicate over a record's JSON representation. Comparisons of strings
are case-insensitive, as Dataverse's collation is.
"""

from __future__ import annotations

import re
import urllib.parse
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

Predicate = Callable[[dict[str, Any]], bool]

_GUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_DATETIME = r"\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})?)?"
_TOKEN = re.compile(
    rf"""\s*(?:
        (?P<string>'(?:[^']|'')*')|
        (?P<guid>{_GUID})(?![\w-])|
        (?P<datetime>{_DATETIME})(?![\w:.-])|
        (?P<number>-?\d+(?:\.\d+)?)(?![\w.])|
        (?P<lparen>\()|(?P<rparen>\))|(?P<comma>,)|(?P<equals>=)|
        (?P<name>[A-Za-z_][\w.]*)|
        (?P<bad>\S)
    )""",
    re.X,
)
COMPARISONS = {"eq", "ne", "gt", "ge", "lt", "le"}
STRING_FUNCTIONS = {"contains", "startswith", "endswith"}


class ODataSyntaxError(ValueError):
    """A malformed key segment or $filter; the message reads like Dataverse's."""


def _tokens(text: str) -> list[tuple[str, Any, int]]:
    tokens: list[tuple[str, Any, int]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        if text[pos:].lstrip().startswith("'") and not re.match(r"\s*'(?:[^']|'')*'", text[pos:]):
            start = pos + len(text[pos:]) - len(text[pos:].lstrip())
            raise ODataSyntaxError(f"There is an unterminated literal at position {start} in '{text}'.")
        match = _TOKEN.match(text, pos)
        if match is None or match.lastgroup is None:
            raise ODataSyntaxError(f"Syntax error at position {pos} in '{text}'.")
        kind, raw = match.lastgroup, match.group(match.lastgroup)
        start = match.start(kind)
        if kind == "bad":
            raise ODataSyntaxError(f"Syntax error: character '{raw}' is not valid at position {start} in '{text}'.")
        if kind == "string":
            value: Any = raw[1:-1].replace("''", "'")
        elif kind == "guid":
            value = raw.lower()
        elif kind == "number":
            value = float(raw) if "." in raw else int(raw)
        elif kind == "datetime":
            value = normalize_datetime(raw)
        else:
            value = raw
        tokens.append((kind, value, start))
        pos = match.end()
    return tokens


QUERY_SYNTAX_ERROR = "Bad Request - Error in query syntax."  # Dataverse's words (odata.net#1708)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def decode_resource_path(raw: str | bytes) -> list[str]:
    """A resource path as Dataverse reads it: percent-decoded once (UTF-8), then split into segments.

    Dataverse's web layer decodes the path before OData splits it, so an encoded ``/`` (``%2F``) still
    separates segments, and ``\\`` counts as ``/`` (odata.net#1708, MicrosoftDocs/powerapps-docs#117):
    a key value holding either breaks its segment. The same reading is applied to ``$batch`` request
    lines and to ``@odata.bind``/``@odata.id`` values (UNCONFIRMED for those two; the reports above cover
    the top-level path and ``@odata.bind``). A control character in the decoded path is refused
    (UNCONFIRMED: IIS request filtering refuses it before Dataverse sees the request)."""
    data = raw if isinstance(raw, bytes) else raw.encode("utf-8")
    try:
        text = urllib.parse.unquote_to_bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ODataSyntaxError(f"{QUERY_SYNTAX_ERROR} The path is not UTF-8 after percent-decoding.") from exc
    if _CONTROL.search(text):
        raise ODataSyntaxError(f"{QUERY_SYNTAX_ERROR} The path contains a control character.")
    return text.replace("\\", "/").split("/")


def normalize_datetime(text: str) -> str:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_key_segment(text: str) -> str | dict[str, Any]:
    """``00000000-...`` -> the id; ``a='x',b=2`` -> ``{"a": "x", "b": 2}``."""
    stripped = text.strip()
    try:
        return str(uuid.UUID(stripped)) if re.fullmatch(_GUID, stripped) else _key_pairs(stripped)
    except ODataSyntaxError:
        raise
    except ValueError as exc:
        raise ODataSyntaxError(f"Bad Request - Error in query syntax: {exc}") from exc


def _key_pairs(text: str) -> dict[str, Any]:
    tokens = _tokens(text)
    malformed = ODataSyntaxError(f"Bad Request - Error in query syntax: key segment '{text}' is malformed.")
    pairs: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        if i + 2 >= len(tokens) or tokens[i][0] != "name" or tokens[i + 1][0] != "equals":
            raise malformed
        kind, value, _ = tokens[i + 2]
        if kind == "name":
            if value not in ("true", "false", "null"):
                raise malformed
            value = {"true": True, "false": False, "null": None}[value]
        elif kind not in {"string", "guid", "number", "datetime"}:
            raise malformed
        pairs[tokens[i][1]] = value
        i += 3
        if i < len(tokens):
            if tokens[i][0] != "comma":
                raise malformed
            i += 1
    return pairs


class _Parser:
    def __init__(self, text: str, resolve: Callable[[str], Callable[[dict[str, Any]], Any]]) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.i = 0
        self.resolve = resolve

    def peek(self) -> tuple[str, Any, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, kind: str | None = None, value: str | None = None) -> tuple[str, Any, int]:
        token = self.peek()
        if token is None or (kind and token[0] != kind) or (value and token[1] != value):
            where = token[2] if token else len(self.text)
            raise ODataSyntaxError(f"Syntax error at position {where} in '{self.text}'.")
        self.i += 1
        return token

    def parse(self) -> Predicate:
        predicate = self.or_expr()
        if self.peek() is not None:
            raise ODataSyntaxError(f"Syntax error at position {self.peek()[2]} in '{self.text}'.")  # type: ignore[index]
        return predicate

    def or_expr(self) -> Predicate:
        left = self.and_expr()
        while self._keyword("or"):
            right = self.and_expr()
            left = (lambda a, b: lambda r: a(r) or b(r))(left, right)
        return left

    def and_expr(self) -> Predicate:
        left = self.not_expr()
        while self._keyword("and"):
            right = self.not_expr()
            left = (lambda a, b: lambda r: a(r) and b(r))(left, right)
        return left

    def not_expr(self) -> Predicate:
        if self._keyword("not"):
            inner = self.not_expr()
            return lambda r: not inner(r)
        return self.primary()

    def _keyword(self, word: str) -> bool:
        token = self.peek()
        if token and token[0] == "name" and token[1] == word:
            self.i += 1
            return True
        return False

    def primary(self) -> Predicate:
        token = self.peek()
        if token and token[0] == "lparen":
            self.take("lparen")
            inner = self.or_expr()
            self.take("rparen")
            return inner
        if token and token[0] == "name" and token[1] in STRING_FUNCTIONS:
            return self.string_function()
        left = self.operand()
        op = self.take("name")
        if op[1] not in COMPARISONS:
            raise ODataSyntaxError(f"Syntax error at position {op[2]} in '{self.text}'.")
        right = self.operand()
        return _compare(op[1], left, right)

    def string_function(self) -> Predicate:
        name = self.take("name")[1]
        self.take("lparen")
        field = self.operand()
        self.take("comma")
        needle = self.operand()
        self.take("rparen")

        def check(record: dict[str, Any]) -> bool:
            haystack, wanted = field(record), needle(record)
            if not isinstance(haystack, str) or not isinstance(wanted, str):
                return False
            h, w = haystack.lower(), wanted.lower()
            return w in h if name == "contains" else h.startswith(w) if name == "startswith" else h.endswith(w)

        return check

    def operand(self) -> Callable[[dict[str, Any]], Any]:
        kind, value, _ = self.take()
        if kind in {"string", "guid", "number", "datetime"}:
            return lambda _r: value
        if kind == "name":
            if value in ("true", "false"):
                flag = value == "true"
                return lambda _r: flag
            if value == "null":
                return lambda _r: None
            return self.resolve(value)
        raise ODataSyntaxError(f"Syntax error at position {_} in '{self.text}'.")


def _normalize(value: Any) -> Any:
    if isinstance(value, str):
        return value.lower()
    if isinstance(value, bool):
        return value
    return value


def _compare(op: str, left: Callable[[dict[str, Any]], Any], right: Callable[[dict[str, Any]], Any]) -> Predicate:
    def check(record: dict[str, Any]) -> bool:
        a, b = _normalize(left(record)), _normalize(right(record))
        if op == "eq":
            return bool(a == b)
        if op == "ne":
            return bool(a != b)
        if a is None or b is None:
            return False
        try:
            return bool({"gt": a > b, "ge": a >= b, "lt": a < b, "le": a <= b}[op])
        except TypeError:
            return False

    return check


def compile_filter(text: str, resolve: Callable[[str], Callable[[dict[str, Any]], Any]]) -> Predicate:
    """Compile ``$filter`` text; ``resolve(name)`` returns a getter or raises for unknown columns."""
    return _Parser(text, resolve).parse()
