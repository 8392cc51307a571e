"""``python -m devstack up | run``: start the local identity world on 127.0.0.1.

* ``up``  starts the servers, writes ``<dir>/env`` and prints ``devstack ready``; serves until
  SIGINT/SIGTERM.
* ``run`` also starts the local Functions host, prints a banner, runs each capability's first run
  (``devstack/demo.py``) and serves until Ctrl-C; with ``--once`` it stops after the first runs.
* ``demo`` is ``run`` without the waiting: first runs, a summary table, exit 0 only if all passed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import ssl
import sys
import threading
import urllib.request
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette

from devstack.alerts import AlertSink, alerts_app
from devstack.appinsights import appinsights_app, build_appinsights
from devstack.arm import ArmContext, arm_app
from devstack.azurite import Azurite, start_azurite
from devstack.common import add_read_timeout_arguments, read_timeouts_from, server_config
from devstack.dataverse.build import build_dataverse
from devstack.dataverse.server import dataverse_app
from devstack.demo import render, run_steps
from devstack.entra import EntraContext, entra_app, managed_identity_app
from devstack.host import HOST_LOG, FunctionLoadError, LocalHost, describe_banner
from devstack.keyvault import VaultContext, keyvault_app, vault_resource_id
from devstack.stats import Stats
from devstack.tls import TlsFiles, create_tls
from devstack.tokens import TokenIssuer
from devstack.vault_events import VaultEventEmitter
from devstack.world import SCENARIO_DIR, build_world, load_scenario

READY_LINE = "devstack ready"
READY_TIMEOUT_S = 30
# Idle TLS keep-alive connections never answer close_notify; don't wait for them on shutdown.
GRACEFUL_SHUTDOWN_S = 2
LOOPBACK = "127.0.0.1"


class _ExpectedShutdownFilter(logging.Filter):
    """Idle keep-alive connections make uvicorn report the bounded shutdown we asked for; that is expected."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "timeout graceful shutdown exceeded" not in record.getMessage()


logging.getLogger("uvicorn.error").addFilter(_ExpectedShutdownFilter())


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to devstack, which stops all servers together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None]:
        yield


@dataclass
class _Listener:
    name: str
    app: Starlette
    sock: socket.socket
    tls: bool

    @property
    def url(self) -> str:
        port = self.sock.getsockname()[1]
        return f"{'https' if self.tls else 'http'}://{LOOPBACK}:{port}"


