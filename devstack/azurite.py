"""Azurite (Storage: blob, queue, table) as a child process of devstack."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

AZURITE_BIN = Path(__file__).parent / "node_modules" / ".bin" / "azurite"
START_TIMEOUT_S = 30
EXTENT_MEMORY_LIMIT_MB = 256  # in-memory mode would otherwise reserve half of RAM
# Set to 1 to have Azurite write its access log (one line per request it serves, in its log file, e.g.
# ``.devstack/azurite.log``) instead of starting it ``--silent``: ``bench.webhooks`` counts storage calls
# from it. Off by default: the log costs Azurite a write per request.
ACCESS_LOG_SETTING = "DEVSTACK_AZURITE_ACCESS_LOG"
ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key (public, documented; not a secret).
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class AzuriteMissingError(RuntimeError):
    pass


@dataclass
class Azurite:
    process: subprocess.Popen[bytes]
    blob_port: int
    queue_port: int
    table_port: int
    args: list[str] = field(default_factory=list)
    log_path: Path | None = None

    @property
    def connection_string(self) -> str:
        base = "http://127.0.0.1"
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={base}:{self.blob_port}/{ACCOUNT};QueueEndpoint={base}:{self.queue_port}/{ACCOUNT};"
            f"TableEndpoint={base}:{self.table_port}/{ACCOUNT};"
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def restart(self) -> None:
        """Stop and start again on the same ports and data (``kill -USR1 <devstack pid>``): what a storage
        outage or a node restart looks like to the app. With in-memory persistence the data is lost, as it
        would be; the reliability matrix runs Azurite on disk."""
        self.stop()
        self.process = _launch(self.args, self.log_path)
        _wait_listening(self, (self.blob_port, self.queue_port, self.table_port), self.log_path)


def _launch(args: list[str], log_path: Path | None) -> subprocess.Popen[bytes]:
    log = log_path.open("ab") if log_path else subprocess.DEVNULL
    return subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True)


def _wait_listening(azurite: Azurite, ports: tuple[int, ...], log_path: Path | None) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not all(_listening(p) for p in ports):
        if azurite.process.poll() is not None or time.monotonic() > deadline:
            azurite.stop()
            raise RuntimeError(f"Azurite did not start; see {log_path}")
        time.sleep(0.05)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def access_log_wanted(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``DEVSTACK_AZURITE_ACCESS_LOG`` asks for Azurite's access log (1, true, yes or on)."""
    value = (os.environ if environ is None else environ).get(ACCESS_LOG_SETTING, "")
    return value.strip().lower() in ("1", "true", "yes", "on")


def start_azurite(location: Path | None, log_path: Path, *, access_log: bool | None = None) -> Azurite:
    """Start Azurite on three free ports; ``location=None`` keeps data in memory. ``access_log`` (default:
    :func:`access_log_wanted`) leaves out ``--silent``, so that every request Azurite serves is a line of
    ``log_path`` (morgan's "common" format: ``127.0.0.1 - - [date] "PUT /devstoreaccount1/... HTTP/1.1" 201 -``)."""
    if not AZURITE_BIN.exists():
        raise AzuriteMissingError(
            f"Azurite is not installed ({AZURITE_BIN} missing): run `make run` or `cd devstack && npm ci`"
        )
    ports = [_free_port() for _ in range(3)]
    logged = access_log_wanted() if access_log is None else access_log
    args = [
        str(AZURITE_BIN),
        *([] if logged else ["--silent"]),
        "--disableTelemetry",
        "--skipApiVersionCheck",  # the SDKs send newer x-ms-version values than Azurite 3.35 knows
        "--blobHost", "127.0.0.1", "--blobPort", str(ports[0]),
        "--queueHost", "127.0.0.1", "--queuePort", str(ports[1]),
        "--tableHost", "127.0.0.1", "--tablePort", str(ports[2]),
    ]  # fmt: skip
    if location is None:
        args += ["--inMemoryPersistence", "--extentMemoryLimit", str(EXTENT_MEMORY_LIMIT_MB)]
    else:
        # Every devstack start begins from the scenario (the Dataverse store is reset too): stale
        # processed-file records and watermarks would otherwise skip data the new store never saw.
        shutil.rmtree(location, ignore_errors=True)
        location.mkdir(parents=True, exist_ok=True)
        args += ["--location", str(location)]
    azurite = Azurite(_launch(args, log_path), ports[0], ports[1], ports[2], args=args, log_path=log_path)
    _wait_listening(azurite, tuple(ports), log_path)
    return azurite
