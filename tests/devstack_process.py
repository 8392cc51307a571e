"""Run devstack as a real subprocess for tests (ephemeral ports, its own state directory)."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / ".artifacts"
RECORDED_SECRETS = ARTIFACTS / "devstack-secrets.txt"
START_TIMEOUT_S = 60


class DevstackProcess:
    def __init__(
        self, scenario: Path, directory: Path, name: str, *extra_args: str, env: dict[str, str] | None = None
    ) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.log_path = ARTIFACTS / f"devstack-{name}.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "devstack",
                "up",
                "--scenario",
                str(scenario),
                "--dir",
                str(directory),
                "--record-secrets",
                str(RECORDED_SECRETS),
                *extra_args,
            ],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        first = self.proc.stdout.readline()
        if first.strip() != "devstack ready" or time.monotonic() > deadline:
            self.stop()
            raise RuntimeError(f"devstack did not start: {first!r}; see {self.log_path}")
        self.env = _read_env(directory / "env")
        # Keep reading stdout (invocation log lines) so the pipe never fills and blocks devstack.
        self._stdout: list[str] = [first]
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        self._ssl = ssl.create_default_context(cafile=self.env["DEVSTACK_CA_CERT"])

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._stdout.append(line)

    def stdout_text(self) -> str:
        return "".join(self._stdout)

    def url(self, server: str) -> str:
        return {
            "entra": self.env["DEVSTACK_ENTRA_URL"],
            "mi": self.env["DEVSTACK_MANAGED_IDENTITY_URL"],
            "keyvault": self.env["DEVSTACK_KEY_VAULT_URL"],
            "dataverse": self.env["DEVSTACK_DATAVERSE_URL"],
            "alerts": self.env["DEVSTACK_ALERTS_URL"],
            "appinsights": self.env["DEVSTACK_APPINSIGHTS_URL"],
        }[server]

    def _call(self, server: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(  # noqa: S310 - loopback devstack URL
            self.url(server) + path,
            data=data,
            method="POST" if data is not None or path.endswith("/reset") else "GET",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10, context=self._ssl) as response:  # noqa: S310
            return json.loads(response.read())

    def stats(self, server: str) -> dict[str, Any]:
        return dict(self._call(server, "/_devstack/stats"))

    def telemetry(self, **filters: str) -> list[dict[str, Any]]:
        """What devstack's Application Insights ingestion stored (filters: type, name, operation_id, ...)."""
        query = f"?{urllib.parse.urlencode(filters)}" if filters else ""
        return list(self._call("appinsights", f"/_devstack/telemetry{query}")["items"])

    def reset_stats(self) -> None:
        for server in ("entra", "mi", "keyvault"):
            self._call(server, "/_devstack/stats/reset", {})

    def control(self, server: str, payload: dict[str, Any]) -> Any:
        return self._call(server, "/_devstack/control", payload)

    def app_settings(self) -> dict[str, str]:
        """The settings a function app would see (devstack's own DEVSTACK_* entries left out), with the app's
        telemetry off: in the test process its OpenTelemetry providers could be set only once."""
        return {"TELEMETRY_ENABLED": "false", **{k: v for k, v in self.env.items() if not k.startswith("DEVSTACK_")}}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()


def _read_env(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        values[key] = value
    return values


def subprocess_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATAVERSE_", "KEY_VAULT", "IDENTITY_"))}
    env["TELEMETRY_ENABLED"] = "false"  # on only where a test reads the telemetry (tests/e2e/test_telemetry.py)
    env.update(extra)
    env["PYTHONPATH"] = str(ROOT)
    return env


def run_python(script: str, stack: DevstackProcess, timeout_s: int = 120) -> Any:
    """Run ``script`` in a fresh interpreter with ``stack``'s app settings; return its last line as JSON."""
    import logging

    completed = subprocess.run(
        [sys.executable, "-c", script],
        env=subprocess_env(stack.app_settings()),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    logging.getLogger("tests.subprocess").info("stderr of a worker subprocess:\n%s", completed.stderr)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])
