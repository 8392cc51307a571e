"""Identity calls per invocation: 100 warm invocations of a sync function through the local host.

    python -m bench.calls [--invocations 100]

Runs ``POST /api/sync/accounts/run`` (the accounts job, nothing new to read) through the local Functions
host, then reads devstack's own counters: managed-identity token requests, Key Vault reads and Entra token
requests. Within one token lifetime each should be one for the whole series, whatever the count.
"""

from __future__ import annotations

import json
from typing import Any

import requests

from bench.cli import run_benchmark
from tests.devstack_process import ROOT, DevstackProcess


def count(stack: DevstackProcess) -> dict[str, Any]:
    mi, vault, entra = stack.stats("mi"), stack.stats("keyvault"), stack.stats("entra")
    credential_path = f"GET /secrets/{stack.env['DATAVERSE_CLIENT_SECRET_NAME']}/"
    return {
        "managed_identity_token_requests": sum(mi["requests"].get("GET /msi/token", {}).values()),
        # The credential's reads; the alert channels' URLs may be read too (the expiry event at start-up).
        "key_vault_reads": vault["paths"].get(credential_path, {}).get("200", 0),
        "entra_token_requests": sum(entra["requests"].get("POST /{tenant}/oauth2/v2.0/token", {}).values()),
        "key_vault_paths": {path: by_status for path, by_status in vault["paths"].items()},
    }  # fmt: skip


def measure(invocations: int) -> dict[str, Any]:
    stack = DevstackProcess(
        ROOT / "devstack" / "scenarios" / "default.yaml", ROOT / ".devstack" / "bench-calls", "bench-calls",
        "--host", "--host-port", "0", "--memory", "--time-scale", "0",
    )  # fmt: skip
    try:
        keys = json.loads((stack.directory / "host-keys.json").read_text())
        url = f"{stack.env['FUNCTIONS_BASE_URL']}/api/sync/accounts/run"
        headers = {"x-functions-key": keys["functions"]["sync_run_now"]["default"]}
        stack.reset_stats()
        statuses = [requests.post(url, headers=headers, timeout=120).status_code for _ in range(invocations)]
        if set(statuses) != {200}:
            raise RuntimeError(f"sync runs answered {sorted(set(statuses))}")
        return {"invocations": invocations, **count(stack)}
    finally:
        stack.stop()


def main() -> None:
    run_benchmark(
        __doc__, lambda args: measure(args.invocations), describe, {"--invocations": {"type": int, "default": 100}}
    )


def describe(result: dict[str, Any]) -> str:
    return (
        f"{result['invocations']} warm sync invocations through the host: managed-identity token requests"
        f" {result['managed_identity_token_requests']}, Key Vault reads of the credential {result['key_vault_reads']},"
        f" Entra token requests {result['entra_token_requests']} (Key Vault by path: {result['key_vault_paths']})"
    )


if __name__ == "__main__":
    main()
