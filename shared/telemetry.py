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
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.settings_registry import EnvVars

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import Span, TracerProvider

METER_NAME = "dvbridge"
SYNC_RECORDS = "dvbridge.sync.records"
SYNC_RUN_DURATION = "dvbridge.sync.run.duration"
DATAVERSE_REQUESTS = "dvbridge.dataverse.requests"
WEBHOOK_EVENTS = "dvbridge.webhook.events"
WEBHOOK_LAG = "dvbridge.webhook.lag"
TOKEN_ACQUISITIONS = "dvbridge.token.acquisitions"  # noqa: S105 - an instrument's name  # nosec B105
CREDENTIAL_DAYS_LEFT = "dvbridge.credential.days_left"
QUEUE_BACKLOG = "dvbridge.queue.backlog"


@dataclass(frozen=True)
class InstrumentSpec:
    """One instrument: its name, kind (counter, histogram or gauge), unit, attributes (each with the values it
    takes, None when open, as a job's name) and what it counts."""

    name: str
    kind: str
    unit: str
    attributes: Mapping[str, frozenset[str] | None]
    what: str
    observed: bool = False  # read by a callback at each export (observe_queues), not recorded as it happens


def _values(*names: str) -> frozenset[str]:
    return frozenset(names)


# The contract with infra/: its alert rules and workbook query these names, attributes and values
# (tests/infra checks every query against this table; docs/infra.md lists it for people).
CONTRACT: tuple[InstrumentSpec, ...] = (
    InstrumentSpec(SYNC_RECORDS, "counter", "{record}",
                   {"job": None, "kind": _values("inbound", "outbound", "replay", "chunk"),
                    "outcome": _values("read", "written", "unchanged", "dead_lettered", "failed")},
                   "records a sync run read, wrote, left unchanged, dead-lettered or failed"),
    InstrumentSpec(SYNC_RUN_DURATION, "histogram", "s",
                   {"job": None, "kind": _values("inbound", "outbound", "replay", "chunk"),
                    "status": _values("succeeded", "fanned_out", "failed")},
                   "how long a sync run took, and how it ended (one point per run)"),
    InstrumentSpec(DATAVERSE_REQUESTS, "counter", "{request}",
                   {"status_class": _values("2xx", "3xx", "4xx", "5xx", "none"), "throttle_code": None},
                   "Dataverse Web API responses (none: no response came); a 429's throttle_code is the service"
                   " protection limit's error code (unknown when it named none), every other response's none"),
    InstrumentSpec(TOKEN_ACQUISITIONS, "counter", "{acquisition}", {"source": _values("cache", "entra")},
                   "Dataverse tokens handed out, from the cache or newly from Entra"),
    InstrumentSpec(WEBHOOK_EVENTS, "counter", "{event}",
                   {"route": None,
                    "outcome": _values("received", "processed", "duplicate", "stale", "dead_lettered")},
                   "webhook events by what became of them (route: the receiver's, /api/webhooks/<route>)"),
    InstrumentSpec(WEBHOOK_LAG, "histogram", "s", {"route": None},
                   "seconds from an event's receipt to the end of its processing"),
    InstrumentSpec(CREDENTIAL_DAYS_LEFT, "gauge", "d", {"credential": None, "source": None},
                   "days until a credential expires (credential: an id such as kv-secret:<vault>:<name>)"),
    InstrumentSpec(QUEUE_BACKLOG, "gauge", "{message}", {"queue": None},
                   "messages waiting in a queue, every queue watched and 0 included (a poison queue ends with"
                   " -poison)", observed=True),
)  # fmt: skip
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
_watched_queues: set[str] = set()


class Instruments:
    """The app's instruments, made once per worker from the global meter (proxies until configured), or from
    the provider a test passes."""

    def __init__(self, provider: MeterProvider | None = None) -> None:
        from opentelemetry import metrics

        meter = provider.get_meter(METER_NAME) if provider is not None else metrics.get_meter(METER_NAME)
        made: dict[str, Callable[..., Any]] = {"counter": meter.create_counter, "histogram": meter.create_histogram,
                                               "gauge": meter.create_gauge}  # fmt: skip
        self._by_name: dict[str, Any] = {
            spec.name: made[spec.kind](spec.name, unit=spec.unit, description=spec.what)
            for spec in CONTRACT
            if not spec.observed
        }

    def add(self, name: str, amount: int, attributes: Mapping[str, str]) -> None:
        self._by_name[name].add(amount, attributes)

    def record(self, name: str, value: float, attributes: Mapping[str, str]) -> None:
        self._by_name[name].record(value, attributes)

    def set(self, name: str, value: float, attributes: Mapping[str, str]) -> None:
        self._by_name[name].set(value, attributes)


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
        sampling_ratio = reader.number(EnvVars.TELEMETRY_SAMPLING_RATIO)
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
                sampling_ratio=sampling_ratio,  # whole traces by trace id, not the distro's spans per second
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


def watch_queue(name: str) -> None:
    """A queue whose backlog (and its poison queue's) the app reports; the doors name theirs at indexing."""
    with _lock:
        _watched_queues.add(name)


