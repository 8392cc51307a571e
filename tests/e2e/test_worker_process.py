"""The app runs in its own worker process on Microsoft's runtime, and the host treats that worker as the
Functions host does: it resolves %NAME% itself, replaces a worker that crashed or ran past
functionTimeout, and a queue message whose invocation keeps dying ends in ``<queue>-poison``."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.devstack_process import ROOT, DevstackProcess
from tests.e2e.test_local_host import queue_messages
from tests.host_process import HostProcess

pytestmark = pytest.mark.e2e

FIXTURE_APP = Path(__file__).parent / "fixture_app"
PLACEHOLDER_APP = Path(__file__).parent / "fixture_placeholder_app"
RESTART_TIMEOUT_S = 30


def start(tmp: Path, name: str, app: Path, env: dict[str, str]) -> DevstackProcess:
    return DevstackProcess(
        ROOT / "devstack" / "scenarios" / "default.yaml", tmp, name,
        "--host", "--app-dir", str(app), "--host-port", "0", "--memory", "--time-scale", "0.01",
        env=env,
    )  # fmt: skip


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevstackProcess]:
    state = tmp_path_factory.mktemp("worker")
    imports = state / "imports.log"
    process = start(state, "worker", FIXTURE_APP, {"FIXTURE_IMPORT_LOG": str(imports)})
    yield process
    process.stop()


def base(stack: DevstackProcess) -> str:
    return stack.env["FUNCTIONS_BASE_URL"]


def worker(stack: DevstackProcess) -> dict[str, Any]:
    return dict(requests.get(f"{base(stack)}/_devstack/worker", timeout=10).json())


def wait_for_restart(stack: DevstackProcess, restarts: int) -> dict[str, Any]:
    deadline = time.monotonic() + RESTART_TIMEOUT_S
    while time.monotonic() < deadline:
        state = worker(stack)
        if state["restarts"] >= restarts and state["pid"]:
            return state
        time.sleep(0.2)
    raise AssertionError(f"the worker was not restarted {restarts} time(s): {worker(stack)}")


def test_functions_run_in_a_worker_process_on_the_pinned_runtime(stack: DevstackProcess) -> None:
    answer = requests.get(f"{base(stack)}/api/whereami", timeout=10).json()
    host_pid = stack.proc.pid
    assert answer["pid"] != host_pid
    assert answer["pid"] == worker(stack)["pid"]
    assert answer["runtime_loaded"] is True
    pinned = next(
        line.split("==")[1].split()[0]
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.startswith("azure-functions-runtime==")
    )
    assert answer["runtime_version"] == pinned
    assert answer["python"] == [3, 13]
    importers = {int(p) for p in (stack.directory / "imports.log").read_text().split()}
    assert answer["pid"] in importers
    assert host_pid not in importers  # the host process never imported function_app


def test_a_crashed_worker_fails_its_invocation_and_is_replaced(stack: DevstackProcess) -> None:
    before = worker(stack)
    headers = {"x-functions-key": stack.env["FUNCTIONS_HOST_KEY"]}
    assert requests.post(f"{base(stack)}/api/crash", headers=headers, timeout=30).status_code == 500
    after = wait_for_restart(stack, before["restarts"] + 1)
    assert after["pid"] != before["pid"]
    assert requests.get(f"{base(stack)}/api/whereami", timeout=10).json()["pid"] == after["pid"]
    assert "Language Worker Process exited" in stack.stdout_text()


def test_function_timeout_kills_the_worker_and_the_next_call_is_served(stack: DevstackProcess) -> None:
    before = worker(stack)
    headers = {"x-functions-key": stack.env["FUNCTIONS_HOST_KEY"]}
    started = time.monotonic()
    assert requests.get(f"{base(stack)}/api/slow", headers=headers, timeout=20).status_code == 500
    assert time.monotonic() - started < 5  # functionTimeout 3 s, not the function's 6 s
    after = wait_for_restart(stack, before["restarts"] + 1)
    assert after["pid"] != before["pid"]  # the runtime cannot cancel: the process was replaced
    assert requests.get(f"{base(stack)}/api/whereami", timeout=10).status_code == 200
    assert "Timeout value of 0:00:03 exceeded by function 'Functions.slow'" in stack.stdout_text()


@pytest.mark.parametrize("body", ["crash", "hang"])
def test_a_message_whose_worker_dies_reaches_the_poison_queue(stack: DevstackProcess, body: str) -> None:
    headers = {"x-functions-key": stack.env["FUNCTIONS_HOST_KEY"]}
    before = worker(stack)["restarts"]
    assert requests.post(f"{base(stack)}/api/enqueue", data=body, headers=headers, timeout=10).status_code == 202
    assert queue_messages(stack, "work-poison", at_least=1, timeout_s=90) == [body]
    wait_for_restart(stack, before + 3)  # maxDequeueCount 3: each delivery took a worker with it
    assert "Message has reached MaxDequeueCount of 3. Moving message to queue 'work-poison'." in stack.stdout_text()


def test_worker_logs_reach_the_host_log_with_the_invocation_id(stack: DevstackProcess) -> None:
    headers = {"x-functions-key": stack.env["FUNCTIONS_HOST_KEY"]}
    requests.post(f"{base(stack)}/api/enqueue", data="fail", headers=headers, timeout=10)
    deadline = time.monotonic() + 30
    text = ""
    while time.monotonic() < deadline:
        text = stack.stdout_text()
        if "cannot process 'fail'" in text:
            break
        time.sleep(0.2)
    failed = [line for line in text.splitlines() if "Result: Failure Exception" in line and "'fail'" in line]
    assert failed, "the runtime's exception did not reach the host log"
    executing = [line for line in text.splitlines() if "Executing 'Functions.work'" in line]
    assert executing


def test_a_killed_host_takes_its_worker_with_it(stack: DevstackProcess, tmp_path: Path) -> None:
    """SIGKILL leaves the host no chance to stop its worker: the worker notices its stream is gone and exits,
    abandoning the invocation it was running, rather than finishing a sync nobody will record."""
    host = HostProcess(stack, "killed", app_dir=FIXTURE_APP)
    try:
        worker_pid = requests.get(f"{host.url}/_devstack/worker", timeout=10).json()["pid"]

        def call_slow() -> None:
            with contextlib.suppress(requests.RequestException):  # the host dies under it
                host.get("/api/slow", timeout=20)

        slow = threading.Thread(target=call_slow, daemon=True)
        slow.start()
        time.sleep(0.5)  # the invocation is running in the worker
        host.kill()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{worker_pid}").exists() and "zombie" not in _status(worker_pid):
            assert time.monotonic() < deadline, "the worker outlived its host"
            time.sleep(0.1)
    finally:
        host.stop()


def _status(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return "zombie"


def test_an_unresolved_placeholder_disables_only_its_function(tmp_path: Path) -> None:
    stack = start(tmp_path, "placeholders", PLACEHOLDER_APP, {"FIXTURE_SET_SCHEDULE": "0 0 3 * * *"})
    try:
        functions = {f["name"]: f for f in requests.get(f"{base(stack)}/_devstack/functions", timeout=10).json()}
        assert functions["unset_schedule"]["disabled"] == "'%FIXTURE_UNSET_SCHEDULE%' does not resolve to a value."
        assert functions["set_schedule"]["disabled"] is None
        assert functions["set_schedule"]["resolved_schedule"] == "0 0 3 * * *"
        assert requests.get(f"{base(stack)}/api/ping", timeout=10).text == "pong"
        deadline = time.monotonic() + 30
        while "Executed 'Functions.set_schedule' (Succeeded" not in stack.stdout_text():
            assert time.monotonic() < deadline, "the timer whose setting is set did not run on start-up"
            time.sleep(0.2)
        out = stack.stdout_text()
        assert "Function 'Functions.unset_schedule' failed indexing and will be disabled." in out
        assert "Functions.unset_schedule' (" not in out  # never invoked
    finally:
        stack.stop()


def test_an_app_that_cannot_be_indexed_stops_devstack_with_the_runtimes_message(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "host.json").write_text(json.dumps({"version": "2.0"}))
    two_apps = "import azure.functions as func\n\nfirst = func.FunctionApp()\nsecond = func.FunctionApp()\n"
    (app / "function_app.py").write_text(two_apps)
    with pytest.raises(RuntimeError, match="devstack did not start"):
        start(tmp_path / "state", "unindexable", app, {})
    log = (ROOT / "tests" / ".artifacts" / "devstack-unindexable.log").read_text()
    assert "More than one FunctionApp" in log


def test_a_worker_that_never_sends_start_stream_is_reported_and_stopped(tmp_path: Path) -> None:
    import asyncio

    from devstack.worker_channel import WorkerChannel, WorkerError

    silent = tmp_path / "python"
    silent.write_text("#!/bin/sh\nexec sleep 60\n")  # starts, never connects
    silent.chmod(0o755)
    lines: list[str] = []
    channel = WorkerChannel(
        FIXTURE_APP,
        {"languageWorkers__python__defaultExecutablePath": str(silent)},
        lines.append,
        start_stream_timeout_s=1,
    )

    async def start_and_stop() -> int:
        try:
            await channel.start()
        finally:
            await channel.stop()
        return 0

    started = time.monotonic()
    with pytest.raises(WorkerError, match="sent no StartStream within 1 s"):
        asyncio.run(start_and_stop())
    assert time.monotonic() - started < 10
    (worker,) = channel.workers.values()
    assert worker.process.returncode is not None  # the silent process was stopped, not left behind


def test_functions_worker_process_count_runs_invocations_side_by_side_in_each_worker(tmp_path: Path) -> None:
    stack = start(tmp_path, "two-workers", FIXTURE_APP, {"FUNCTIONS_WORKER_PROCESS_COUNT": "2"})
    try:
        pids = worker(stack)["pids"]
        assert len(set(pids)) == 2
        assert stack.proc.pid not in pids
        headers = {"x-functions-key": stack.env["FUNCTIONS_HOST_KEY"]}
        # A slow invocation holds one worker: the next ones go to the other, the least busy.
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(requests.get, f"{base(stack)}/api/slow", headers=headers, timeout=20)
            time.sleep(0.5)
            served = {requests.get(f"{base(stack)}/api/whereami", timeout=10).json()["pid"] for _ in range(3)}
            assert len(served) == 1
            assert served <= set(pids)
            assert held.result().status_code == 500  # functionTimeout: the holding worker alone is replaced
        after = wait_for_restart(stack, 1)
        assert served <= set(after["pids"])
        assert len(set(after["pids"])) == 2
        (replaced,) = set(pids) - served
        assert replaced not in after["pids"]
    finally:
        stack.stop()


def test_a_worker_process_count_out_of_range_falls_back_to_one_worker() -> None:
    from devstack.worker_channel import worker_process_count

    said: list[str] = []
    assert worker_process_count({}, said.append) == 1
    assert worker_process_count({"FUNCTIONS_WORKER_PROCESS_COUNT": "3"}, said.append) == 3
    assert said == []
    for bad in ("0", "11", "two", "-1"):
        assert worker_process_count({"FUNCTIONS_WORKER_PROCESS_COUNT": bad}, said.append) == 1
    assert len(said) == 4
    assert all("FUNCTIONS_WORKER_PROCESS_COUNT" in line for line in said)
