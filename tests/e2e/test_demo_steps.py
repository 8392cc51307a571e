"""The first runs of `make run` / `make demo` go through the local host and its worker: devstack seeds and
watches the emulators' counters, and never runs an engine of the app in its own process."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future

import pytest

from devstack.progress import in_thread, poll_until_done, throttles
from tests.devstack_process import ROOT, DevstackProcess, subprocess_env

pytestmark = pytest.mark.e2e

SEED_ACCOUNTS = 40  # 4 bad accounts (the seed's minimum), 120 contacts
# Modules that would mean the app's engines (or its Dataverse client and credentials) ran in devstack.
ENGINE_MODULES = (
    "shared.sync.engine",
    "shared.sync.outbound",
    "shared.dataverse",
    "shared.identity",
    "shared.webhooks",
)
STEPS_SCRIPT = """
import json, sys
from devstack import demo
env = json.loads(sys.stdin.read())
summaries = [demo.scheduled_sync(env), demo.webhook_round_trip(env)]
loaded = sorted(m for m in sys.modules if m.startswith(tuple(sys.argv[1].split(","))))
print(json.dumps({"summaries": summaries, "engine_modules": loaded}))
"""


@pytest.fixture(scope="module")
def demo_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevstackProcess]:
    """A devstack of its own: the steps check exact counts, which another test's sync or webhooks would move."""
    process = DevstackProcess(
        ROOT / "devstack" / "scenarios" / "default.yaml", tmp_path_factory.mktemp("demo-steps"), "demo-steps",
        "--host", "--host-port", "0", "--memory", "--time-scale", "0.01", "--seed-accounts", str(SEED_ACCOUNTS),
    )  # fmt: skip
    yield process
    process.stop()


def test_sync_and_webhook_steps_run_in_the_host_worker_not_in_devstack(demo_stack: DevstackProcess) -> None:
    completed = subprocess.run(
        [sys.executable, "-c", STEPS_SCRIPT, ",".join(ENGINE_MODULES)],
        input=json.dumps(demo_stack.env),
        env=subprocess_env({}),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["engine_modules"] == []
    sync, webhooks = result["summaries"]
    assert "36 accounts and" in sync
    assert "4 bad accounts" in sync
    assert webhooks.startswith("36 account writes -> 36 deliveries acknowledged (202) -> 36 events")
    log = demo_stack.stdout_text()  # `up` prints the host's invocation log
    assert log.count("Executed 'Functions.sync_run_now' (Succeeded") == 2
    assert "first sync run" in completed.stdout  # the table of the runs' reports


def test_demo_module_imports_no_engine() -> None:
    script = (
        "import json, sys; from devstack import demo; demo._csv_sources(('accounts', 'contacts'));"
        f" print(json.dumps(sorted(m for m in sys.modules if m.startswith({ENGINE_MODULES!r}))))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], env=subprocess_env({}), cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert json.loads(completed.stdout) == []
    source = (ROOT / "devstack" / "demo.py").read_text() + (ROOT / "devstack" / "progress.py").read_text()
    for module in ENGINE_MODULES:
        assert f"from {module}" not in source
        assert f"import {module}" not in source


def test_progress_polls_while_the_call_runs_and_once_after() -> None:
    release = threading.Event()
    polls: list[bool] = []

    def poll() -> None:
        polls.append(release.is_set())
        if len(polls) == 1:
            raise OSError("an emulator busy past the timeout: this update is skipped")
        if len(polls) == 3:
            release.set()

    with in_thread(lambda: release.wait(10) and "report") as run:
        started = time.monotonic()
        poll_until_done(run, poll, interval_s=0.01)
        assert run.result() == "report"
    assert time.monotonic() - started < 5
    assert polls[-1] is True  # the last poll saw the finished call
    assert len(polls) >= 3


def test_poll_until_done_returns_at_once_for_a_finished_call() -> None:
    done: Future[int] = Future()
    done.set_result(1)
    calls: list[int] = []
    poll_until_done(done, lambda: calls.append(1), interval_s=10)
    assert calls == [1]


def test_throttles_sum_every_429_counter() -> None:
    snapshot = {"counters": {"throttled 0x80072322": 2, "throttled 0x80072321": 1, "webhook deliveries 202": 9}}
    assert throttles(snapshot) == 3
    assert throttles({}) == 0


class _FakeHost:
    """Answers ``POST /api/sync/<job>/run`` and ``GET /api/sync/runs`` from scripted replies."""

    def __init__(self, posts: list[tuple[int, dict[str, object]]], runs: list[list[dict[str, object]]]) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.posts, self.runs = posts, runs
        self.calls: list[str] = []
        host = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, body: object) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                host.calls.append(f"POST {self.path}")
                self._answer(*host.posts.pop(0))

            def do_GET(self) -> None:
                host.calls.append(f"GET {self.path.split('?')[0]}")
                self._answer(200, host.runs.pop(0) if len(host.runs) > 1 else host.runs[0])

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.env = {"FUNCTIONS_BASE_URL": f"http://127.0.0.1:{self.server.server_port}", "FUNCTIONS_HOST_KEY": "k"}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_timer_run_holding_the_job_is_waited_for_and_its_stored_report_counts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from devstack import demo

    monkeypatch.setattr(demo, "SYNC_REPORT_POLL_S", 0.01)
    timer_run: dict[str, object] = {
        "job": "accounts",
        "run_id": "timer",
        "started_at": "2026-12-01T10:00:01+00:00",
        "status": "succeeded",
    }
    older: dict[str, object] = {**timer_run, "run_id": "earlier", "started_at": "2026-12-01T09:45:00+00:00"}
    host = _FakeHost(posts=[(409, {"status": "skipped"})] * 2, runs=[[older], [timer_run, older]])
    try:
        report = demo._run_job(host.env, "accounts", "2026-12-01T10:00:00+00:00")
    finally:
        host.close()
    assert report["run_id"] == "timer"
    assert host.calls == ["POST /api/sync/accounts/run", "GET /api/sync/runs"] * 2


def test_a_run_that_found_the_seed_already_processed_gives_way_to_the_run_that_read_it() -> None:
    from devstack import demo

    timer_run: dict[str, object] = {
        "job": "accounts",
        "run_id": "timer",
        "started_at": "2026-12-01T10:00:01+00:00",
        "status": "succeeded",
    }
    ours = {**timer_run, "run_id": "ours", "started_at": "2026-12-01T10:00:09+00:00", "files": 0, "files_skipped": 1}
    host = _FakeHost(posts=[(200, ours)], runs=[[ours, timer_run]])
    try:
        assert demo._run_job(host.env, "accounts", "2026-12-01T10:00:00+00:00")["run_id"] == "timer"
    finally:
        host.close()
