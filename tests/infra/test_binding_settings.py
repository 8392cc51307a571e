"""Every ``%NAME%`` in a binding is an app setting where the host resolves it.

The Functions host resolves ``%NAME%`` (timer schedules, queue names, connection names) in its own process,
from its app settings; the worker that imports function_app.py cannot supply them (os.environ changes stay
in the worker). An unset one makes the host log ``'%NAME%' does not resolve to a value.`` and ``Function
'Functions.<name>' failed indexing and will be disabled.``, and the rest of the app starts as if nothing
were wrong. So each placeholder the decorators write must be an app setting in both places a host reads
them from: infra/main.bicep (Azure) and local.settings.json.example's ``Values`` (the local host).

The placeholders come from the worker's own view: function_app imported in a clean subprocess, every
binding's raw JSON (what the worker sends the host) searched, every string value, recursively.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.expiry.settings import DEFAULT_SWEEP_SCHEDULE
from shared.settings_registry import DEFAULT_ROTATION_SCHEDULE
from shared.sync.jobs_file import schedule_setting
from tests.devstack_process import ROOT
from tests.infra.test_bicep_contract import parsed, walk

pytestmark = pytest.mark.infra

MAIN_BICEP = ROOT / "infra" / "main.bicep"
LOCAL_SETTINGS_EXAMPLE = ROOT / "local.settings.json.example"
JOBS_FILE = ROOT / "sync_jobs.yaml"
BICEP_SOURCE = "infra/main.bicep"
LOCAL_SOURCE = "local.settings.json.example"
# Run in the subprocess: import the app as the worker does, report each placeholder with the functions that
# use it, and which of them the import left in os.environ (none may be there: the host never sees them).
PROBE = r"""
import json, os, re, sys

import function_app

PLACEHOLDER = re.compile(r"%([^%\s]+)%")

def strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)

found = {}
for fn in function_app.app.get_functions():
    for raw in fn.get_raw_bindings():
        for text in strings(json.loads(raw)):
            for name in PLACEHOLDER.findall(text):
                found.setdefault(name, []).append(fn.get_function_name())
