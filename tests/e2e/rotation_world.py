"""What the credential-rotation e2e tests share: a world whose Dataverse secret expires in 25 days, a host that
runs the rotation sweep every two seconds with short caches and grace, and views of devstack's state: Entra's
credentials (their values as SHA-256 only), Key Vault's latest version, a fresh token request with any value,
and a sampler that asks for a token with Key Vault's current value every second."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
import yaml

from tests.devstack_process import ROOT, DevstackProcess
from tests.host_process import HostProcess
from tests.integration.test_expiry import received

APP = "dvbridge-sync"
SECRET = "dataverse-client-secret"
CERTIFICATE = "dataverse-cert"
ROTATION_ADMIN = "6d2f8b4a-9c1e-4a3b-8d7f-1e5c9a3b7d31"  # default.yaml's rotation-admin (vault-wide Officer)
NEVER = "0 0 0 1 1 *"
GRACE_S = 8
SECRET_TTL_S = 2
VERIFY_DEADLINE_S = 20
SECRET_STEPS = ["planned", "added", "stored", "verified", "switched", "retired"]
CERTIFICATE_STEPS = ["planned", "added", "verified", "switched", "retired"]
HOST_SETTINGS = {
    "ROTATION_SCHEDULE": "*/2 * * * * *",
    "SECRET_CACHE_TTL_S": str(SECRET_TTL_S),
    "ROTATION_GRACE_S": str(GRACE_S),
    "ROTATION_VERIFY_DEADLINE_S": str(VERIFY_DEADLINE_S),
    "ROTATION_RETRY_AFTER_S": "3600",
    "SYNC_LEASE_DURATION_S": "15",  # the shortest blob lease: a killed host's rotation is free again this fast
    "EXPIRY_SWEEP_SCHEDULE": NEVER,
    "WEBHOOK_RECONCILE_SCHEDULE": NEVER,
    "WEBHOOK_WATCH_SCHEDULE": NEVER,
    "SYNC_SCHEDULE_ACCOUNTS": NEVER,
    "SYNC_SCHEDULE_CONTACTS": NEVER,
    "SYNC_SCHEDULE_SHIPMENTS_OUT": NEVER,
}


def scenario(directory: Path, *, days_left: int = 25, certificate: bool = False) -> Path:
    """default.yaml with the Dataverse secret (in Entra and in Key Vault) ending in ``days_left`` days, or with
    the certificate as the Dataverse credential."""
    world = yaml.safe_load((ROOT / "devstack" / "scenarios" / "default.yaml").read_text())
    app = next(a for a in world["applications"] if a["name"] == APP)
    next(p for p in app["password_credentials"] if p["display_name"] == "primary")["end"] = f"+{days_left}d"
    next(s for s in world["vault"]["secrets"] if s["name"] == SECRET)["expires"] = f"+{days_left}d"
    if certificate:
        del world["settings"]["DATAVERSE_CLIENT_SECRET_NAME"]
        world["settings"]["DATAVERSE_CERTIFICATE_NAME"] = CERTIFICATE
    path = directory / ("rotation-certificate.yaml" if certificate else "rotation.yaml")
    path.write_text(yaml.safe_dump(world, sort_keys=False))
    return path


def start_stack(tmp: Path, name: str, **kwargs: Any) -> DevstackProcess:
    return DevstackProcess(scenario(tmp, **kwargs), tmp / "state", name, "--memory", "--time-scale", "0.05")


def start_host(stack: DevstackProcess, name: str, port: int = 0, **settings: str) -> HostProcess:
    return HostProcess(stack, name, {**HOST_SETTINGS, **settings}, port=port)


def entra_view(stack: DevstackProcess) -> dict[str, Any]:
    """devstack's view of the app registration: passwords (value_sha256, never the value) and keys."""
    return dict(stack._call("entra", f"/_devstack/applications/{APP}"))


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def vault_client(stack: DevstackProcess) -> Any:
    from azure.identity import ManagedIdentityCredential
    from azure.keyvault.secrets import SecretClient

    return SecretClient(stack.env["KEY_VAULT_URL"], ManagedIdentityCredential(client_id=ROTATION_ADMIN),
                        verify_challenge_resource=False)  # fmt: skip


def token_error(stack: DevstackProcess, secret: str) -> str | None:
    """A token request with ``secret`` from a fresh MSAL app (no cache): None when Entra issues one."""
    import msal

    app = msal.ConfidentialClientApplication(
        stack.env["DATAVERSE_CLIENT_ID"], client_credential=secret, instance_discovery=False,
        authority=f"{stack.env['ENTRA_AUTHORITY_HOST']}/{stack.env['DATAVERSE_TENANT_ID']}",
        token_cache=msal.TokenCache(),
    )  # fmt: skip
    result = app.acquire_token_for_client([f"{stack.env['DATAVERSE_URL']}/.default"])
    return None if "access_token" in result else str(result.get("error_description", result))[:200]


class Sampler(threading.Thread):
    """Every second: Key Vault's current value of the secret, and a fresh token request with it."""

    def __init__(self, stack: DevstackProcess, interval_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.stack, self.interval_s = stack, interval_s
        self.samples = 0
        self.failures: list[str] = []
        self._stop = threading.Event()

    def run(self) -> None:
        client = vault_client(self.stack)
        while not self._stop.wait(self.interval_s):
            try:
                value = client.get_secret(SECRET).value or ""
            except Exception as exc:  # Key Vault itself failing is not what the sampler measures
                self.failures.append(f"{time.strftime('%X')} Key Vault read: {type(exc).__name__}")
                continue
            error = token_error(self.stack, value)
            self.samples += 1
            if error is not None:
                self.failures.append(f"{time.strftime('%X')} {error}")

    def stop(self) -> None:
        self._stop.set()
        self.join(timeout=30)


def rotation(host: HostProcess) -> dict[str, Any]:
    answer = host.get("/api/rotation", timeout=30)
    answer.raise_for_status()
    return dict(answer.json().get("rotation") or {})


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = 90, every_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (requests.RequestException, OSError) as exc:  # a host restarting
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(every_s)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def phase_is(host: HostProcess, *phases: str) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        state = rotation(host)
        return state if state.get("phase") in phases else None

    return check


def rotation_notices(
    stack: DevstackProcess, *, until: str | None = None, after: int = 0, timeout_s: float = 15
) -> list[dict[str, Any]]:
    """The rotation notices the JSON channel received; with ``until``, once one of that level has arrived after
    the first ``after`` (a step's state is saved before its notice is sent: a test that saw the phase may be
    ahead of it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        notices = [a for a in received(stack) if a.get("kind") == "rotation"]
        if until is None or any(n.get("level") == until for n in notices[after:]) or time.monotonic() > deadline:
            return notices
        time.sleep(0.2)


def run_timer(host: HostProcess, function: str) -> None:
    """Run a timer function now (the host's admin API), and wait for its invocation to finish."""
    before = sum(f"Executed 'Functions.{function}'" in line for line in host.lines)
    answer = host.post(f"/admin/functions/{function}", json={}, timeout=30, key=host.master_key())
    assert answer.status_code == 202, answer.text
    wait_for(f"{function} to finish",
             lambda: sum(f"Executed 'Functions.{function}'" in line for line in host.lines) > before)  # fmt: skip
