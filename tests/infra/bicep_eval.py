"""Evaluating the Bicep of infra/ for given parameters, as far as that can be done offline.

Parameters, variables, literals, ternaries, the logical and arithmetic operators and the pure functions the
templates use are evaluated; what only ARM knows (a resource's id, a module's output, ``uniqueString``,
``subscription()``) becomes an :class:`Unknown` named by the expression it stands for, such as
``app.outputs.principalId`` or ``guid(storage.id, app.outputs.principalId, 'b7e6...')``. Two unknowns are
equal when their expressions are, which is what a test of "one name per principal" needs.

:func:`instantiate` evaluates main.bicep and every module it deploys with those parameters (a module whose
condition is false is not deployed), each module with the params main.bicep passes it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.infra.bicep_tree import (
    CHAIN_OPERATORS,
    BicepFile,
    Declaration,
    Segment,
    arguments,
    chain,
    expression,
    function_of,
    holes,
    is_ref,
    load,
    operator_of,
    unquote,
)

MAIN = "main.bicep"


@dataclass(frozen=True)
class Unknown:
    """A value only ARM knows, named by the Bicep expression it stands for."""

    text: str

    def __str__(self) -> str:
        return self.text


def render(value: Any) -> str:
    """A value as it would be written in Bicep, for an :class:`Unknown`'s text."""
    if isinstance(value, Unknown):
        return value.text
    if isinstance(value, str):
        return f"'{value}'"
    return json.dumps(value, default=render)  # an object or array holding an Unknown: its text in place