def observe_queues(backlog: Callable[[str], int], provider: MeterProvider | None = None) -> None:
    """Report every watched queue's backlog, read by ``backlog`` when the metrics are exported (once an export
    interval, a minute by default: a call per queue, cheap). A queue that cannot be read is left out."""
    from opentelemetry import metrics
    from opentelemetry.metrics import CallbackOptions, Observation

    def observe(_options: CallbackOptions) -> Iterable[Observation]:
        with _lock:
            names = sorted(_watched_queues)
        for queue in (q for name in names for q in (name, f"{name}-poison")):
            try:
                count = backlog(queue)
            except Exception as exc:  # storage unreachable: no figure this interval, never a failed export
                _log_unreadable(queue, exc)
                continue
            yield Observation(count, {"queue": queue})

    spec = next(s for s in CONTRACT if s.name == QUEUE_BACKLOG)
    meter = provider.get_meter(METER_NAME) if provider is not None else metrics.get_meter(METER_NAME)
    meter.create_observable_gauge(spec.name, callbacks=[observe], unit=spec.unit, description=spec.what)


def _log_unreadable(queue: str, exc: Exception) -> None:
    import logging

    from shared.logging import log_event

    log_event(logging.getLogger(__name__), "queue_backlog_unreadable", logging.WARNING, queue=queue,
              error=type(exc).__name__)  # fmt: skip


def record_run(report: Any) -> None:
    """A finished sync run's counts (a ``shared.sync.run.RunReport``) and duration."""
    if report.status == "skipped":
        return
    meter = instruments()
    for outcome, field in RECORD_OUTCOMES.items():
        count = int(getattr(report, field, 0) or 0)
        if count:
            meter.add(SYNC_RECORDS, count, {"job": report.job, "outcome": outcome, "kind": report.kind})
    meter.record(SYNC_RUN_DURATION, float(report.duration_s), {"job": report.job, "status": report.status,
                                                               "kind": report.kind})  # fmt: skip


def record_dataverse_response(status: int | None, throttle_code: str | None = None) -> None:
    """One Dataverse response (None: no response came); a 429's limit by its error code."""
    status_class = f"{status // 100}xx" if status else "none"
    code = throttle_code or ("unknown" if status == 429 else "none")  # a 429 is never counted as "none"
    instruments().add(DATAVERSE_REQUESTS, 1, {"status_class": status_class, "throttle_code": code})


def operation_name(path: str) -> str:
    """A Dataverse request's entity set, function or ``$batch``, from its path; never a key or a query (a
    path's first segment up to ``(`` or ``?``, else ``other``)."""
    segment = path.split("/api/data/", 1)[-1].split("/", 1)[-1] if "://" in path else path.lstrip("/")
    head = re.split(r"[(?/]", segment, maxsplit=1)[0]
    return head if _OPERATION.fullmatch(head) else "other"


def record_webhook(route: str, outcome: str, received_at: float | None = None) -> None:
    """A webhook event's outcome (received, processed, duplicate, stale, dead_lettered) on its receiver's
    route; for a processed one with its receipt time (epoch seconds), the lag."""
    meter = instruments()
    meter.add(WEBHOOK_EVENTS, 1, {"route": route, "outcome": outcome})
    if outcome == "processed" and received_at:
        meter.record(WEBHOOK_LAG, max(0.0, time.time() - float(received_at)), {"route": route})


def record_credential_days_left(credential_id: str, source: str, days_left: float) -> None:
    """A credential's days until it expires, as the expiry sweep read it (its id names no secret)."""
    instruments().set(CREDENTIAL_DAYS_LEFT, round(days_left, 2), {"credential": credential_id, "source": source})


def record_token(source: str) -> None:
    """A Dataverse token handed out: ``cache`` or ``entra``."""
    instruments().add(TOKEN_ACQUISITIONS, 1, {"source": source})


@contextmanager
def span(name: str, **attributes: str | int | float | bool) -> Iterator[Span]:
    """A child of the current span (the invocation's, in the Functions host's OpenTelemetry mode)."""
    from opentelemetry import trace

    tracer = trace.get_tracer(METER_NAME, tracer_provider=_tracer_provider)
    with tracer.start_as_current_span(name, attributes=attributes) as current:
        yield current


@contextmanager
def invocation_context(context: Any) -> Iterator[None]:
    """Attach the W3C trace context the host gave this invocation (none given: the current one stays)."""
    trace_context = getattr(context, "trace_context", None)
    parent = getattr(trace_context, "trace_parent", "") or ""
    if not parent:
        yield
        return
    from opentelemetry import context as otel_context
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier = {"traceparent": parent, "tracestate": getattr(trace_context, "trace_state", "") or ""}
    token = otel_context.attach(TraceContextTextMapPropagator().extract(carrier))
    try:
        yield
    finally:
        otel_context.detach(token)


def use_providers_for_tests(meters: MeterProvider | None, tracers: TracerProvider | None) -> None:
    """Record into a test's providers (the global ones can be set only once per process); None: forget."""
    global _configured, _instruments, _tracer_provider
    with _lock:
        _configured = False if meters is not None or tracers is not None else None  # a test's: never the distro
        _instruments = Instruments(meters) if meters is not None else None
        _tracer_provider = tracers
