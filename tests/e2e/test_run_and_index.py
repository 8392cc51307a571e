"""`make run` as a newcomer sees it, Ctrl-C leaving nothing behind, and the host indexing the real app."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import requests

from tests.devstack_process import ROOT, DevstackProcess, subprocess_env

pytestmark = pytest.mark.e2e

BANNER_AND_DOCTOR_BUDGET_S = 90


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(int(entry.name))
    return found


def test_run_shows_banner_and_doctor_then_ctrl_c_leaves_no_child(tmp_path: Path) -> None:
    state = tmp_path / "run-state"
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "devstack", "run", "--dir", str(state), "--host-port", "0",
         "--seed-accounts", "200", "--time-scale", "0.05"],
        cwd=ROOT, env=subprocess_env({}), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        seen: list[str] = []
        for line in proc.stdout:
            seen.append(line)
            if "devstack is serving" in line:
                break
            assert time.monotonic() - started < BANNER_AND_DOCTOR_BUDGET_S, "".join(seen)
        output = "".join(seen)
        elapsed = time.monotonic() - started
        assert "Functions:" in output
        assert "/api/health/doctor" in output
        assert "curl -H 'x-functions-key: " in output
        assert "✅ whoami" in output
        assert "5/5 passed" in output
        assert elapsed < BANNER_AND_DOCTOR_BUDGET_S
        assert processes_mentioning(str(state / "azurite")), "Azurite should be running while devstack serves"

    except BaseException:
        proc.kill()  # a failed assertion must not leave devstack (and Azurite) running
        proc.wait(timeout=30)
        raise
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, rest
    assert "devstack stopped" in rest
    assert processes_mentioning(str(state)) == []  # no Azurite, no worker, nothing left behind


def test_host_function_list_equals_the_worker_metadata(tmp_path_factory: pytest.TempPathFactory) -> None:
    # What the Python worker sees: get_functions() on the real function_app.py, in a fresh interpreter.
    script = textwrap.dedent(
        """
        import json, function_app
        out = []
        for f in function_app.app.get_functions():
            t = f.get_trigger()
            out.append({
                "name": f.get_function_name(),
                "trigger": t.get_binding_name(),
                "route": getattr(t, "route", None),
                "methods": [m.value for m in getattr(t, "methods", None) or []],
                "auth_level": getattr(getattr(t, "auth_level", None), "value", None),
                "schedule": getattr(t, "schedule", None),
            })
        print(json.dumps(out))
        """
    )
    worker = json.loads(
        subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    )
    stack = DevstackProcess(
        ROOT / "devstack" / "scenarios" / "default.yaml", tmp_path_factory.mktemp("index"), "index",
        "--host", "--host-port", "0", "--no-azurite", "--memory",
    )  # fmt: skip
    try:
        listed = requests.get(f"{stack.env['FUNCTIONS_BASE_URL']}/_devstack/functions", timeout=10).json()
    finally:
        stack.stop()
    keep = ("name", "trigger", "route", "methods", "auth_level", "schedule")
    assert [{k: f[k] for k in keep} for f in listed] == worker
    assert {f["name"] for f in worker} >= {"health_live", "health_doctor"}
