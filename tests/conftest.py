"""Shared fixtures. Integration tests talk to devstack subprocesses over real sockets.

Every log record of the run also goes to tests/.artifacts/test-logs.txt at DEBUG level (SDK
request logging included), which the secret-hygiene test scans at the end.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.logging import install_redaction
from tests.devstack_process import ARTIFACTS, RECORDED_SECRETS, ROOT, DevstackProcess

SCENARIOS = Path(__file__).parent / "integration" / "scenarios"
TEST_LOG = ARTIFACTS / "test-logs.txt"
# Every message of every dvbridge error raised in this process, and every test's report (failure text,
# captured stdout/stderr/log): the secret-hygiene scan reads both.
ERROR_MESSAGES = ARTIFACTS / "error-messages.txt"
TEST_REPORTS = ARTIFACTS / "test-reports.txt"
HYGIENE_TEST = "test_zz_secret_hygiene.py"
SETTING_PREFIXES = (
    "DATAVERSE_", "KEY_VAULT_", "IDENTITY_", "ENTRA_", "GRAPH_", "AZURE_CLIENT_ID", "SECRET_", "TOKEN_", "EXPIRY_",
)  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # A fresh record per run, unless a worker of this run already started one.
    if not os.environ.get("DVBRIDGE_TEST_RUN"):
        os.environ["DVBRIDGE_TEST_RUN"] = "1"
        RECORDED_SECRETS.write_text("")
        TEST_LOG.write_text("")
        ERROR_MESSAGES.write_text("")
        TEST_REPORTS.write_text("")
    install_redaction()
    _record_error_messages()
    handler = logging.FileHandler(TEST_LOG, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    # The SDKs' HTTP logging is what would leak headers and bodies: keep it on for the scan.
    for name in ("azure", "msal", "urllib3", "shared", "devstack"):
        logging.getLogger(name).setLevel(logging.DEBUG)


def _record_error_messages() -> None:
    """Wrap DvbridgeError's constructor so each message (str and repr) lands in ERROR_MESSAGES."""
    from shared.errors import DvbridgeError

    original = DvbridgeError.__init__
    if getattr(original, "_records", False):
        return

    def recording_init(self: DvbridgeError, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)
        try:
            text = f"{type(self).__name__}: {self}\n{self!r}\n"
        except Exception:  # a subclass's repr may need attributes it sets after this call
            text = f"{type(self).__name__}: {self.args!r}\n"
        with ERROR_MESSAGES.open("a", encoding="utf-8") as out:
            out.write(text)

    recording_init._records = True  # type: ignore[attr-defined]
    DvbridgeError.__init__ = recording_init  # type: ignore[method-assign]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The secret-hygiene scan runs after every other test, whatever the directory order."""
    items.sort(key=lambda item: HYGIENE_TEST in item.nodeid)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # Captured log sections are left out: every record already reaches TEST_LOG through the root handler.
    text = [report.longreprtext] + [content for title, content in report.sections if "log" not in title]
    if any(text):
        with TEST_REPORTS.open("a", encoding="utf-8") as out:
            out.write(f"== {report.nodeid} ({report.when}, {report.outcome})\n" + "\n".join(text) + "\n")


@pytest.fixture(scope="session")
def devstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevstackProcess]:
    """devstack with the default scenario, as `make run` starts it."""
    # The cost model runs 100x faster than real time: same ratios, a quick suite.
    process = DevstackProcess(
        ROOT / "devstack" / "scenarios" / "default.yaml",
        tmp_path_factory.mktemp("ds"),
        "default",
        "--time-scale",
        "0.01",
    )
    yield process
    process.stop()


@pytest.fixture(scope="session")
def hooks_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevstackProcess]:
    """devstack with the local Functions host and in-memory Dataverse: the emulator's service endpoints
    point at the host's webhook receiver."""
    process = DevstackProcess(
        ROOT / "devstack" / "scenarios" / "default.yaml", tmp_path_factory.mktemp("hooks"), "hooks",
        "--host", "--host-port", "0", "--memory", "--time-scale", "0.01",
    )  # fmt: skip
    yield process
    process.stop()


@pytest.fixture(scope="session")
def faults_devstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevstackProcess]:
    """devstack with a world in which every catalogue failure can be produced."""
    process = DevstackProcess(
        SCENARIOS / "faults.yaml", tmp_path_factory.mktemp("faults"), "faults", "--no-azurite", "--time-scale", "0.01"
    )
    yield process
    process.stop()


@pytest.fixture(scope="session")
def limits_devstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevstackProcess]:
    """devstack with small service-protection limits and slow bulk requests."""
    process = DevstackProcess(SCENARIOS / "limits.yaml", tmp_path_factory.mktemp("limits"), "limits", "--no-azurite")
    yield process
    process.stop()


@pytest.fixture(scope="session")
def erp_secret(hooks_stack: DevstackProcess) -> str:
    """The erp source's HMAC key, read from Key Vault with the app's identity (as the receiver does)."""
    from shared.composition import reset_worker, secret_store

    saved = dict(os.environ)
    os.environ.update(hooks_stack.app_settings())
    reset_worker()
    try:
        return secret_store().get("erp-webhook-secret").value
    finally:
        os.environ.clear()
        os.environ.update(saved)
        reset_worker()


@pytest.fixture
def app_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """Apply a devstack's app settings (plus overrides) to os.environ, as a fresh worker would see them."""
    for key in list(os.environ):
        if key.startswith(SETTING_PREFIXES):
            monkeypatch.delenv(key)

    def apply(stack: DevstackProcess, **overrides: str) -> dict[str, str]:
        settings = {**stack.app_settings(), **overrides}
        for key, value in settings.items():
            if value == "":
                monkeypatch.delenv(key, raising=False)
            else:
                monkeypatch.setenv(key, value)
        reset_all_workers()
        return settings

    yield apply
    reset_all_workers()


def reset_all_workers() -> None:
    from shared.composition import reset_worker

    reset_worker()
