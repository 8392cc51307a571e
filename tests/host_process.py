"""A local Functions host as its own process (``python -m devstack host``), for tests that kill or run
several hosts against one devstack. Its stderr goes to tests/.artifacts, which the secret-hygiene test scans."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import requests

from tests.devstack_process import ARTIFACTS, ROOT, DevstackProcess, subprocess_env

STOP_TIMEOUT_S = 20
WORKER_STARTED = re.compile(r"Starting worker process: .* \(pid (\d+)\)")


class HostProcess:
    def __init__(
        self,
        stack: DevstackProcess,
        name: str,
        env: dict[str, str] | None = None,
        app_dir: Path = ROOT,
        port: int = 0,  # 0: any free port; a fixed one lets a restarted host keep its URL
    ) -> None:
        self.stack = stack
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "devstack", "host", "--env-file", str(stack.directory / "env"),
             "--state-dir", str(stack.directory), "--app-dir", str(app_dir), "--port", str(port)],
            cwd=ROOT, env=subprocess_env(env or {}),
            stdout=subprocess.PIPE, stderr=(ARTIFACTS / f"host-{name}.log").open("a"), text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("host ready"):
            self.kill()  # nothing else would stop it (or the worker it may have started)
            raise RuntimeError(f"the host did not start: {line!r}")
        _, _, self.url, self.key = line.split()
        self.lines: list[str] = []  # the invocation log ("Executed 'Functions.x' (Succeeded, ...)")
        self._log = (ARTIFACTS / f"host-{name}.log").open("a")  # the invocation log, kept for a failure's reader
        threading.Thread(target=self._read_stdout, daemon=True).start()

    def _read_stdout(self) -> None:
        for line in self.proc.stdout or []:
            self.lines.append(line)
            self._log.write(line)
            self._log.flush()

    def function_key(self, name: str) -> str:
        keys = json.loads((self.stack.directory / "host-keys.json").read_text())
        return str(keys["functions"][name]["default"])

    def master_key(self) -> str:
        """What ``/admin/*`` takes (a host key does not, as in Azure)."""
        return str(json.loads((self.stack.directory / "host-keys.json").read_text())["masterKey"])

    def post(self, path: str, *, timeout: float, key: str | None = None, **kwargs: Any) -> requests.Response:
        headers = {"x-functions-key": key or self.key}
        return requests.post(f"{self.url}{path}", headers=headers, timeout=timeout, **kwargs)

    def get(self, path: str, *, timeout: float = 60) -> requests.Response:
        return requests.get(f"{self.url}{path}", headers={"x-functions-key": self.key}, timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the host and its Python workers, as an instance that dies: no cleanup, leases stay held until
        they expire. The worker runs in its own session and would finish its invocations without the host."""
        self.proc.kill()
        self.proc.wait(timeout=10)
        for line in list(self.lines):
            found = WORKER_STARTED.search(line)
            if found:
                with contextlib.suppress(ProcessLookupError):  # it had exited
                    os.kill(int(found.group(1)), signal.SIGKILL)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill()
