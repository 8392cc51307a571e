"""Acceptance 3 of the emulator: sustained load settles at the limit the formula predicts.

Formula (the service-protection bound for one application user), per user and server, in model time:
  requests/s   <= requests_per_window / window
  records/s    <= (execution_ms_per_window / window) / server_ms_per_request * records_per_request
Real time = model time x time_scale. Clients honour Retry-After, as a well-behaved client must.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable

import pytest

from tests.conftest import SCENARIOS
from tests.dataverse_api import DataverseApi, api_for
from tests.devstack_process import DevstackProcess

pytestmark = pytest.mark.integration
logger = logging.getLogger("tests.ceiling")

TIME_SCALE = 0.05
WINDOW_S = 300 * TIME_SCALE  # 15 s real
WARMUP_S = WINDOW_S  # the first window is a burst; the steady state follows it
MEASURE_S = 2 * WINDOW_S
TOLERANCE = 0.10


def sustain(call: Callable[[], object], clients: int, duration_s: float) -> list[float]:
    """Run ``clients`` loops for ``duration_s``; return completion times of successful requests."""
    done: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + duration_s

    def loop() -> None:
        while time.monotonic() < stop:
            response = call()
            if response.status_code < 300:  # type: ignore[attr-defined]
                with lock:
                    done.append(time.monotonic())
            elif response.status_code == 429:  # type: ignore[attr-defined]
                time.sleep(min(float(response.headers["Retry-After"]), max(0.0, stop - time.monotonic())))  # type: ignore[attr-defined]
            else:
                raise AssertionError(response.text)  # type: ignore[attr-defined]

    threads = [threading.Thread(target=loop) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done


@pytest.fixture(scope="module")
def ceiling_devstack(tmp_path_factory: pytest.TempPathFactory):
    process = DevstackProcess(SCENARIOS / "ceiling.yaml", tmp_path_factory.mktemp("ceiling"), "ceiling", "--no-azurite")
    yield process
    process.stop()


def measure(api: DataverseApi, call: Callable[[], object], clients: int) -> float:
    started = time.monotonic()
    done = sustain(call, clients, WARMUP_S + MEASURE_S)
    window_start = started + WARMUP_S
    return sum(1 for t in done if t >= window_start) / MEASURE_S


def test_single_requests_settle_at_the_request_count_limit(ceiling_devstack, app_env) -> None:
    app_env(
        ceiling_devstack,
        DATAVERSE_CLIENT_ID="4c6e8a0b-0000-4000-8000-000000000001",
        DATAVERSE_CLIENT_SECRET_NAME="single-secret",
    )
    api = api_for(ceiling_devstack)
    predicted = 300 / 300 / TIME_SCALE  # requests/s real
    measured = measure(api, lambda: api("GET", "WhoAmI"), clients=4)
    logger.info("single requests: measured %.2f/s, formula %.2f/s", measured, predicted)
    assert abs(measured - predicted) <= TOLERANCE * predicted, (measured, predicted)


def test_upsert_multiple_settles_at_the_execution_time_limit(ceiling_devstack, app_env) -> None:
    app_env(
        ceiling_devstack,
        DATAVERSE_CLIENT_ID="4c6e8a0b-0000-4000-8000-000000000002",
        DATAVERSE_CLIENT_SECRET_NAME="bulk-secret",
    )
    api = api_for(ceiling_devstack)
    batch_size = 100
    server_ms = 100 + 6.5 * batch_size  # bulk cost: fixed + per record
    predicted = (30000 / 300) / server_ms * batch_size / TIME_SCALE  # records/s real
    prefix = uuid.uuid4().hex[:6]
    counter = iter(range(10**9))

    def upsert() -> object:
        n = next(counter)
        targets = [
            {
                "@odata.type": "Microsoft.Dynamics.CRM.account",
                "name": f"c{n}-{i}",
                "@odata.id": f"accounts(accountnumber='{prefix}{n % 50}-{i}')",
            }
            for i in range(batch_size)
        ]
        return api("POST", "accounts/Microsoft.Dynamics.CRM.UpsertMultiple", json={"Targets": targets})

    measured = measure(api, upsert, clients=2) * batch_size
    logger.info("UpsertMultiple x%d: measured %.1f records/s, formula %.1f records/s", batch_size, measured, predicted)
    assert abs(measured - predicted) <= TOLERANCE * predicted, (measured, predicted)
    assert api.stats()["counters"].get("throttled 0x80072321", 0) > 0  # it was the execution-time limit that bound
