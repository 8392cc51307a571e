"""Acceptance 5 of the emulator: 20 concurrent clients for 60 s at time_scale 0.05 leave it responsive,
and its counters agree with what the clients saw and with the store."""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections import Counter

import pytest

from tests.dataverse_api import DataverseApi, api_for
from tests.devstack_process import ROOT, DevstackProcess

pytestmark = pytest.mark.integration
logger = logging.getLogger("tests.soak")

CLIENTS = 20
DURATION_S = 60


@pytest.fixture(scope="module")
def soak_devstack(tmp_path_factory: pytest.TempPathFactory):
    process = DevstackProcess(
        ROOT / "devstack" / "scenarios" / "default.yaml",
        tmp_path_factory.mktemp("soak"),
        "soak",
        "--no-azurite",
        "--time-scale",
        "0.05",
    )
    yield process
    process.stop()


def client_loop(api: DataverseApi, seed: int, stop_at: float, tally: Counter[str], lock: threading.Lock) -> None:
    rng = random.Random(seed)
    mine: list[str] = []
    while time.monotonic() < stop_at:
        choice = rng.random()
        if choice < 0.45 or not mine:
            r = api("POST", "accounts", json={"name": f"soak-{seed}-{uuid.uuid4().hex[:6]}"})
            op = "create"
            if r.status_code == 204:
                mine.append(r.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")"))
        elif choice < 0.65:
            r = api("PATCH", f"accounts({rng.choice(mine)})", json={"telephone1": str(rng.randint(0, 9999))})
            op = "update"
        elif choice < 0.85:
            r = api(
                "GET",
                "accounts",
                params={"$select": "name", "$top": "5", "$filter": f"startswith(name,'soak-{seed}-')"},
            )
            op = "query"
        else:
            r = api("DELETE", f"accounts({mine.pop(rng.randrange(len(mine)))})")
            op = "delete"
        with lock:
            tally[f"{op} {r.status_code}"] += 1
        if r.status_code == 429:
            time.sleep(float(r.headers["Retry-After"]))
        elif r.status_code >= 400:
            raise AssertionError(f"{op}: {r.status_code} {r.text}")


def test_twenty_clients_for_a_minute(soak_devstack, app_env) -> None:
    app_env(soak_devstack)
    probe = api_for(soak_devstack)
    before = probe.stats()
    accounts_before = before.get("records_per_table", {}).get("account", 0)
    ops_before = before["counters"].get("operations executed", 0)

    tally: Counter[str] = Counter()
    lock = threading.Lock()
    stop_at = time.monotonic() + DURATION_S
    threads = [
        threading.Thread(target=client_loop, args=(api_for(soak_devstack), seed, stop_at, tally, lock))
        for seed in range(CLIENTS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=DURATION_S + 60)
    assert not any(t.is_alive() for t in threads)

    started = time.monotonic()
    assert probe("GET", "WhoAmI").status_code == 200
    responsive_s = time.monotonic() - started
    after = probe.stats()
    succeeded = sum(n for key, n in tally.items() if int(key.split()[1]) < 300)
    logger.info("soak: %s; WhoAmI after load in %.3f s", dict(tally), responsive_s)
    assert responsive_s < 1.0
    assert succeeded > 1000  # the load was real
    # Counters agree with the clients (the probe's own WhoAmI adds one) and with the store.
    assert after["counters"]["operations executed"] - ops_before == succeeded + 1
    assert after["records_per_table"]["account"] - accounts_before == tally["create 204"] - tally["delete 204"]
    listed = 0
    link: str | None = f"{probe.root}/accounts?$select=accountid"
    while link:
        page = probe("GET", link).json()
        listed += len(page["value"])
        link = page.get("@odata.nextLink")
    assert listed == after["records_per_table"]["account"]
