"""A local Functions host as its own process (``python -m devstack host``), for tests that kill or run
several hosts against one devstack. Its stderr goes to tests/.artifacts, which the secret-hygiene test scans."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import requests

from tests.devstack_process import ARTIFACTS, ROOT, DevstackProcess, subprocess_env

STOP_TIMEOUT_S = 20


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
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout or []), daemon=True).start()

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
        """SIGKILL: no cleanup, leases stay held until they expire."""
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill()
