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
the harness retries after ``Retry-After``, as a PPDC user must. Then a concurrency sweep of the planner, and
the production-like scenario (two web servers, 1 % of requests throttled; see ``production_like``).
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

from bench.cli import run_benchmark
from bench.cpu_window import CpuSampler
from bench.throughput import DOP, EXECUTION_MS_PER_WINDOW, REQUESTS_PER_WINDOW, WINDOW_S, Config
from tests.dataverse_api import api_for
from tests.devstack_process import ROOT, DevstackProcess

CHUNK = 1000
PRODUCTION_SERVERS = 2
PRODUCTION_WINDOW_S = 60.0
PRODUCTION_THROTTLE_RATE = 0.01
PRODUCTION_RETRY_AFTER_S = 2
PRODUCTION_TIME_SCALE = 0.25  # two 60 s windows last 30 s of real time


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
    # CPU over the window the rate is measured on (bench.cpu_window.CpuWindow.as_dict()) and whether the
    # machine or one process was saturated over it, so the fraction is the machine's, not the client's.
    cpu: dict[str, Any]
    saturated: bool


def records(prefix: str, count: int | None, deadline: float | None = None) -> Iterator[dict[str, Any]]:
    i = 0
    while (count is None or i < count) and (deadline is None or time.monotonic() < deadline):
        yield {"accountnumber": f"{prefix}{i:07d}", "name": f"peer bench {i}", "telephone1": f"+44 20 {i:07d}"}
        i += 1


class Harness:
    def __init__(self, stack: DevstackProcess, time_scale: float, *, window_s: float = WINDOW_S) -> None:
        self.stack = stack
        self.time_scale = time_scale
        self.window_s = window_s
        self.api = api_for(stack)

    def counts(self) -> tuple[int, int]:
        by_route = self.api.stats()["requests"]
        total = sum(n for statuses in by_route.values() for n in statuses.values())
        throttled = sum(statuses.get("429", 0) for statuses in by_route.values())
        return total, throttled

    def measure(self, name: str, config: Config, work: Callable[[], Any], *, ceiling: float | None = None) -> Result:
        """``work`` returns a count (rate over the whole run) or completion times (rate over the last
        service-protection window: the steady state the ceiling describes); the CPU is read over the same."""
        self.api.control({"reset_windows": True})
        requests_before, throttles_before = self.counts()
        with CpuSampler(self.stack.proc.pid) as sampler:
            cpu, started = time.process_time(), time.monotonic()
            outcome = work()
            real_s, cpu_s = time.monotonic() - started, time.process_time() - cpu
        requests_after, throttles_after = self.counts()
        if isinstance(outcome, list):
            window = self.window_s * self.time_scale
            end = outcome[-1] if outcome else started
            done = len(outcome)
            model_rate = sum(1 for t in outcome if t >= end - window) / self.window_s
            used = sampler.window(end - window, end)
        else:
            done = outcome
            model_rate = done / (real_s / self.time_scale)
            used = sampler.window()
        ceiling = ceiling or config.ceiling()
        result = Result(name, done, real_s, model_rate, ceiling, model_rate / ceiling,
                        requests_after - requests_before, throttles_after - throttles_before, cpu_s,
                        used.as_dict(), used.saturated)  # fmt: skip
        print(json.dumps(asdict(result)), file=sys.stderr, flush=True)
        return result


def dvbridge_client(stack: DevstackProcess, concurrency: int) -> Any:
    from shared.composition import token_provider
    from shared.dataverse.client import ClientOptions, DataverseClient

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
    from shared.storage import Storage
    from shared.sync.engine import SyncContext, run_inbound
    from shared.sync.jobs import InboundJob
    from shared.sync.jobs_file import jobs

    _, accounts_csv, _ = erp_export(accounts=count, contacts=0, bad=0)
    storage = Storage(stack.env["AzureWebJobsStorage"])
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
    from shared.composition import dataverse_token

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

        from shared.composition import token_provider

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


