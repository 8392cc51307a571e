"""First runs of each capability, shown by ``make run`` and checked by ``make demo``.

A capability registers one step with :func:`demo_step`; the step gets the environment devstack
wrote (settings, URLs, host key) and returns a one-line summary, raising on failure. Later issues add
their first run here: a sync, a webhook round trip, an expiry sweep.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

DemoStep = Callable[[dict[str, str]], str]
STEPS: list[tuple[str, DemoStep]] = []
STEP_TIMEOUT_S = 120


def demo_step(name: str) -> Callable[[DemoStep], DemoStep]:
    def register(step: DemoStep) -> DemoStep:
        STEPS.append((name, step))
        return step

    return register


@dataclass
class Outcome:
    name: str
    ok: bool
    summary: str
    seconds: float


def run_steps(env: dict[str, str]) -> list[Outcome]:
    outcomes = []
    for name, step in STEPS:
        started = time.monotonic()
        try:
            summary, ok = step(env), True
        except Exception as exc:  # a demo step's failure is reported, not raised
            summary, ok = f"{type(exc).__name__}: {exc}", False
        outcomes.append(Outcome(name, ok, summary, time.monotonic() - started))
    return outcomes


def render(outcomes: list[Outcome]) -> str:
    width = max((len(o.name) for o in outcomes), default=10)
    lines = ["", "first runs:", ""]
    for o in outcomes:
        lines.append(f"  {'✅' if o.ok else '❌'} {o.name:<{width}}  {o.seconds:6.2f} s  {o.summary}")
    passed = sum(o.ok for o in outcomes)
    lines += ["", f"{passed}/{len(outcomes)} passed"]
    return "\n".join(lines)


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310 - loopback URLs from devstack
    try:
        with urllib.request.urlopen(request, timeout=STEP_TIMEOUT_S) as response:  # noqa: S310
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


@demo_step("identity doctor")
def identity_doctor(env: dict[str, str]) -> str:
    """The doctor in a fresh interpreter, as a Functions worker would see the settings."""
    completed = subprocess.run(
        [sys.executable, "-m", "shared.identity.doctor"], env={**os.environ, **env}, timeout=STEP_TIMEOUT_S, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError("the doctor reported a failing step (see its table above)")
    return "every step of the identity chain passed, through WhoAmI"


@demo_step("functions host")
def functions_host(env: dict[str, str]) -> str:
    """An HTTP round trip through the local host: liveness, then the doctor with the host key."""
    base = env.get("FUNCTIONS_BASE_URL")
    if not base:
        raise RuntimeError("the local Functions host is not running")
    status, _ = _get(f"{base}/api/health/live")
    if status != 200:
        raise RuntimeError(f"GET /api/health/live answered {status}")
    status, _ = _get(f"{base}/api/health/doctor")
    if status != 401:
        raise RuntimeError(f"GET /api/health/doctor without a key answered {status}, expected 401")
    status, body = _get(f"{base}/api/health/doctor", {"x-functions-key": env["FUNCTIONS_HOST_KEY"]})
    report = json.loads(body)
    if status != 200 or not report.get("ok"):
        raise RuntimeError(f"GET /api/health/doctor answered {status}")
    return f"/api/health/live 200, /api/health/doctor 401 without key, 200 with it ({len(report['steps'])} steps ok)"
