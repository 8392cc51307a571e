"""The Bicep files of infra/ as pycep-parser reads them, and the few shapes of that tree the offline checks use.

pycep turns a file into nested dicts and lists. A symbol reference (``location``) comes out as a
:class:`pycep.models.BicepElement`, a ``str`` subclass, and a string literal (``'location'``) as a plain ``str``:
that is the only way to tell them apart, so nothing here turns one into the other. An interpolated string stays
one ``str`` with its ``${...}`` holes in it; :func:`holes` cuts them out and :func:`expression` parses each one.
A declaration deployed under a condition or in a loop wraps its body (:func:`unwrap`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Any, TypeGuard

from pycep import BicepParser
from pycep.models import BicepElement

CHAIN_OPERATORS = frozenset({"property_accessor", "index_accessor", "function_accessor", "nested_resource_accessor"})
LINE_KEY = "__start_line__"  # what pycep adds to each top-level declaration when asked for line numbers
HOLE_OPEN = "${"


@dataclass(frozen=True)
class Declaration:
    """A resource or module declaration with its body unwrapped from a condition or loop."""

    symbol: str
    body: Mapping[str, Any]
    line: int
    condition: Any = None  # the `if (...)` expression, None when always deployed
    loop: Any = None  # pycep's loop description, None when not a loop
    type: str = ""  # resources only
    api_version: str = ""  # resources only
    existing: bool = False  # resources only
    module_path: str = ""  # modules only, as written (relative to the declaring file)


@dataclass(frozen=True)
class BicepFile:
    """One parsed .bicep file; ``rel`` is its path relative to the infra directory, as findings name it."""

    root: Path
    path: Path
    tree: Mapping[str, Any]

    @property
    def rel(self) -> str:
        return self.path.relative_to(self.root).as_posix()

    @property
    def params(self) -> Mapping[str, Mapping[str, Any]]:
        return dict(self.tree.get("parameters", {}))

    @property
    def variables(self) -> Mapping[str, Mapping[str, Any]]:
        return dict(self.tree.get("variables", {}))

    @property
    def outputs(self) -> Mapping[str, Mapping[str, Any]]:
        return dict(self.tree.get("outputs", {}))

    @cached_property
    def resources(self) -> dict[str, Declaration]:
        found = {}
        for symbol, raw in self.tree.get("resources", {}).items():
            condition, loop, body = unwrap(raw["config"])
            found[symbol] = Declaration(
                symbol=symbol, body=body, line=int(raw.get(LINE_KEY, 0)), condition=condition, loop=loop,
                type=str(raw["type"]), api_version=str(raw["api_version"]), existing=bool(raw.get("existing")),
            )  # fmt: skip
        return found

    @cached_property
    def modules(self) -> dict[str, Declaration]:
        found = {}
        for symbol, raw in self.tree.get("modules", {}).items():
            condition, loop, body = unwrap(raw["config"])
            found[symbol] = Declaration(
                symbol=symbol, body=body, line=int(raw.get(LINE_KEY, 0)), condition=condition, loop=loop,
                module_path=str(raw["detail"]["path"]) if raw.get("type") == "local" else "",
            )  # fmt: skip
        return found

    def module_file(self, declaration: Declaration) -> Path:
        return (self.path.parent / declaration.module_path).resolve()

    def line_of(self, kind: str, symbol: str) -> int:
        """The line of a parameter, variable or output (``kind`` as pycep names the section)."""
        return int(self.tree.get(kind, {}).get(symbol, {}).get(LINE_KEY, 0))


@cache
def parser(add_line_numbers: bool) -> BicepParser:
    return BicepParser(add_line_numbers=add_line_numbers)  # building one loads Lark's tables: do it once


@cache
def parse_text(text: str) -> Mapping[str, Any]:
    """A file's tree, once per distinct text (planted-mistake copies differ in one file); never mutated."""
    return dict(parser(True).parse(text=text))


def load(path: Path, root: Path) -> BicepFile:
    return BicepFile(root=root.resolve(), path=path.resolve(), tree=parse_text(path.read_text()))


def infra_files(root: Path) -> list[BicepFile]:
    return [load(path, root) for path in sorted(root.rglob("*.bicep"))]


def unwrap(config: Mapping[str, Any]) -> tuple[Any, Any, Mapping[str, Any]]:
    """(condition, loop, body) of a resource or module declaration's value.

    pycep gives ``{"condition": ..., "config": body}`` for ``= if (...) {...}`` and
    ``{"loop_type": ..., "condition": ..., "config": body}`` for ``= [for ...: ...]``; a plain body has neither
    (a body never has a top-level ``config`` key of its own).
    """
    if "config" in config and "loop_type" in config:
        return config.get("condition"), config["loop_type"], dict(config["config"])
    if set(config) == {"condition", "config"}:
        return config["condition"], None, dict(config["config"])
    return None, None, dict(config)


