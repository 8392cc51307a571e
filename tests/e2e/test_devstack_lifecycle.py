"""devstack stops what it started: a start-up that fails (the host's port taken, an app that cannot be
indexed) leaves no Azurite and no worker behind, and SIGTERM ends a running demo within seconds."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.devstack_process import ROOT, subprocess_env
from tests.e2e.test_run_and_index import processes_mentioning

pytestmark = pytest.mark.e2e

STOP_BUDGET_S = 10
START_BUDGET_S = 90


def devstack(state: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "devstack", *args, "--dir", str(state), "--seed-accounts", "200",
         "--time-scale", "0.05"],
        cwd=ROOT, env=subprocess_env({}), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()


def test_a_taken_host_port_stops_azurite_and_names_the_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = devstack(tmp_path / "state", "demo", "--host-port", str(port))
        output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 1
    assert f"the Functions host cannot listen on port {port}" in output
    assert processes_mentioning(str(tmp_path / "state")) == []  # Azurite was stopped


def test_an_app_that_cannot_be_indexed_stops_azurite_and_the_worker(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "host.json").write_text('{"version": "2.0"}')
    (app / "function_app.py").write_text("import azure.functions as func\n\nraise ImportError('no such module: erp')\n")
    proc = devstack(tmp_path / "state", "demo", "--host-port", "0", "--app-dir", str(app))
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 1
    assert "devstack failed to start: the app cannot be indexed" in output
    assert "no such module: erp" in output  # the runtime's own message, through the host
    assert processes_mentioning(str(tmp_path / "state")) == []
    assert processes_mentioning(str(app)) == []


def test_sigterm_ends_a_running_demo_and_its_worker_within_seconds(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = devstack(state, "demo", "--host-port", "0")
    assert proc.stdout is not None
    worker_pid = None
    started = time.monotonic()
    seen: list[str] = []
    try:
        for line in proc.stdout:  # wait until the first runs are under way
            seen.append(line)
            found = re.search(r"functions host .*\(worker pid (\d+)\)", line)
            if found:
                worker_pid = int(found.group(1))
            if "Functions:" in line:
                break
            assert time.monotonic() - started < START_BUDGET_S, "".join(seen)
        assert worker_pid is not None, "".join(seen)
        assert alive(worker_pid)
        time.sleep(2)  # inside the identity doctor or the sync
        stopping = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=STOP_BUDGET_S + 20)
        took = time.monotonic() - stopping
    except BaseException:
        proc.kill()
        proc.wait(timeout=30)
        raise
    assert took < STOP_BUDGET_S
    assert not alive(worker_pid)
    assert processes_mentioning(str(state)) == []
