"""dvbridge against its peers, side by side on one emulator: records/s (model time), fraction of the ceiling
the emulator's configuration implies, HTTP requests, 429s received and client CPU seconds.

    python -m bench.peers [--records 100000] [--time-scale 0.1] [--time-box <2 windows>]

Bulk paths write ``--records`` account upserts by alternate key: dvbridge's sync engine end to end (CSV in
Azurite -> Dataverse, strategy auto), dvbridge's write planner (auto), Microsoft's Python SDK (PPDC) as its
README shows it (sync client, one UpsertMultiple of 1,000 after another) and tuned (async client, chunks of
1,000 at the dop hint). Request-bound paths (the planner forced to ``$batch`` and to single requests, and a
naive loop of ``PATCH`` over one ``requests.Session``) run for two service-protection windows and report the
last window's rate, the steady state the ceiling describes: 100k single requests at the modelled limit of
20 requests/s would take 83 model minutes. PPDC does not retry 429s;
the harness retries after ``Retry-After``, as a PPDC user must. Then a concurrency sweep of the planner.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import requests

from bench.throughput import DOP, WINDOW_S, Config
from tests.dataverse_api import api_for
from tests.devstack_process import ROOT, DevstackProcess

CHUNK = 1000


@dataclass
class Result:
    name: str
    records: int
    real_s: float
    model_rate: float
    ceiling: float
    fraction: float
    requests: int
    throttles: int
    cpu_s: float


def records(prefix: str, count: int | None, deadline: float | None = None) -> Iterator[dict[str, Any]]:
    i = 0
    while (count is None or i < count) and (deadline is None or time.monotonic() < deadline):
        yield {"accountnumber": f"{prefix}{i:07d}", "name": f"peer bench {i}", "telephone1": f"+44 20 {i:07d}"}
        i += 1


class Harness:
    def __init__(self, stack: DevstackProcess, time_scale: float) -> None:
        self.stack = stack
        self.time_scale = time_scale
        self.api = api_for(stack)

    def counts(self) -> tuple[int, int]:
        by_route = self.api.stats()["requests"]
        total = sum(n for statuses in by_route.values() for n in statuses.values())
        throttled = sum(statuses.get("429", 0) for statuses in by_route.values())
        return total, throttled

    def measure(self, name: str, config: Config, work: Callable[[], Any]) -> Result:
        """``work`` returns a count (rate over the whole run) or completion times (rate over the last
        service-protection window: the steady state the ceiling describes)."""
        self.api.control({"reset_windows": True})
        requests_before, throttles_before = self.counts()
        cpu, started = time.process_time(), time.monotonic()
        outcome = work()
        real_s, cpu_s = time.monotonic() - started, time.process_time() - cpu
        requests_after, throttles_after = self.counts()
        if isinstance(outcome, list):
            window = WINDOW_S * self.time_scale
            end = outcome[-1] if outcome else started
            done = len(outcome)
            model_rate = sum(1 for t in outcome if t >= end - window) / WINDOW_S
        else:
            done = outcome
            model_rate = done / (real_s / self.time_scale)
        ceiling = config.ceiling()
        result = Result(name, done, real_s, model_rate, ceiling, model_rate / ceiling,
                        requests_after - requests_before, throttles_after - throttles_before, cpu_s)  # fmt: skip
        print(json.dumps(asdict(result)), file=sys.stderr, flush=True)
        return result


def dvbridge_client(stack: DevstackProcess, concurrency: int) -> Any:
    from shared.dataverse.client import ClientOptions, DataverseClient
    from shared.identity.worker import token_provider

    options = ClientOptions(max_concurrency=concurrency, verify=stack.env["REQUESTS_CA_BUNDLE"])
    return DataverseClient(stack.env["DATAVERSE_URL"], token_provider(), options=options)


def planner_work(
    stack: DevstackProcess, strategy: str, batch: int, concurrency: int, **limit: Any
) -> Callable[[], int | list[float]]:
    from shared.dataverse.planner import WritePlanner

    def work() -> int | list[float]:
        client = dvbridge_client(stack, concurrency)
        deadline = time.monotonic() + limit["time_box"] if "time_box" in limit else None
        run = WritePlanner(client).write(
            "account", "accounts", records(uuid.uuid4().hex[:5], limit.get("count"), deadline), "upsert",
            key=("accountnumber",), strategy=strategy, batch_size=batch, max_concurrency=concurrency,
        )  # fmt: skip
        times = [time.monotonic() for r in run if r.ok]
        return times if deadline is not None else len(times)

    return work


def sync_work(stack: DevstackProcess, count: int) -> Callable[[], int]:
    from devstack.seed import erp_export
    from shared.sync.engine import SyncContext, run_inbound
    from shared.sync.jobs import InboundJob
    from shared.sync.storage import SyncStorage
    from shared.sync.worker import jobs

    _, accounts_csv, _ = erp_export(accounts=count, contacts=0, bad=0)
    storage = SyncStorage(stack.env["AzureWebJobsStorage"])
    defined = jobs()["accounts"]
    assert isinstance(defined, InboundJob)
    # One instance end to end: above the threshold a run fans out to the queue, which needs the host.
    job = defined.model_copy(update={"fan_out_threshold": count + 1})
    container = storage.container(job.source.container)  # type: ignore[union-attr]
    container.upload_blob(f"{job.source.prefix}bench-{uuid.uuid4().hex[:6]}.csv", accounts_csv, overwrite=True)  # type: ignore[union-attr]

    def work() -> int:
        ctx = SyncContext(storage, dvbridge_client(stack, DOP))
        report = run_inbound("accounts", job, ctx)
        if report.written != count:
            raise RuntimeError(f"the sync wrote {report.written} of {count} rows ({report.status}, {report.error})")
        return int(report.written)

    return work


def naive_work(stack: DevstackProcess, time_box: float) -> Callable[[], list[float]]:
    from shared.identity.worker import dataverse_token

    def work() -> list[float]:
        session = requests.Session()
        session.verify = stack.env["REQUESTS_CA_BUNDLE"]
        headers = {"Authorization": f"Bearer {dataverse_token().value}", "Content-Type": "application/json"}
        base = f"{stack.env['DATAVERSE_URL']}/api/data/v9.2/accounts"
        done: list[float] = []
        for record in records(uuid.uuid4().hex[:5], None, time.monotonic() + time_box):
            key = record.pop("accountnumber")
            while True:
                response = session.patch(f"{base}(accountnumber='{key}')", json=record, headers=headers, timeout=60)
                if response.status_code != 429:
                    break
                time.sleep(float(response.headers.get("Retry-After", "1")))
            if response.status_code < 300:
                done.append(time.monotonic())
        return done

    return work


class DevstackCredential:
    """An azure-core TokenCredential over dvbridge's provider (devstack's Entra): what a PPDC user passes."""

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        from shared.identity.worker import token_provider

        token = token_provider().token_for_invocation()
        return AccessToken(token.value, int(token.expires_on))


class AsyncDevstackCredential(DevstackCredential):
    async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        return DevstackCredential.get_token(self, *scopes, **kwargs)

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> AsyncDevstackCredential:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        return None


def _retry_after(exc: Exception) -> float | None:
    details = getattr(exc, "details", None) or {}
    status = getattr(exc, "status_code", None) or details.get("status_code")
    if status == 429 or "retry_after" in details:
        return float(details.get("retry_after") or 1)
    return None


def ppdc_readme_work(stack: DevstackProcess, count: int) -> Callable[[], int]:
    from PowerPlatform.Dataverse.client import DataverseClient
    from PowerPlatform.Dataverse.models import UpsertItem

    def work() -> int:
        done = 0
        rows = list(records(uuid.uuid4().hex[:5], count))
        with DataverseClient(stack.env["DATAVERSE_URL"], DevstackCredential()) as client:
            for start in range(0, len(rows), CHUNK):
                items: list[UpsertItem | dict[str, Any]] = [
                    UpsertItem(alternate_key={"accountnumber": r.pop("accountnumber")}, record=r)
                    for r in rows[start : start + CHUNK]
                ]
                while True:
                    try:
                        client.records.upsert("account", items)
                        break
                    except Exception as exc:  # PPDC raises on 429; its user must wait and retry
                        wait = _retry_after(exc)
                        if wait is None:
                            raise
                        time.sleep(wait)
                done += len(items)
        return done

    return work


def ppdc_tuned_work(stack: DevstackProcess, count: int) -> Callable[[], int]:
    from PowerPlatform.Dataverse.aio.async_client import AsyncDataverseClient
    from PowerPlatform.Dataverse.models import UpsertItem

    async def run() -> int:
        rows = list(records(uuid.uuid4().hex[:5], count))
        chunks = [[UpsertItem(alternate_key={"accountnumber": r.pop("accountnumber")}, record=r)
                   for r in rows[i : i + CHUNK]] for i in range(0, len(rows), CHUNK)]  # fmt: skip
        gate = asyncio.Semaphore(DOP)
        async with AsyncDataverseClient(stack.env["DATAVERSE_URL"], AsyncDevstackCredential()) as client:

            async def one(items: list[Any]) -> int:
                async with gate:
                    while True:
                        try:
                            await client.records.upsert("account", items)
                            return len(items)
                        except Exception as exc:
                            wait = _retry_after(exc)
                            if wait is None:
                                raise
                            await asyncio.sleep(wait)

            return sum(await asyncio.gather(*(one(c) for c in chunks)))

    return lambda: asyncio.run(run())


def measure(count: int, time_box: float, time_scale: float, sync_count: int) -> dict[str, Any]:
    stack = DevstackProcess(
        ROOT / "devstack" / "scenarios" / "default.yaml", ROOT / ".devstack" / "bench-peers", "bench-peers",
        "--memory", "--time-scale", str(time_scale),
    )  # fmt: skip
    os.environ.update(stack.app_settings())
    os.environ["SSL_CERT_FILE"] = stack.env["REQUESTS_CA_BUNDLE"]  # aiohttp (PPDC async) verifies with it
    ssl._create_default_https_context = ssl.create_default_context
    try:
        h, box = Harness(stack, time_scale), time_box
        bulk, batch, single = Config("bulk", CHUNK, DOP), Config("batch", 50, DOP), Config("single", 1, DOP)
        runs = [
            h.measure("dvbridge sync end to end (CSV in Azurite, auto)", bulk, sync_work(stack, sync_count)),
            h.measure("dvbridge write planner (auto)", bulk, planner_work(stack, "auto", CHUNK, DOP, count=count)),
            h.measure("dvbridge write planner ($batch)", batch, planner_work(stack, "batch", 50, DOP, time_box=box)),
            h.measure("dvbridge write planner (single)", single, planner_work(stack, "single", 1, DOP, time_box=box)),
            h.measure("naive requests loop (PATCH)", Config("single", 1, 1), naive_work(stack, time_box)),
            h.measure("PPDC as its README shows it", Config("bulk", CHUNK, 1), ppdc_readme_work(stack, count)),
            h.measure("PPDC tuned (async, dop hint)", bulk, ppdc_tuned_work(stack, count)),
        ]  # fmt: skip
        sweep = [
            h.measure(f"dvbridge planner bulk C={c}", Config("bulk", CHUNK, c),
                      planner_work(stack, "bulk", CHUNK, c, time_box=time_box))
            for c in sorted({1, 2, 4, DOP, 2 * DOP})
        ]  # fmt: skip
    finally:
        stack.stop()
    return {"time_scale": time_scale, "records": count, "sync_records": sync_count, "time_box_s": time_box,
            "runs": [asdict(r) for r in runs], "sweep": [asdict(r) for r in sweep]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--sync-records", type=int, default=100_000)
    parser.add_argument("--time-box", type=float, default=None, help="real seconds (default: two windows)")
    parser.add_argument("--time-scale", type=float, default=0.1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    time_box = args.time_box or 2 * WINDOW_S * args.time_scale
    result = measure(args.records, time_box, args.time_scale, args.sync_records)
    if args.json:
        print(json.dumps(result))
        return
    for row in [*result["runs"], *result["sweep"]]:
        print(
            f"{row['name']:<50} {row['records']:>7} rec {row['model_rate']:8.1f} rec/s (model) {row['fraction']:6.1%}"
            f" of {row['ceiling']:7.1f}; {row['requests']} requests, {row['throttles']} 429s, {row['cpu_s']:.1f} s CPU"
        )


if __name__ == "__main__":
    main()