def _bind(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Without TCP_NODELAY a response written as headers + body waits for the peer's delayed ACK (Nagle);
    # accepted connections inherit the option from the listening socket on Linux.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((LOOPBACK, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _write_env(path: Path, values: dict[str, str]) -> None:
    lines = [f"{key}={value}" for key, value in values.items()]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.chmod(0o600)
    tmp.replace(path)


def _probe(url: str, tls: TlsFiles) -> None:
    context = ssl.create_default_context(cafile=str(tls.ca_cert))
    with urllib.request.urlopen(f"{url}/_devstack/stats", timeout=2, context=context) as response:  # noqa: S310
        response.read()


async def _serve(args: argparse.Namespace) -> int:
    directory = Path(args.dir).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    tls = create_tls(directory / "tls")
    scenario = load_scenario(Path(args.scenario))
    world = build_world(scenario)

    entra_sock, mi_sock, vault_sock, dataverse_sock, alerts_sock = _bind(), _bind(), _bind(), _bind(), _bind()
    arm_sock, appinsights_sock = _bind(), _bind()
    alerts_url = f"http://{LOOPBACK}:{alerts_sock.getsockname()[1]}"
    _point_channels_at_sink(world, alerts_url)
    entra_url = f"https://{LOOPBACK}:{entra_sock.getsockname()[1]}"
    vault_url = f"https://{LOOPBACK}:{vault_sock.getsockname()[1]}"
    mi_url = f"http://{LOOPBACK}:{mi_sock.getsockname()[1]}"
    dataverse_url = f"https://{LOOPBACK}:{dataverse_sock.getsockname()[1]}"
    arm_url = f"https://{LOOPBACK}:{arm_sock.getsockname()[1]}"
    appinsights_url = f"https://{LOOPBACK}:{appinsights_sock.getsockname()[1]}"

    record_path = Path(args.record_secrets).resolve() if args.record_secrets else None
    issuer = TokenIssuer(entra_url, world.tenant_id, record_path=record_path)
    identity_header = secrets.token_urlsafe(24)
    entra_ctx = EntraContext(world, issuer, Stats(), entra_url, [dataverse_url])
    mi_ctx = EntraContext(world, issuer, Stats(), entra_url, [dataverse_url])
    vault_events = VaultEventEmitter(world, vault_url)  # delivers to the local host once it runs
    vault_ctx = VaultContext(world, issuer, Stats(), vault_url, entra_url, events=vault_events)
    arm_ctx = ArmContext(world, issuer, Stats(), entra_url)
    # Before the contexts below serve: it makes Entra and the managed-identity endpoint issue Azure Monitor tokens.
    appinsights_ctx = build_appinsights(scenario, world, issuer, Stats(), local_auth=args.appinsights_local_auth)
    dataverse_ctx = build_dataverse(
        scenario,
        world,
        issuer,
        org_url=dataverse_url,
        authority=f"{entra_url}/{world.tenant_id}",
        db_path=None if args.memory else directory / "dataverse.sqlite",
        time_scale=args.time_scale,
    )
    listeners = [
        _Listener("entra", entra_app(entra_ctx), entra_sock, tls=True),
        _Listener("managed-identity", managed_identity_app(mi_ctx, identity_header), mi_sock, tls=False),
        _Listener("keyvault", keyvault_app(vault_ctx), vault_sock, tls=True),
        _Listener("dataverse", dataverse_app(dataverse_ctx), dataverse_sock, tls=True),
        _Listener("alerts", alerts_app(AlertSink()), alerts_sock, tls=False),
        _Listener("arm", arm_app(arm_ctx), arm_sock, tls=True),
        _Listener("appinsights", appinsights_app(appinsights_ctx), appinsights_sock, tls=True),
    ]
    for value in [*world.every_secret_value(), identity_header]:
        issuer.record(value)

    timeouts = read_timeouts_from(args)
    servers: list[_QuietServer] = []
    for listener in listeners:
        config = server_config(
            listener.app,
            timeouts,
            log_level=args.log_level,
            access_log=args.log_level == "debug",
            ssl_certfile=str(tls.server_cert_chain) if listener.tls else None,
            ssl_keyfile=str(tls.server_key) if listener.tls else None,
            lifespan="off",
            timeout_keep_alive=30,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        )
        servers.append(_QuietServer(config))

    loop = asyncio.get_running_loop()
    background: list[asyncio.Task[None]] = []  # endless loops (Key Vault's clock and events): cancelled on stop
    stopping = asyncio.Event()

    def stop() -> None:
        stopping.set()
        for server in servers:
            server.should_exit = True
        for task in background:
            task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)

    tasks: list[asyncio.Task[None]] = []
    azurite: Azurite | None = None
    host: LocalHost | None = None
    env_path = directory / "env"
    exit_code = 0
    try:  # whatever fails or is interrupted, everything started so far is stopped in `finally`
        tasks = [asyncio.create_task(s.serve(sockets=[lst.sock])) for s, lst in zip(servers, listeners, strict=True)]
        deadline = loop.time() + READY_TIMEOUT_S
        while not all(s.started for s in servers):
            if loop.time() > deadline or any(t.done() for t in tasks):
                raise _StartFailed("an emulator did not start listening")
            await asyncio.sleep(0.02)
        for listener in listeners:
            await loop.run_in_executor(None, _probe, listener.url, tls)

        if not args.no_azurite:
            try:
                azurite = await loop.run_in_executor(
                    None, start_azurite, None if args.memory else directory / "azurite", directory / "azurite.log"
                )
            except Exception as exc:
                raise _StartFailed(str(exc)) from exc
            restarting = azurite
            # `kill -USR1 <devstack pid>` restarts Azurite on the same ports and data (reliability matrix).
            loop.add_signal_handler(signal.SIGUSR1, lambda: loop.run_in_executor(None, restarting.restart))

        env = {
            "IDENTITY_ENDPOINT": f"{mi_url}/msi/token",
            "IDENTITY_HEADER": identity_header,
            "KEY_VAULT_URL": vault_url,
            "DATAVERSE_URL": dataverse_url,
            "DATAVERSE_TENANT_ID": world.tenant_id,
            "ENTRA_AUTHORITY_HOST": entra_url,
            "ENTRA_INSTANCE_DISCOVERY": "false",
            "KEY_VAULT_VERIFY_CHALLENGE_RESOURCE": "false",
            "GRAPH_URL": entra_url,
            "REQUESTS_CA_BUNDLE": str(tls.bundle),
            "ARM_URL": arm_url,
            "KEY_VAULT_RESOURCE_ID": vault_resource_id(world.vault_name),
            "APPLICATIONINSIGHTS_CONNECTION_STRING": appinsights_ctx.connection_string(appinsights_url),
            # As the Bicep sets it: the exporter takes a managed-identity token for https://monitor.azure.com.
            "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": "Authorization=AAD",
            # The exporter would call https://settings.sdk.monitor.azure.com (OneSettings) 5-15 s after it starts,
            # and statsbeat sends the SDK's own metrics to a Microsoft endpoint: both off, nothing leaves the box.
            "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "true",
            "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
            "TELEMETRY_LIVE_METRICS": "false",  # devstack does not emulate Live Metrics (QuickPulse)
            **({"AzureWebJobsStorage": azurite.connection_string} if azurite else {}),
            **world.settings,
            "DEVSTACK_ENTRA_URL": entra_url,
            "DEVSTACK_MANAGED_IDENTITY_URL": mi_url,
            "DEVSTACK_KEY_VAULT_URL": vault_url,
            "DEVSTACK_DATAVERSE_URL": dataverse_url,
            "DEVSTACK_ALERTS_URL": alerts_url,
            "DEVSTACK_ARM_URL": arm_url,
            "DEVSTACK_APPINSIGHTS_URL": appinsights_url,
            "DEVSTACK_CA_CERT": str(tls.ca_cert),
            "DEVSTACK_SEED_ACCOUNTS": str(args.seed_accounts),
        }
        if args.command in ("run", "demo") or args.host:
            if args.command == "up" and not args.host_log:
                HOST_LOG.hold()  # the invocation log follows the ready line on stdout
            else:
                log_path = Path(args.host_log) if args.host_log else directory / "host.log"
                HOST_LOG.to_file(log_path, echo=args.stream_logs)
            # The app sees exactly the settings written to the env file, as a Functions worker would.
            os.environ.update(env)
            try:
                host_sock = _bind(args.host_port)
            except OSError as exc:
                raise _StartFailed(
                    f"the Functions host cannot listen on port {args.host_port}: {exc.strerror}"
                ) from exc
            base_url = f"http://{LOOPBACK}:{host_sock.getsockname()[1]}"
            host = LocalHost(
                Path(args.app_dir).resolve(), directory, storage=env.get("AzureWebJobsStorage"), base_url=base_url
            )
            try:
                await host.index()
            except FunctionLoadError as exc:
                raise _StartFailed(f"the app cannot be indexed: {exc}") from exc
            host_server = _QuietServer(
                server_config(
                    host.asgi(),
                    timeouts,
                    log_level=args.log_level,
                    access_log=False,
                    lifespan="off",
                    timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
                )
            )
            servers.append(host_server)
            tasks.append(asyncio.create_task(host_server.serve(sockets=[host_sock])))
            while not host_server.started:
                if tasks[-1].done():
                    raise _StartFailed("the Functions host did not start listening")
                await asyncio.sleep(0.02)
            await host.start()
            env["FUNCTIONS_BASE_URL"] = base_url
            env["FUNCTIONS_HOST_KEY"] = host.keys.host
            env["DEVSTACK_HOST_KEYS"] = str(directory / "host-keys.json")  # the master key stays in that file
            _register_webhooks_to_host(scenario, dataverse_ctx, host)
            if (scenario.get("vault") or {}).get("event_grid_to_host", True) and "expiry_event" in host.by_name:
                vault_events.deliver_to(base_url, host.keys.eventgrid)
        # Key Vault's clock (certificate renewal by policy) and its Event Grid events, delivered when a host runs.
        background.append(asyncio.create_task(vault_events.run(vault_ctx.renewer)))

        _write_env(env_path, env)
        print(READY_LINE, flush=True)
        HOST_LOG.release()
        print(f"  environment: {env_path}  (source it: set -a; . {env_path}; set +a)", flush=True)
        for listener in listeners:
            print(f"  {listener.name:<17} {listener.url}", flush=True)
        if host is not None:
            pids = ", ".join(str(worker.process.pid) for worker in host.channel.processes) or "-"
            label = "worker pid" if len(host.channel.processes) <= 1 else "worker pids"
            print(f"  {'functions host':<17} {env['FUNCTIONS_BASE_URL']}  ({label} {pids})", flush=True)
            if args.command in ("run", "demo"):
                print(f"  {'invocation log':<17} {HOST_LOG.path}", flush=True)
        if azurite:
            print(
                f"  {'azurite':<17} blob {azurite.blob_port}, queue {azurite.queue_port}, table {azurite.table_port}",
                flush=True,
            )
        if host is not None and args.command in ("run", "demo"):
            print("\n".join(["", *describe_banner(host), ""]), flush=True)
        if args.command in ("run", "demo"):
            outcomes = await _first_runs(env, stopping)
            if outcomes is None:
                return 1  # interrupted: `finally` stops everything
            print(render(outcomes), flush=True)
            exit_code = 0 if all(o.ok for o in outcomes) else 1
            if args.once or args.command == "demo":
                return exit_code
            print("\ndevstack is serving; press Ctrl-C to stop.", flush=True)
        await stopping.wait()
    except _StartFailed as exc:
        print(f"devstack failed to start: {exc}", file=sys.stderr, flush=True)
        exit_code = 1
    finally:
        stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        if host is not None:
            await host.stop()
        if azurite:
            azurite.stop()
        with contextlib.suppress(FileNotFoundError):
            env_path.unlink()
        print("devstack stopped", flush=True)
    return exit_code


