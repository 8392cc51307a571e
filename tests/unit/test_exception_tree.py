"""Every exception dvbridge defines is in the one tree: a subclass of DvbridgeError, listed in the tree that
shared/errors.py draws. Private control-flow exceptions (a leading underscore) never leave their module."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import types

import pytest

import shared
from shared import errors

pytestmark = pytest.mark.unit


def exceptions_outside_the_tree(modules: list[types.ModuleType], drawn: str) -> list[str]:
    """Public exception classes defined in ``modules`` that are no DvbridgeError or not drawn in ``drawn``."""
    problems = []
    for module in modules:
        for name, value in vars(module).items():
            if not (inspect.isclass(value) and issubclass(value, BaseException)) or name.startswith("_"):
                continue
            if value.__module__ != module.__name__ or value is errors.DvbridgeError:
                continue  # imported (checked where it is defined), or the root the tree is drawn from
            if not issubclass(value, errors.DvbridgeError):
                problems.append(f"{module.__name__}.{name} is not a DvbridgeError")
            elif f"── {name} " not in drawn:
                problems.append(f"{module.__name__}.{name} is not drawn in shared/errors.py")
    return problems


def shared_modules() -> list[types.ModuleType]:
    names = [m.name for m in pkgutil.walk_packages(shared.__path__, "shared.") if not m.name.endswith("__main__")]
    return [importlib.import_module(name) for name in names]


def test_every_exception_in_shared_is_in_the_tree() -> None:
    assert exceptions_outside_the_tree(shared_modules(), errors.__doc__ or "") == []


def test_the_check_sees_an_exception_outside_the_tree_and_one_not_drawn() -> None:
    planted = types.ModuleType("planted")
    exec(  # noqa: S102 - a planted module for the check to read  # nosec B102
        "from shared.errors import DvbridgeError\n"
        "class Stray(Exception): pass\n"
        "class Undrawn(DvbridgeError): pass\n"
        "class _Private(Exception): pass\n"
        "class DataverseError(DvbridgeError): pass\n",
        planted.__dict__,
    )
    for name in ("Stray", "Undrawn", "_Private", "DataverseError"):
        planted.__dict__[name].__module__ = "planted"
    assert exceptions_outside_the_tree([planted], errors.__doc__ or "") == [
        "planted.Stray is not a DvbridgeError",
        "planted.Undrawn is not drawn in shared/errors.py",
    ]
