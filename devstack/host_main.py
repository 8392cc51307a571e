"""``python -m devstack host --env-file .devstack/env``: a Functions host as its own process, against an
already running devstack. Several can share one Azurite (fan-out), and one can be killed mid-run
without taking the emulators' state with it."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

from devstack.common import add_read_timeout_arguments, read_timeouts_from, server_config


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack host", description=__doc__)
    parser.add_argument("--env-file", required=True)
    parser.add_argument("--app-dir", default=".")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--state-dir", help="where host keys live (default: next to the env file)")
    add_read_timeout_arguments(parser)
    args = parser.parse_args(argv)
    env_file = Path(args.env_file).resolve()
    for line in env_file.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            os.environ[key.strip()] = value  # devstack's endpoints win over a stale shell setting
    return asyncio.run(_serve(args, env_file))


async def _serve(args: argparse.Namespace, env_file: Path) -> int:
    from devstack.__main__ import GRACEFUL_SHUTDOWN_S, LOOPBACK, _bind, _QuietServer
    from devstack.host import HOST_LOG, FunctionLoadError, LocalHost

    HOST_LOG.hold()  # the first stdout line is the ready line; the invocation log follows it
    timeouts = read_timeouts_from(args)
    sock = _bind(args.port)
    base_url = f"http://{LOOPBACK}:{sock.getsockname()[1]}"
    state = Path(args.state_dir).resolve() if args.state_dir else env_file.parent
    storage = os.environ.get("AzureWebJobsStorage")  # noqa: SIM112 - the platform's spelling
    host = LocalHost(Path(args.app_dir).resolve(), state, storage=storage, base_url=base_url)
    try:
        await host.index()
    except FunctionLoadError as exc:
        print(f"host failed: the app cannot be indexed: {exc}", flush=True)
        HOST_LOG.release()
        return 1
    server = _QuietServer(
        server_config(
            host.asgi(),
            timeouts,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        )
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.02)
    await host.start()
    print(f"host ready {base_url} {host.keys.host}", flush=True)
    HOST_LOG.release()
    await task
    await host.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