class _StartFailed(RuntimeError):
    """devstack could not start; what it had started is stopped."""


async def _first_runs(env: dict[str, str], stopping: asyncio.Event) -> list[Any] | None:
    """The first runs in a daemon thread, so that Ctrl-C or SIGTERM need not wait for a step to finish."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[list[Any]] = loop.create_future()

    def settle(outcomes: list[Any] | None, error: BaseException | None) -> None:
        if done.done():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(outcomes or [])

    def steps() -> None:
        try:
            outcomes = run_steps(env)
        except Exception as error:
            loop.call_soon_threadsafe(settle, None, error)
            return
        loop.call_soon_threadsafe(settle, outcomes, None)

    threading.Thread(target=steps, daemon=True, name="first-runs").start()
    interrupted: asyncio.Future[Any] = asyncio.ensure_future(stopping.wait())
    waiting: set[asyncio.Future[Any]] = {done, interrupted}
    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    interrupted.cancel()
    return done.result() if done.done() else None


def _point_channels_at_sink(world: Any, alerts_url: str) -> None:
    """Vault secrets declared ``value_from: {alert_sink: <channel>}`` hold the sink's URL for that channel."""
    from devstack.alerts import PLACEHOLDER

    with world.lock:
        for versions in world.secrets.values():
            for version in versions:
                if version.value.startswith(PLACEHOLDER):
                    version.value = f"{alerts_url}/hooks/{version.value.removeprefix(PLACEHOLDER)}"


