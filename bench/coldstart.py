"""Cold start through the worker: a new worker process indexing ``function_app.py`` vs one indexing an app
that only imports ``azure.functions``, both on the pinned runtime.

    python -m bench.coldstart [--runs 20]

When an instance starts, the host starts a Python worker, sends ``WorkerInitRequest`` (the runtime imports
``function_app`` and indexes it then) and ``FunctionsMetadataRequest``, then loads each function. Each
sample is a fresh worker started by devstack's host side (``devstack.worker_channel``) and timed from process
start to the last ``FunctionLoadResponse``; the two apps alternate so that machine noise hits both alike;
medians and their ratio are reported. Everything heavy in the app (SDKs, requests, pydantic models of the
jobs file) must load lazily, on first use, for the ratio to stay low.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from bench.cli import run_benchmark
from devstack.host import load_app_settings
from devstack.worker_channel import WorkerChannel
from tests.devstack_process import ROOT

TARGET_RATIO = 1.3
BARE_APP = """import azure.functions as func

app = func.FunctionApp()


@app.route(route="ping")
def ping(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("pong")
"""


async def sample(app_dir: Path) -> tuple[float, int]:
    """Seconds from starting a worker to every function loaded, and how many functions it reported."""
    settings, _ = load_app_settings(app_dir)
    channel = WorkerChannel(app_dir, settings, lambda _line: None)
    started = time.perf_counter()
    metadata = await channel.start()
    elapsed = time.perf_counter() - started
    await channel.stop()
    return elapsed, len(metadata)


async def _measure(runs: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        bare = Path(tmp)
        (bare / "function_app.py").write_text(BARE_APP)
        (bare / "host.json").write_text('{"version": "2.0"}')
        await sample(ROOT)  # warm the page cache and .pyc files once
        baseline, indexing, functions = [], [], 0
        for _ in range(runs):
            baseline.append((await sample(bare))[0])
            seconds, functions = await sample(ROOT)
            indexing.append(seconds)
    base_ms, index_ms = statistics.median(baseline) * 1000, statistics.median(indexing) * 1000
    return {
        "runs": runs,
        "functions": functions,
        "azure_functions_ms": base_ms,
        "indexing_ms": index_ms,
        "ratio": index_ms / base_ms,
    }


def measure(runs: int) -> dict[str, float]:
    return asyncio.run(_measure(runs))


def main() -> None:
    run_benchmark(__doc__, lambda args: measure(args.runs), describe, {"--runs": {"type": int, "default": 20}})


def describe(result: dict[str, float]) -> str:
    return (
        f"{result['runs']:.0f} fresh workers each (start -> metadata -> loaded): an app importing only"
        f" azure.functions {result['azure_functions_ms']:.0f} ms, function_app ({result['functions']:.0f}"
        f" functions) {result['indexing_ms']:.0f} ms (medians) -> {result['ratio']:.2f}x (target <= {TARGET_RATIO}x)"
    )


if __name__ == "__main__":
    main()