def as_text(value: Any) -> str:
    """string(value) as ARM converts it: booleans in lower case, objects and arrays as JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


def known(*values: Any) -> bool:
    return not any(isinstance(value, Unknown) for value in values)


def empty(value: Any) -> bool:
    return value in ("", None) or value == [] or value == {}


class Evaluator:
    """One Bicep file evaluated with given parameter values (a parameter not given takes its default)."""

    def __init__(self, parsed: BicepFile, given: Mapping[str, Any], symbol: str = "") -> None:
        self.file = parsed
        self.symbol = symbol  # the module symbol this file was deployed as; "" for main.bicep
        self.params: dict[str, Any] = {}
        self._variables: dict[str, Any] = {}
        self._evaluating: set[str] = set()
        for name, declaration in parsed.params.items():
            if name in given:
                self.params[name] = given[name]
            elif declaration.get("default") is None:
                raise ValueError(f"{parsed.rel}: param {name} has no default, give it")
        for name in parsed.params:
            self.symbol_value(name)  # the defaults, each once (one may read another)

    def symbol_value(self, name: str) -> Any:
        if name in self.file.params:
            if name not in self.params:
                self.params[name] = self.value(self.file.params[name]["default"])
            return self.params[name]
        if name in self.file.variables:
            if name not in self._variables:
                if name in self._evaluating:
                    raise ValueError(f"{self.file.rel}: var {name} refers to itself")
                self._evaluating.add(name)
                self._variables[name] = self.value(self.file.variables[name]["value"])
                self._evaluating.discard(name)
            return self._variables[name]
        return Unknown(name)  # a resource, a module, or a loop variable

    def value(self, node: Any) -> Any:
        if node is None or isinstance(node, bool | int):
            return node
        if is_ref(node):
            return self.symbol_value(str(node))
        if isinstance(node, str):
            return self.interpolate(node)
        if isinstance(node, list):
            return [self.value(item) for item in node]
        operator = operator_of(node)
        if operator is not None:
            return self.operator(node, *operator)
        function = function_of(node)
        if function is not None:
            return self.function(*function)
        if isinstance(node, Mapping):
            return {as_text(self.interpolate(unquote(key))): self.value(item) for key, item in node.items()}
        return Unknown(repr(node))

    def interpolate(self, text: str) -> Any:
        pieces, unknown = text, False
        for hole in holes(text):
            part = self.value(expression(hole))
            unknown = unknown or not known(part)
            pieces = pieces.replace("${" + hole + "}", render(part) if not known(part) else as_text(part), 1)
        return Unknown(f"'{pieces}'") if unknown else pieces

    def operator(self, node: Any, name: str, operands: Mapping[str, Any]) -> Any:
        if name in CHAIN_OPERATORS:
            segments, _ = chain(node)
            return self.read(segments)
        if name == "conditional":
            condition = self.value(operands["condition"])
            if not isinstance(condition, bool):
                return Unknown(f"({render(condition)} ? ...)")
            return self.value(operands["true_value" if condition else "false_value"])
        values = [self.value(operands[key]) for key in operands]
        if not known(*values):
            return Unknown(f"{name}({', '.join(map(render, values))})")
        if name == "not":
            return not values[0]
        if name == "and":
            return all(values)
        if name == "or":
            return any(values)
        if name == "coalesce":
            return next((value for value in values if value is not None), None)
        if name == "minus":
            return -values[0]
        left, right = values[0], values[1]
        arithmetic: dict[str, Callable[[], Any]] = {
            "add": lambda: left + right, "substract": lambda: left - right, "multiply": lambda: left * right,
            "divide": lambda: int(left / right), "modulo": lambda: left % right,  # ARM divides integers
            "equals": lambda: left == right, "not_equals": lambda: left != right,
            "equals_case_insensitive": lambda: str(left).lower() == str(right).lower(),
            "not_equals_case_insensitive": lambda: str(left).lower() != str(right).lower(),
            "greater_than": lambda: left > right, "greater_than_or_equals": lambda: left >= right,
            "less_than": lambda: left < right, "less_than_or_equals": lambda: left <= right,
        }  # fmt: skip
        if name not in arithmetic:
            return Unknown(f"{name}({', '.join(map(render, values))})")
        return arithmetic[name]()

    def read(self, segments: list[Segment]) -> Any:
        """``a.b[0].c``: each step into a known object or array; past anything unknown, an :class:`Unknown`."""
        head, *rest = segments
        current = self.symbol_value(head.value) if head.kind == "name" else self.value(head.value)
        for segment in rest:
            if segment.kind == "call":
                return Unknown(f"{render(current)}.{segment.value}()")
            key = segment.value if segment.kind == "name" else self.value(segment.value)
            into_object = isinstance(current, Mapping) and isinstance(key, str) and key in current
            into_array = isinstance(current, list) and isinstance(key, int) and not isinstance(key, bool)
            if into_object or into_array:
                current = current[key]
            elif segment.kind == "name":
                current = Unknown(f"{render(current)}.{key}")
            else:
                current = Unknown(f"{render(current)}[{render(key)}]")
        return current

    def function(self, name: str, parameters: Mapping[str, Any]) -> Any:
        values = [self.value(argument) for argument in arguments(parameters)]
        if not known(*values):
            return Unknown(f"{name}({', '.join(map(render, values))})")
        pure: dict[str, Callable[[], Any]] = {
            "empty": lambda: empty(values[0]),
            "string": lambda: as_text(values[0]),
            "int": lambda: int(values[0]),
            "bool": lambda: values[0] if isinstance(values[0], bool) else str(values[0]).lower() == "true",
            "length": lambda: len(values[0]),
            "max": lambda: max(values),
            "min": lambda: min(values),
            "to_lower": lambda: str(values[0]).lower(),
            "to_upper": lambda: str(values[0]).upper(),
            "concat": lambda: (
                [item for value in values for item in value] if all(isinstance(v, list) for v in values)
                else "".join(as_text(value) for value in values)
            ),
            "union": lambda: {key: item for value in values for key, item in value.items()},
            "contains": lambda: values[1] in values[0],
            "split": lambda: str(values[0]).split(str(values[1])),
            "last": lambda: values[0][-1],
            "first": lambda: values[0][0],
            "starts_with": lambda: str(values[0]).lower().startswith(str(values[1]).lower()),
            "ends_with": lambda: str(values[0]).lower().endswith(str(values[1]).lower()),
        }  # fmt: skip
        if name in pure:
            return pure[name]()
        return Unknown(f"{name}({', '.join(map(render, values))})")  # ARM's: ids, uniqueString, guid...

    def deployed(self, declaration: Declaration) -> bool:
        """Whether a resource or module is deployed; a condition only ARM can decide is an error here."""
        if declaration.condition is None:
            return True
        condition = self.value(declaration.condition)
        if not isinstance(condition, bool):
            raise ValueError(f"{self.file.rel}: the condition of {declaration.symbol} is {render(condition)}")
        return condition

    def body(self, declaration: Declaration) -> dict[str, Any]:
        evaluated = self.value(dict(declaration.body))
        assert isinstance(evaluated, dict)
        return evaluated


@dataclass(frozen=True)
class Instance:
    """A file as deployed: main.bicep, or a module with the params its caller gave."""

    evaluator: Evaluator
    parent: Instance | None = None
    declaration: Declaration | None = None  # the module declaration in the parent
    children: list[Instance] = field(default_factory=list, compare=False)

    @property
    def file(self) -> BicepFile:
        return self.evaluator.file

    @property
    def symbol(self) -> str:
        return self.evaluator.symbol

    def walk(self) -> Iterator[Instance]:
        yield self
        for child in self.children:
            yield from child.walk()

    def resources(self, resource_type: str) -> Iterator[tuple[Declaration, dict[str, Any]]]:
        """Each deployed (not ``existing``) resource of a type, with its evaluated body."""
        for declaration in self.file.resources.values():
            wanted = declaration.type.lower() == resource_type.lower() and not declaration.existing
            if wanted and declaration.loop is None and self.evaluator.deployed(declaration):
                yield declaration, self.evaluator.body(declaration)


def instantiate(root: Path, given: Mapping[str, Any]) -> Instance:
    """main.bicep and each module it deploys (recursively), evaluated with ``given`` for main.bicep's params."""
    return _instantiate(load(root / MAIN, root), root, given, None, None)


def _instantiate(
    parsed: BicepFile, root: Path, given: Mapping[str, Any], parent: Instance | None, declaration: Declaration | None
) -> Instance:
    symbol = declaration.symbol if declaration else ""
    instance = Instance(Evaluator(parsed, given, symbol), parent, declaration)
    for module in parsed.modules.values():
        if module.loop is not None or not instance.evaluator.deployed(module):
            continue
        params = module.body.get("params", {})
        values = {unquote(key): instance.evaluator.value(value) for key, value in params.items()}
        instance.children.append(_instantiate(load(parsed.module_file(module), root), root, values, instance, module))
    return instance