def _register_webhooks_to_host(scenario: dict[str, Any], dataverse_ctx: Any, host: LocalHost) -> None:
    """Service endpoints of the scenario that point at the local host's Dataverse receiver, with WebhookKey
    auth = that function's key, as an admin registers them with the Plug-in Registration Tool."""
    from devstack.dataverse.webhooks import Registration

    receiver = "dataverse_webhook"
    if receiver not in host.keys.functions or dataverse_ctx.webhooks is None:
        return
    for spec in (scenario.get("dataverse") or {}).get("webhooks_to_host") or []:
        dataverse_ctx.webhooks.registrations.append(
            Registration(
                url=f"{host.base_url}/api/webhooks/dataverse",
                table=str(spec["table"]),
                messages=list(spec.get("messages") or ["Create", "Update", "Delete"]),
                auth_type="WebhookKey",
                auth_value=host.keys.functions[receiver],
            )
        )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["host"]:
        from devstack.host_main import main as host_main

        return host_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    parser.add_argument("command", choices=["up", "run", "demo"])
    parser.add_argument("--scenario", default=str(SCENARIO_DIR / "default.yaml"), help="scenario YAML")
    parser.add_argument("--dir", default=".devstack", help="state directory (env file, TLS material)")
    parser.add_argument("--record-secrets", help="append every secret value and issued token to this file")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--time-scale", type=float, help="override the scenario's Dataverse time_scale")
    parser.add_argument("--host", action="store_true", help="with up: also run the local Functions host")
    parser.add_argument("--app-dir", default=".", help="the Functions app directory (function_app.py, host.json)")
    parser.add_argument("--host-port", type=int, default=7071, help="port of the local Functions host (0: any free)")
    parser.add_argument("--no-azurite", action="store_true", help="do not start Azurite (identity/Dataverse only)")
    parser.add_argument("--memory", action="store_true", help="keep the Dataverse store in memory")
    parser.add_argument(
        "--appinsights-local-auth", choices=["enabled", "disabled"],
        help="Application Insights ingestion without a token (enabled) or Entra only (disabled; the scenario's"
        " application_insights.local_auth_disabled, default disabled as the Bicep)",
    )  # fmt: skip
    parser.add_argument(
        "--seed-accounts", type=int, default=10_000, help="size of the ERP seed (contacts: 3x; bad rows: 3 %%)"
    )
    parser.add_argument("--once", action="store_true", help="with run: stop after the first runs")
    parser.add_argument(
        "--host-log", help="the host's invocation log (default: <dir>/host.log with run and demo; stdout with up)"
    )
    parser.add_argument("--stream-logs", action="store_true", help="with run/demo: also print the invocation log")
    add_read_timeout_arguments(parser)
    args = parser.parse_args(argv)
    return asyncio.run(_serve(args))


if __name__ == "__main__":
    sys.exit(main())