print(json.dumps({"placeholders": found, "in_environ": sorted(n for n in found if n in os.environ)}))
"""


@cache
def probe() -> dict[str, Any]:
    """Import function_app in a clean environment (only PATH and HOME; cwd = the app root, which ``-c``
    puts on sys.path, as the worker's script root is) and return what PROBE printed."""
    env = {name: os.environ[name] for name in ("PATH", "HOME") if name in os.environ}
    completed = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert completed.returncode == 0, f"importing function_app failed:\n{completed.stderr}"
    lines = completed.stdout.strip().splitlines()
    assert lines, f"the probe printed nothing:\n{completed.stderr}"
    return dict(json.loads(lines[-1]))


def placeholders() -> dict[str, list[str]]:
    """Placeholder name -> the functions whose bindings use it."""
    return dict(probe()["placeholders"])


def bicep_app_settings(tree: dict[str, Any]) -> dict[str, Any]:
    """Name -> value (as pycep parsed it) of every app setting a parsed main.bicep gives the function app:
    the ``{name, value}`` objects in the app module's ``appSettings``, following the variables it names
    (``concat([...], credentialSetting, identitySettings)``)."""
    variables = tree.get("variables", {})
    pending = [tree["modules"]["app"]["config"]["params"]["appSettings"]]
    followed: set[str] = set()
    settings: dict[str, Any] = {}
    while pending:
        for node in walk(pending.pop()):
            if isinstance(node, dict) and set(node) == {"name", "value"} and isinstance(node["name"], str):
                settings[node["name"]] = node["value"]
            elif isinstance(node, str) and node in variables and node not in followed:
                followed.add(node)
                pending.append(variables[node]["value"])
    return settings


def bicep_value(tree: dict[str, Any], value: Any) -> Any:
    """A setting's value with a parameter reference replaced by the parameter's default (pycep writes a
    reference as the bare parameter name)."""
    parameters = tree.get("parameters", {})
    if isinstance(value, str) and value in parameters:
        return parameters[value].get("default")
    return value


def unset_placeholders(
    names: Iterable[str], bicep: dict[str, Any], local_values: dict[str, Any]
) -> dict[str, list[str]]:
    """The placeholders each source leaves unset (a missing name or an empty value), by source; {} when
    every placeholder is set in both. ``bicep`` is main.bicep as pycep parses it, ``local_values`` the
    ``Values`` object of a local.settings.json."""
    bicep_settings = bicep_app_settings(bicep)
    unset = {
        BICEP_SOURCE: sorted(n for n in names if bicep_value(bicep, bicep_settings.get(n)) in (None, "")),
        LOCAL_SOURCE: sorted(n for n in names if local_values.get(n) in (None, "")),
    }
    return {source: missing for source, missing in unset.items() if missing}


def job_schedules() -> dict[str, str]:
    """Each job's schedule setting -> its ``schedule`` in sync_jobs.yaml."""
    jobs = yaml.safe_load(JOBS_FILE.read_text())["jobs"]
    return {schedule_setting(name): str(job["schedule"]) for name, job in jobs.items()}


def example_values(path: Path = LOCAL_SETTINGS_EXAMPLE) -> dict[str, Any]:
    return dict(json.loads(path.read_text())["Values"])


def test_the_bindings_carry_placeholders() -> None:
    found = placeholders()
    assert found, "no %NAME% in any binding: the walk over the bindings is broken"
    assert {*job_schedules(), "EXPIRY_SWEEP_SCHEDULE", "ROTATION_SCHEDULE"} <= set(found), found
    assert found["EXPIRY_SWEEP_SCHEDULE"] == ["expiry_sweep"]


def test_every_binding_placeholder_is_set_by_main_bicep_and_the_local_settings_example() -> None:
    found = placeholders()
    unset = unset_placeholders(found, parsed(MAIN_BICEP), example_values())
    assert unset == {}, (
        f"the host disables the functions using these (failed indexing): {unset}; used by "
        f"{ {name: found[name] for missing in unset.values() for name in missing} }"
    )


def test_importing_function_app_sets_no_binding_placeholder_in_the_environment() -> None:
    # A default the worker puts in os.environ never reaches the host: locally it hides the missing setting.
    assert probe()["in_environ"] == []


def test_the_schedules_are_the_jobs_file_and_the_sweep_and_rotation_defaults() -> None:
    expected = {
        **job_schedules(),
        "EXPIRY_SWEEP_SCHEDULE": DEFAULT_SWEEP_SCHEDULE,
        "ROTATION_SCHEDULE": DEFAULT_ROTATION_SCHEDULE,
    }  # fmt: skip
    tree = parsed(MAIN_BICEP)
    settings = bicep_app_settings(tree)
    assert {name: bicep_value(tree, settings.get(name)) for name in expected} == expected
    values = example_values()
    assert {name: values.get(name) for name in expected} == expected


def _without_bicep_setting(text: str, name: str) -> str:
    pattern = re.compile(r"\n[ \t]*\{\s*name: '" + re.escape(name) + r"'\s*value: [^\n]*\s*\}")
    cut, count = pattern.subn("", text)
    assert count == 1, f"{name} is not one {{name, value}} object in main.bicep"
    return cut


def test_the_checker_names_exactly_the_setting_removed(tmp_path: Path) -> None:
    found = placeholders()
    intact_bicep, intact_values = parsed(MAIN_BICEP), example_values()
    assert unset_placeholders(found, intact_bicep, intact_values) == {}
    for name in sorted(found):  # each placeholder in turn: its removal is reported, and nothing else
        bicep_copy = tmp_path / f"main-without-{name}.bicep"
        bicep_copy.write_text(_without_bicep_setting(MAIN_BICEP.read_text(), name))
        example = json.loads(LOCAL_SETTINGS_EXAMPLE.read_text())
        del example["Values"][name]
        example_copy = tmp_path / f"local.settings-without-{name}.json"
        example_copy.write_text(json.dumps(example))
        cut_bicep, cut_values = parsed(bicep_copy), example_values(example_copy)
        assert unset_placeholders(found, cut_bicep, intact_values) == {BICEP_SOURCE: [name]}
        assert unset_placeholders(found, intact_bicep, cut_values) == {LOCAL_SOURCE: [name]}
        assert unset_placeholders(found, cut_bicep, cut_values) == {BICEP_SOURCE: [name], LOCAL_SOURCE: [name]}
        assert unset_placeholders(found, intact_bicep, {**intact_values, name: ""}) == {LOCAL_SOURCE: [name]}