def ppdc_url(stack: DevstackProcess) -> str:
    """The organisation URL by name, as in production (``org.crm.dynamics.com``): aiohttp's cookie jar
    ignores cookies from IP-address hosts, which would hide PPDC's affinity cookie."""
    return str(stack.env["DATAVERSE_URL"]).replace("://127.0.0.1:", "://localhost:")


def _upsert_items(rows: list[dict[str, Any]]) -> list[Any]:
    from PowerPlatform.Dataverse.models import UpsertItem

    return [UpsertItem(alternate_key={"accountnumber": r.pop("accountnumber")}, record=r) for r in rows]


def _chunks(count: int | None, deadline: float | None) -> Iterator[list[dict[str, Any]]]:
    rows = records(uuid.uuid4().hex[:5], count, deadline)
    while chunk := [row for _, row in zip(range(CHUNK), rows, strict=False)]:
        yield chunk


def ppdc_readme_work(stack: DevstackProcess, count: int | None, time_box: float | None = None) -> Callable[[], Any]:
    """The sync client, one UpsertMultiple of 1,000 after another; 429s retried after Retry-After."""
    from PowerPlatform.Dataverse.client import DataverseClient

    def work() -> int | list[float]:
        deadline = time.monotonic() + time_box if time_box is not None else None
        times: list[float] = []
        with DataverseClient(ppdc_url(stack), DevstackCredential()) as client:
            for rows in _chunks(count, deadline):
                items = _upsert_items(rows)
                while True:
                    try:
                        client.records.upsert("account", items)
                        break
                    except Exception as exc:  # PPDC raises on 429; its user must wait and retry
                        wait = _retry_after(exc)
                        if wait is None:
                            raise
                        time.sleep(wait)
                times.extend([time.monotonic()] * len(items))
        return times if deadline is not None else len(times)

    return work


def ppdc_tuned_work(
    stack: DevstackProcess, count: int | None, time_box: float | None = None, concurrency: int = DOP
) -> Callable[[], Any]:
    """The async client with ``concurrency`` UpsertMultiple requests of 1,000 in flight (the dop hint)."""
    from PowerPlatform.Dataverse.aio.async_client import AsyncDataverseClient

    async def run() -> int | list[float]:
        deadline = time.monotonic() + time_box if time_box is not None else None
        chunks = _chunks(count, deadline)
        times: list[float] = []
        async with AsyncDataverseClient(ppdc_url(stack), AsyncDevstackCredential()) as client:

            async def worker() -> None:
                for rows in chunks:  # workers share one generator: each takes the next chunk
                    items = _upsert_items(rows)
                    while True:
                        try:
                            await client.records.upsert("account", items)
                            break
                        except Exception as exc:
                            wait = _retry_after(exc)
                            if wait is None:
                                raise
                            await asyncio.sleep(wait)
                    times.extend([time.monotonic()] * len(items))

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        return sorted(times) if deadline is not None else len(times)

    return lambda: asyncio.run(run())