def is_ref(node: Any) -> TypeGuard[BicepElement]:
    """A symbol reference (a parameter, variable, resource, module or loop variable), not a string literal."""
    return isinstance(node, BicepElement)


def is_literal_string(node: Any) -> TypeGuard[str]:
    return isinstance(node, str) and not isinstance(node, BicepElement) and HOLE_OPEN not in node


def operator_of(node: Any) -> tuple[str, Mapping[str, Any]] | None:
    """(operator type, operands) of an operator node, e.g. ("conditional", {condition, true_value, false_value})."""
    if isinstance(node, Mapping) and set(node) == {"operator"} and isinstance(node["operator"], Mapping):
        return str(node["operator"]["type"]), dict(node["operator"].get("operands", {}))
    return None


def function_of(node: Any) -> tuple[str, Mapping[str, Any]] | None:
    """(function type, parameters by pycep's name) of a function call, e.g. ("to_lower", {...})."""
    if isinstance(node, Mapping) and set(node) == {"function"} and isinstance(node["function"], Mapping):
        return str(node["function"]["type"]), dict(node["function"].get("parameters") or {})
    return None


def arguments(parameters: Mapping[str, Any]) -> list[Any]:
    """A call's arguments in order. pycep names them per function and fills absent optional ones with None."""
    return [value for value in parameters.values() if value is not None]


def unquote(key: str) -> str:
    """An object key as Bicep means it: pycep keeps the quotes of ``'azd-env-name': ...``."""
    return key[1:-1] if len(key) >= 2 and key[0] == key[-1] == "'" else key


def holes(text: str) -> list[str]:
    """The expressions inside the ``${...}`` holes of an interpolated string, outermost only."""
    found, index = [], text.find(HOLE_OPEN)
    while index != -1:
        depth, cursor, quoted = 1, index + len(HOLE_OPEN), False
        while cursor < len(text) and depth:
            char = text[cursor]
            if char == "'":
                quoted = not quoted
            elif not quoted and char == "{":
                depth += 1
            elif not quoted and char == "}":
                depth -= 1
            cursor += 1
        found.append(text[index + len(HOLE_OPEN) : cursor - 1])
        index = text.find(HOLE_OPEN, cursor)
    return found


@cache
def expression(text: str) -> Any:
    """One Bicep expression (the inside of a ``${...}`` hole) parsed as pycep parses a variable's value."""
    return parser(False).parse(text=f"var hole = {text}\n")["variables"]["hole"]["value"]


def children(node: Any) -> Iterator[Any]:
    """The sub-expressions of a node, including the expressions in an interpolated string's holes."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            if isinstance(key, str) and HOLE_OPEN in key:  # an interpolated key: '${userAssignedIdentityId}'
                yield from (expression(hole) for hole in holes(key))
            yield value
    elif isinstance(node, list):
        yield from node
    elif isinstance(node, str) and not is_ref(node) and HOLE_OPEN in node:
        for hole in holes(node):
            yield expression(hole)


@dataclass(frozen=True)
class Segment:
    kind: str  # "name", "index", "call" or "expression"
    value: Any


def chain(node: Any) -> tuple[list[Segment], list[Any]]:
    """A property-access chain as segments, and the expressions inside it (index values, call arguments, a
    function at its root) whose own reads need checking. pycep nests ``a.b.c`` to the right: a.(b.c)."""
    if is_ref(node):
        return [Segment("name", str(node))], []
    operator = operator_of(node)
    if operator is None or operator[0] not in CHAIN_OPERATORS:
        return [Segment("expression", node)], [node]
    name, operands = operator
    left, inner = chain(operands["operand_1"])
    if name == "property_accessor":
        right, more = chain(operands["operand_2"])
        return left + right, inner + more
    if name == "index_accessor":
        return [*left, Segment("index", operands["operand_2"])], [*inner, operands["operand_2"]]
    if name == "function_accessor":
        extra = [value for key, value in operands.items() if key not in ("operand_1", "func_name")]
        return [*left, Segment("call", operands["func_name"])], inner + extra
    right, more = chain(operands["operand_2"])  # nested_resource_accessor: parent::child
    if len(left) == 1 and right and left[0].kind == right[0].kind == "name":
        return [Segment("name", f"{left[0].value}__{right[0].value}"), *right[1:]], inner + more
    return [Segment("expression", node)], inner + more
