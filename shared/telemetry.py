"""OpenTelemetry for dvbridge: the instruments the app records (each with a unit and attributes of low
cardinality: job, route, outcome, status class, never a key, value or URL), its spans, and the Azure Monitor
distro, configured once per worker on the first invocation that builds the composition root.

Indexing imports nothing of OpenTelemetry: this module loads its API on first use. Until the distro is
configured the API's providers are no-ops, and instruments made before then are proxies that start recording
once it is, so a capability records without asking whether telemetry is on.

The distro's automatic HTTP and Azure SDK instrumentations stay off: they record full URLs, and a channel or
API URL may carry a secret in its path or query, a blob name a record's key. Outgoing calls are recorded by
the Dataverse client instead, by status class.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from shared.settings_registry import EnvVars

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from opentelemetry.metrics import Counter, Histogram, MeterProvider
    from opentelemetry.trace import Span, TracerProvider

METER_NAME = "dvbridge"
# The instrument names are a contract: infra/ alert rules and the workbook query them (docs/telemetry.md).
SYNC_RECORDS = "dvbridge.sync.records"
SYNC_RUN_DURATION = "dvbridge.sync.run.duration"
DATAVERSE_REQUESTS = "dvbridge.dataverse.requests"
TOKEN_ACQUISITIONS = "dvbridge.token.acquisitions"  # noqa: S105 - an instrument's name  # nosec B105
# The report's counters, by the outcome attribute they are recorded under.
RECORD_OUTCOMES = {"read": "rows_read", "written": "written", "unchanged": "unchanged",
                   "dead_lettered": "dead_lettered", "failed": "failed"}  # fmt: skip
# Library names the distro instruments by default that would record URLs (azure_sdk: every Storage and Key
# Vault call's, with blob and secret names), or that the app does not use.
UNINSTRUMENTED = ("azure_sdk", "requests", "urllib", "urllib3", "django", "flask", "fastapi", "psycopg2")
_OPERATION = re.compile(r"[A-Za-z_$][A-Za-z0-9_.$]{0,99}")
LOGGER_NAME = "shared"  # the app's own loggers only: the SDKs' request logs stay out of the telemetry

_lock = threading.Lock()
_configured: bool | None = None  # None: not tried yet in this worker
_instruments: Instruments | None = None
_tracer_provider: TracerProvider | None = None  # a test's; None: the global one


class Instruments:
    """The app's instruments, made once per worker from the global meter (proxies until configured), or from
    the provider a test passes."""

    def __init__(self, provider: MeterProvider | None = None) -> None:
        from opentelemetry import metrics

        meter = provider.get_meter(METER_NAME) if provider is not None else metrics.get_meter(METER_NAME)
        self.records: Counter = meter.create_counter(
            SYNC_RECORDS, unit="{record}", description="Records a sync run read, wrote, left unchanged, "
            "dead-lettered or failed, by job and outcome",
        )  # fmt: skip
        self.run_duration: Histogram = meter.create_histogram(
            SYNC_RUN_DURATION, unit="s", description="How long a sync run took, by job and status"
        )
        self.dataverse_requests: Counter = meter.create_counter(
            DATAVERSE_REQUESTS, unit="{request}", description="Dataverse Web API responses by status class; "
            "429s by the service protection limit's error code",
        )  # fmt: skip
        self.token_acquisitions: Counter = meter.create_counter(
            TOKEN_ACQUISITIONS, unit="{acquisition}", description="Dataverse tokens handed out, from the cache "
            "or newly from Entra",
        )  # fmt: skip


def instruments() -> Instruments:
    global _instruments
    with _lock:
        if _instruments is None:
            _instruments = Instruments()
        return _instruments


def configure(credential: TokenCredential | None, env: Mapping[str, str] | None = None) -> bool:
    """Configure the Azure Monitor distro once per worker when a connection string is set and telemetry is
    on; True when it is configured. A failure is logged and leaves telemetry off: it must never stop work."""
    global _configured
    with _lock:
        if _configured is not None:
            return _configured
        _configured = False
        from shared.config import SettingsReader

        reader = SettingsReader(env)
        connection = reader.optional(EnvVars.APPINSIGHTS_CONNECTION_STRING)
        enabled = reader.boolean(EnvVars.TELEMETRY_ENABLED)
        live_metrics = reader.boolean(EnvVars.TELEMETRY_LIVE_METRICS)
        reader.raise_problems()
        if not connection or not enabled:
            return False
        try:
            from azure.monitor.opentelemetry import configure_azure_monitor

            configure_azure_monitor(
                connection_string=connection,
                credential=credential,
                logger_name=LOGGER_NAME,
                enable_live_metrics=live_metrics,
                enable_performance_counters=False,  # process counters, not what an operator of dvbridge opens
                instrumentation_options={name: {"enabled": False} for name in UNINSTRUMENTED},
            )
        except Exception as exc:  # telemetry is never a reason for an invocation to fail
            import logging

            from shared.logging import log_event

            log_event(logging.getLogger(__name__), "telemetry_unavailable", logging.WARNING,
                      error=type(exc).__name__)  # fmt: skip
            return False
        _configured = True
        return True


def record_run(report: Any) -> None:
    """A finished sync run's counts (a ``shared.sync.run.RunReport``) and duration."""
    if report.status == "skipped":
        return
    meter = instruments()
    for outcome, field in RECORD_OUTCOMES.items():
        count = int(getattr(report, field, 0) or 0)
        if count:
            meter.records.add(count, {"job": report.job, "outcome": outcome, "kind": report.kind})
    meter.run_duration.record(float(report.duration_s), {"job": report.job, "status": report.status,
                                                         "kind": report.kind})  # fmt: skip


def record_dataverse_response(status: int | None, throttle_code: str | None = None) -> None:
    """One Dataverse response (None: no response came); a 429's limit by its error code."""
    status_class = f"{status // 100}xx" if status else "none"
    attributes = {"status_class": status_class, "throttle_code": throttle_code or "none"}
    instruments().dataverse_requests.add(1, attributes)


def operation_name(path: str) -> str:
    """A Dataverse request's entity set, function or ``$batch``, from its path; never a key or a query (a
    path's first segment up to ``(`` or ``?``, else ``other``)."""
    segment = path.split("/api/data/", 1)[-1].split("/", 1)[-1] if "://" in path else path.lstrip("/")
    head = re.split(r"[(?/]", segment, maxsplit=1)[0]
    return head if _OPERATION.fullmatch(head) else "other"


def record_token(source: str) -> None:
    """A Dataverse token handed out: ``cache`` or ``entra``."""
    instruments().token_acquisitions.add(1, {"source": source})


@contextmanager
def span(name: str, **attributes: str | int | float | bool) -> Iterator[Span]:
    """A child of the current span (the invocation's, in the Functions host's OpenTelemetry mode)."""
    from opentelemetry import trace

    tracer = trace.get_tracer(METER_NAME, tracer_provider=_tracer_provider)
    with tracer.start_as_current_span(name, attributes=attributes) as current:
        yield current


def use_providers_for_tests(meters: MeterProvider | None, tracers: TracerProvider | None) -> None:
    """Record into a test's providers (the global ones can be set only once per process); None: forget."""
    global _configured, _instruments, _tracer_provider
    with _lock:
        _configured = None
        _instruments = Instruments(meters) if meters is not None else None
        _tracer_provider = tracers