def production_like(stack: DevstackProcess, time_scale: float, restore_time_scale: float) -> dict[str, Any]:
    """Throttling and a high dop hint together, as in production: two web servers (so ``x-ms-dop-hint`` is 8), 1 % of
    bulk requests throttled with ``Retry-After``, each client at its best concurrency for two windows.

    Every limit is enforced per web server. dvbridge refuses the affinity cookie and spreads its requests;
    PPDC's HTTP sessions keep the cookie and stay on one server, where the same concurrency runs into the
    execution-time limit. The service-protection window is shortened to 60 s with the same per-second limits
    (1,200 requests and 240 s of execution per window), so two windows fit in the run; the ceiling formula
    depends only on those rates."""
    scale = WINDOW_S / PRODUCTION_WINDOW_S
    api = api_for(stack)
    api.control({
        "limits": {"web_servers": PRODUCTION_SERVERS, "window_s": PRODUCTION_WINDOW_S,
                   "requests_per_window": int(REQUESTS_PER_WINDOW / scale),
                   "execution_ms_per_window": EXECUTION_MS_PER_WINDOW / scale, "time_scale": time_scale},
        "faults": [{"kind": "429", "route": "POST .*UpsertMultiple", "rate": PRODUCTION_THROTTLE_RATE,
                    "code": "0x80072321", "retry_after_s": PRODUCTION_RETRY_AFTER_S}],
    })  # fmt: skip
    hint = 4 * PRODUCTION_SERVERS
    h, box = Harness(stack, time_scale, window_s=PRODUCTION_WINDOW_S), 2 * PRODUCTION_WINDOW_S * time_scale
    # Dataverse's ceiling for the user: each server at the per-server optimum, so every row shares it.
    ceiling = PRODUCTION_SERVERS * Config("bulk", CHUNK, hint // PRODUCTION_SERVERS).ceiling()
    try:
        runs = [
            h.measure("dvbridge write planner (auto, dop hint)", Config("bulk", CHUNK, hint),
                      planner_work(stack, "auto", CHUNK, hint, time_box=box), ceiling=ceiling),
            h.measure("PPDC as its README shows it", Config("bulk", CHUNK, 1),
                      ppdc_readme_work(stack, None, time_box=box), ceiling=ceiling),
            h.measure("PPDC tuned (async, dop hint)", Config("bulk", CHUNK, hint),
                      ppdc_tuned_work(stack, None, time_box=box, concurrency=hint), ceiling=ceiling),
        ]  # fmt: skip
    finally:
        api.control({"faults": [], "limits": {"web_servers": 1, "window_s": WINDOW_S,
                     "requests_per_window": REQUESTS_PER_WINDOW, "execution_ms_per_window": EXECUTION_MS_PER_WINDOW,
                     "time_scale": restore_time_scale}})  # fmt: skip
    return {"web_servers": PRODUCTION_SERVERS, "dop_hint": hint, "window_s": PRODUCTION_WINDOW_S,
            "throttle_rate": PRODUCTION_THROTTLE_RATE, "retry_after_s": PRODUCTION_RETRY_AFTER_S,
            "time_scale": time_scale, "time_box_s": box, "ceiling": ceiling,
            "runs": [asdict(r) for r in runs]}  # fmt: skip


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
        production = production_like(stack, PRODUCTION_TIME_SCALE, time_scale)
    finally:
        stack.stop()
    return {"time_scale": time_scale, "records": count, "sync_records": sync_count, "time_box_s": time_box,
            "runs": [asdict(r) for r in runs], "sweep": [asdict(r) for r in sweep],
            "production": production}  # fmt: skip


def main() -> None:
    options: dict[str, dict[str, Any]] = {
        "--records": {"type": int, "default": 100_000},
        "--sync-records": {"type": int, "default": 100_000},
        "--time-box": {"type": float, "default": None, "help": "real seconds (default: two windows)"},
        "--time-scale": {"type": float, "default": 0.1},
    }

    def run(args: argparse.Namespace) -> dict[str, Any]:
        time_box = args.time_box or 2 * WINDOW_S * args.time_scale
        return measure(args.records, time_box, args.time_scale, args.sync_records)

    run_benchmark(__doc__, run, describe, options)


def describe(result: dict[str, Any]) -> str:
    return "\n".join(
        f"{row['name']:<50} {row['records']:>7} rec {row['model_rate']:8.1f} rec/s (model) {row['fraction']:6.1%}"
        f" of {row['ceiling']:7.1f}; {row['requests']} requests, {row['throttles']} 429s, {row['cpu_s']:.1f} s CPU;"
        f" cores client {row['cpu']['client_cores']:.2f}, devstack {row['cpu']['devstack_cores']:.2f}, other"
        f" {row['cpu']['other_cores']:.2f}, machine {row['cpu']['machine_busy']:.0%}"
        + (f" ⚠ saturated: {row['cpu']['reason']}" if row["saturated"] else "")
        for row in [*result["runs"], *result["sweep"], *result["production"]["runs"]]
    )


if __name__ == "__main__":
    main()
