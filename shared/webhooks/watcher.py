"""The failed-delivery watcher: Dataverse's Failed system jobs for our webhook steps, alerted once per incident.

Dataverse retries a webhook delivery only on 502, 503 and 504; any other failure (another status, a refused
connection, a timeout) completes the delivery's system job (``asyncoperation``) as Failed (statecode 3,
statuscode 31, ``_owningextensionid_value`` = the step) and the event is gone. The reconciler
(``shared.webhooks.reconciler``) recovers the lost changes from change tracking; the watcher says that it
happened, once per incident, through the credential-expiry alert channels.

* **Steps**: ``WEBHOOK_WATCH_STEP_IDS`` when set; otherwise the steps (``sdkmessageprocessingsteps`` whose
  ``_eventhandler_value`` is the endpoint) of every webhook service endpoint (``serviceendpoints``, contract 8)
  whose URL's host is this app's (``WEBSITE_HOSTNAME``) and whose path is the Dataverse receiver's.
* **Failed jobs**: per step, ``statuscode eq 31 and _owningextensionid_value eq <step> and completedon ge
  <checkpoint>``, oldest first, page by page. ``ge``, not ``gt``: a job that completes in the same second as
  the last one counted (or whose ``completedon`` the Web API rounds) would be skipped by ``gt`` or counted twice;
  the ids of the jobs at the checkpoint's moment are kept with it and skipped instead.
* **State**: one row per step in Table storage (``webhookwatch``, partition ``step``) holding the checkpoint,
  the cumulative count of failed jobs and the current incident. It is one ETag-guarded write, so the
  checkpoint never moves without the counts and the incident, nor they without it: a failed save leaves the
  row as it was and the next run counts the same jobs once. One watcher at a time per step holds the step's
  blob lease (``webhook-watch-<step>`` in ``sync-leases``); a lost lease still cannot double count (the ETag).
* **First run**: a step without a row looks back ``FIRST_RUN_LOOKBACK`` (24 hours).
* **Incidents**: failures while no incident is open open one (id ``<first failure UTC>-<step id>``); it
  accumulates the count, first and last failure time, a few sample messages and the tables; it resolves when
  no failure came for ``WEBHOOK_INCIDENT_QUIET_S``. Alerts, each claimed in the row before it is sent (so two
  watchers racing send one): *opened*; one *reminder* when it is still open ``REMINDER_AFTER`` after it opened
  (like the expiry monitor's one escalation); *resolved*. Acknowledged or snoozed (as credentials are),
  the reminder is withheld and counted (``suppressed``), and sent if the silence ends first; the resolution is
  always sent and ends the silence. A channel that failed gets the alert it missed on the next run.
* **Secrets**: an endpoint is shown as host and path only (a URL may carry a key in its query string);
  Dataverse's messages are reduced the same way before they are kept, logged or sent.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import urlsplit

from shared.config import SettingsReader
from shared.dataverse.addressing import KeyValueRefused, guid, literal
from shared.errors import DataverseError, DvbridgeError
from shared.failure_answers import scrub
from shared.logging import log_event
from shared.settings_registry import DEFAULT_INCIDENT_QUIET_S, EnvVars
from shared.silences import silence_reason

if TYPE_CHECKING:
    from shared.dataverse.client import DataverseClient
    from shared.storage import Storage
    from shared.webhooks.reconciler import ReconcileLog

logger = logging.getLogger(__name__)

WATCH_TABLE = "webhookwatch"
STEP_PARTITION = "step"  # one row per step: checkpoint, cumulative count, current incident, silence
INCIDENT_PARTITION = "incident"  # one row per incident no longer current on its step (the history)
LEASE_PREFIX = "webhook-watch-"  # + step id: the blob lease of one step's watch
RECEIVER_PATH = "/api/webhooks/dataverse"  # the dataverse_webhook route
CONTRACT_WEBHOOK = 8  # serviceendpoint.contract: Webhook
STATUS_FAILED = 31  # asyncoperation.statuscode: Failed (statecode 3, Completed)
FIRST_RUN_LOOKBACK = timedelta(hours=24)  # how far back a step's first run reads failed jobs
REMINDER_AFTER = timedelta(hours=24)  # an incident still open this long after it opened: one reminder
PAGE_SIZE = 500  # rows per page (odata.maxpagesize; Dataverse serves at most 5,000)
MAX_SAMPLES = 3  # distinct failure messages an incident keeps
MAX_SAMPLE_CHARS = 200
MAX_TABLES = 50  # tables an incident counts by name; the rest count under "other"
MAX_BOUNDARY_IDS = 2000  # job ids kept for the checkpoint's second (see _advance)
BOUNDARY_CHUNK_CHARS = 30_000  # per property: Table storage caps a string at 32 Ki characters
INCIDENT_RETENTION = timedelta(days=90)  # history rows older than this are deleted by later runs
PRUNE_BATCH = 100
CLAIM_ATTEMPTS = 3
DEFAULT_ACK_DAYS = 7  # as for credentials
JOB_COLUMNS = (
    "asyncoperationid",
    "name",
    "message",
    "friendlymessage",
    "createdon",
    "completedon",
    "primaryentitytype",
    "_regardingobjectid_value",
    "correlationid",
)
_URL = re.compile(r"\bhttps?://[^\s'\"<>]+", re.IGNORECASE)
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?")
_ID = re.compile(r"([0-9]{8}T[0-9]{6}Z)-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")

Severity = Literal["info", "warning", "error", "critical"]
AlertKind = Literal["opened", "reminder", "resolved"]


# -- what the watcher uses of its collaborators --------------------------------------------------------------
class JsonResponse(Protocol):
    def json(self, **kwargs: Any) -> Any: ...


class DataverseReader(Protocol):
    """``DataverseClient.request``: a GET of a path or of a next link the client checks is its environment's."""

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> JsonResponse: ...


class HeldLease(Protocol):
    def release(self) -> None: ...


class WatchStorage(Protocol):
    """``Storage``: a table client by name, and a job lease (None while another holder has it)."""

    def table(self, name: str) -> Any: ...

    def lease(self, job: str) -> HeldLease | None: ...


class RecoveryLog(Protocol):
    """``ReconcileLog``: per table, the events the reconciler enqueued in runs that finished in [start, end]."""

    def recovered_between(self, start: datetime, end: datetime) -> dict[str, int]: ...


class AlertSender(Protocol):
    """Sends an incident alert to every channel (or ``only`` these); the names of the channels that failed."""

    def send(self, alert: IncidentAlert, only: Sequence[str] | None = None) -> list[str]: ...


if TYPE_CHECKING:

    def _production_classes_fit(
        client: DataverseClient, storage: Storage, log: ReconcileLog
    ) -> tuple[DataverseReader, WatchStorage, RecoveryLog]:
        return client, storage, log  # mypy proves the production classes still fit


# -- settings ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WatchSettings:
    step_ids: tuple[str, ...] | None  # WEBHOOK_WATCH_STEP_IDS; None: discover by the app's host
    app_host: str | None  # WEBSITE_HOSTNAME: host[:port]
    quiet_s: int  # WEBHOOK_INCIDENT_QUIET_S


def watch_settings(env: Mapping[str, str] | None = None) -> WatchSettings:
    """The watcher's settings; one ConfigError naming each bad one (a step id that is no GUID, a host that
    is no host, or neither steps nor host to find them by)."""
    reader = SettingsReader(env)
    raw_ids = reader.items(EnvVars.WEBHOOK_WATCH_STEP_IDS)
    step_ids: list[str] = []
    for raw in raw_ids:
        try:
            step_ids.append(guid(raw, "step id"))
        except KeyValueRefused:
            reader.problem(
                f"{EnvVars.WEBHOOK_WATCH_STEP_IDS}: {raw[:60]!r} is not a GUID (an sdkmessageprocessingstep id):"
                f" e.g. {EnvVars.WEBHOOK_WATCH_STEP_IDS}=00000000-0000-0000-0000-000000000000",
                EnvVars.WEBHOOK_WATCH_STEP_IDS,
            )
    host = reader.text(EnvVars.WEBSITE_HOSTNAME) or None
    if host is not None and not _HOST.fullmatch(host):
        reader.problem(
            f"{reader.shown(EnvVars.WEBSITE_HOSTNAME, host)} is not a host name (host or host:port)",
            EnvVars.WEBSITE_HOSTNAME,
        )
        host = None
    if not raw_ids and host is None and not reader.has_problem_for(EnvVars.WEBSITE_HOSTNAME):
        reader.problem(
            f"{EnvVars.WEBHOOK_WATCH_STEP_IDS} is unset and {EnvVars.WEBSITE_HOSTNAME} is empty, so the watcher"
            f" cannot find this app's webhook steps: set {EnvVars.WEBHOOK_WATCH_STEP_IDS} to the steps' ids"
            f" (the platform sets {EnvVars.WEBSITE_HOSTNAME} in Azure)",
            EnvVars.WEBHOOK_WATCH_STEP_IDS,
        )
    quiet = reader.integer(EnvVars.WEBHOOK_INCIDENT_QUIET_S)
    reader.raise_problems()
    return WatchSettings(tuple(dict.fromkeys(step_ids)) if raw_ids else None, host.lower() if host else None, quiet)


# -- small helpers -------------------------------------------------------------------------------------------
def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _odata_time(moment: datetime) -> str:
    """A DateTimeOffset literal: whole seconds, or milliseconds when the moment has them."""
    moment = moment.astimezone(UTC)
    if moment.microsecond:
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def endpoint_label(url: str) -> str:
    """A URL as it may be shown: host, port and path; never the user info, query string or fragment."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "(a URL that does not parse)"
    host = (parts.hostname or "").lower()
    if port == {"http": 80, "https": 443}.get(parts.scheme.lower()):
        port = None  # the default port is no part of what tells endpoints apart
    return f"{host}{f':{port}' if port else ''}{parts.path}"


def safe_text(text: Any, limit: int = MAX_SAMPLE_CHARS) -> str:
    """Dataverse's message with every URL reduced to host and path, query strings, tokens and control
    characters removed, and truncated."""
    raw = str(text or "")
    reduced = scrub(_URL.sub(lambda match: endpoint_label(match.group(0)), raw))
    flat = " ".join("".join(c if c.isprintable() else " " for c in reduced).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def endpoint_matches(url: str, app_host: str, path: str = RECEIVER_PATH) -> bool:
    """Whether a service endpoint's URL is this app's receiver: same host (and port, default ports equal to
    none) and the receiver's path (case-insensitive, a trailing slash ignored)."""
    try:
        parts = urlsplit(url)
        port = parts.port
        expected = urlsplit(f"//{app_host}")
        expected_port = expected.port
    except ValueError:
        return False
    defaults = {"http": 80, "https": 443}
    if port == defaults.get(parts.scheme.lower()):
        port = None
    if expected_port in (80, 443):
        expected_port = None
    same_host = (parts.hostname or "").lower() == (expected.hostname or "").lower() and port == expected_port
    return same_host and parts.path.rstrip("/").lower() == path.rstrip("/").lower()


def incident_id(first_failure: datetime, step_id: str) -> str:
    """``<first failure, UTC seconds>-<step id>``: sortable by time, and names its step."""
    return f"{_stamp(first_failure)}-{step_id}"


def parse_incident_id(text: str) -> str | None:
    """The step id of a well-formed incident id, else None."""
    match = _ID.fullmatch(text)
    return match[2] if match else None


# -- state ---------------------------------------------------------------------------------------------------
@dataclass
class Incident:
    """One step's run of failed deliveries, from the first failure to a quiet period."""

    id: str
    step_id: str
    step_name: str
    endpoint: str
    opened_at: datetime  # the watcher's clock when it opened
    first_failure_at: datetime  # completedon of the first failed job
    last_failure_at: datetime
    failures: int = 0
    tables: dict[str, int] = field(default_factory=dict)
    samples: list[dict[str, str]] = field(default_factory=list)  # {at, table, message}
    status: str = "open"  # open | resolved
    resolved_at: datetime | None = None
    alerts_sent: int = 0
    suppressed: int = 0  # alerts withheld by an acknowledgement or snooze
    reminded: bool = False
    withheld: list[str] = field(default_factory=list)  # kinds withheld so far (each counted once)
    acknowledged_by: str | None = None
    acknowledged_until: datetime | None = None
    snoozed_until: datetime | None = None
    undelivered: list[str] = field(default_factory=list)  # channels that failed the last alert
    undelivered_kind: str | None = None

    def silenced(self, now: datetime) -> str | None:
        return silence_reason(self.acknowledged_by, self.acknowledged_until, self.snoozed_until, now)

    def add(self, job: FailedJob) -> None:
        self.failures += 1
        self.first_failure_at = min(self.first_failure_at, job.completed_on)
        self.last_failure_at = max(self.last_failure_at, job.completed_on)
        table = job.table if job.table in self.tables or len(self.tables) < MAX_TABLES else "other"
        self.tables[table] = self.tables.get(table, 0) + 1
        if len(self.samples) < MAX_SAMPLES and job.message not in {s["message"] for s in self.samples}:
            self.samples.append({"at": _iso(job.completed_on), "table": job.table, "message": job.message})

    def to_dict(self) -> dict[str, Any]:
        def when(moment: datetime | None) -> str | None:
            return _iso(moment) if moment else None

        return {
            "id": self.id,
            "status": self.status,
            "step_id": self.step_id,
            "step_name": self.step_name,
            "endpoint": self.endpoint,
            "failures": self.failures,
            "first_failure_at": when(self.first_failure_at),
            "last_failure_at": when(self.last_failure_at),
            "opened_at": when(self.opened_at),
            "resolved_at": when(self.resolved_at),
            "tables": dict(self.tables),
            "samples": [dict(s) for s in self.samples],
            "alerts_sent": self.alerts_sent,
            "suppressed": self.suppressed,
            "acknowledged_by": self.acknowledged_by,
            "acknowledged_until": when(self.acknowledged_until),
            "snoozed_until": when(self.snoozed_until),
            "undelivered": list(self.undelivered),
        }


@dataclass
class StepState:
    """What the watcher remembers about one step (its row in ``webhookwatch``)."""

    step_id: str
    step_name: str = ""
    endpoint: str = ""
    checkpoint: datetime | None = None  # completedon of the last job counted (or the first run's start)
    boundary: set[str] = field(default_factory=set)  # ids of the counted jobs completed at the checkpoint
    failed_total: int = 0  # every failed job counted for this step since it was first watched
    watching_since: datetime | None = None
    incident: Incident | None = None
    etag: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "step_id": self.step_id,
            "step_name": self.step_name,
            "endpoint": self.endpoint,
            "failed_total": self.failed_total,
            "checkpoint": _iso(self.checkpoint) if self.checkpoint else None,
            "watching_since": _iso(self.watching_since) if self.watching_since else None,
            "incident": self.incident.id if self.incident else None,
        }


class WatchConflict(DvbridgeError):
    """Another writer changed the step's row since this run read it."""


class IncidentNotOpen(DvbridgeError):
    """An acknowledgement or snooze of an incident that is resolved."""


_INCIDENT_TIMES = ("opened_at", "first_failure_at", "last_failure_at", "resolved_at", "acknowledged_until",
                   "snoozed_until")  # fmt: skip
_INCIDENT_JSON = ("tables", "samples", "withheld", "undelivered")


def _incident_entity(incident: Incident, prefix: str) -> dict[str, Any]:
    entity: dict[str, Any] = {}
    for name, value in vars(incident).items():
        key = f"{prefix}{name}"
        if name in _INCIDENT_TIMES:
            entity[key] = _iso(value) if value else ""
        elif name in _INCIDENT_JSON:
            entity[key] = json.dumps(value)
        elif isinstance(value, bool | int):
            entity[key] = value
        else:
            entity[key] = value or ""
    return entity


def _incident_from(entity: Mapping[str, Any], prefix: str) -> Incident | None:
    """The incident kept under ``prefix`` in a row; None when there is none (or its times do not parse)."""
    if not entity.get(f"{prefix}id") or any(
        _parse_time(entity.get(f"{prefix}{name}")) is None
        for name in ("opened_at", "first_failure_at", "last_failure_at")
    ):
        return None
    values: dict[str, Any] = {}
    for name in Incident.__dataclass_fields__:
        raw = entity.get(f"{prefix}{name}")
        if name in _INCIDENT_TIMES:
            values[name] = _parse_time(raw)
        elif name in _INCIDENT_JSON:
            values[name] = json.loads(raw) if raw else ({} if name == "tables" else [])
        elif name in ("failures", "alerts_sent", "suppressed"):
            values[name] = int(raw or 0)
        elif name == "reminded":
            values[name] = bool(raw)
        else:
            values[name] = raw or (None if name in ("acknowledged_by", "undelivered_kind") else "")
    incident = Incident(**values)
    incident.status = incident.status or "open"
    return incident


class WatchStates:
    """The step rows and the incident history in ``webhookwatch``; writes are ETag-guarded."""

    def __init__(self, table_client: Any) -> None:
        self._table = table_client

    def get(self, step_id: str) -> StepState | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self._table.get_entity(STEP_PARTITION, step_id)
        except ResourceNotFoundError:
            return None
        return self._state(entity)

    def steps(self) -> list[StepState]:
        return [self._state(e) for e in self._table.query_entities(f"PartitionKey eq '{STEP_PARTITION}'")]

    @staticmethod
    def _state(entity: Any) -> StepState:
        boundary_text = "".join(str(entity.get(f"Boundary{n}") or "") for n in range(_boundary_chunks()))
        return StepState(
            step_id=str(entity["RowKey"]),
            step_name=str(entity.get("StepName") or ""),
            endpoint=str(entity.get("Endpoint") or ""),
            checkpoint=_parse_time(entity.get("Checkpoint")),
            boundary={i for i in boundary_text.split(",") if i},
            failed_total=int(entity.get("FailedTotal") or 0),
            watching_since=_parse_time(entity.get("WatchingSince")),
            incident=_incident_from(entity, "incident_"),
            etag=entity.metadata.get("etag"),
        )

    def save(self, state: StepState) -> StepState:
        """Write the row if nobody changed it since it was read (else :class:`WatchConflict`); sets the etag."""
        from azure.core import MatchConditions
        from azure.core.exceptions import HttpResponseError, ResourceExistsError
        from azure.data.tables import UpdateMode

        entity: dict[str, Any] = {
            "PartitionKey": STEP_PARTITION,
            "RowKey": state.step_id,
            "StepName": state.step_name,
            "Endpoint": state.endpoint,
            "Checkpoint": _iso(state.checkpoint) if state.checkpoint else "",
            "FailedTotal": state.failed_total,
            "WatchingSince": _iso(state.watching_since) if state.watching_since else "",
        }
        text = ",".join(sorted(state.boundary))
        for n in range(_boundary_chunks()):
            entity[f"Boundary{n}"] = text[n * BOUNDARY_CHUNK_CHARS : (n + 1) * BOUNDARY_CHUNK_CHARS]
        if state.incident is not None:
            entity |= _incident_entity(state.incident, "incident_")
        try:
            if state.etag is None:
                metadata = self._table.create_entity(entity)
            else:
                metadata = self._table.update_entity(
                    entity, mode=UpdateMode.REPLACE, etag=state.etag, match_condition=MatchConditions.IfNotModified
                )
        except ResourceExistsError as exc:
            raise WatchConflict(f"{state.step_id}: another watcher wrote the step's first row meanwhile") from exc
        except HttpResponseError as exc:
            if getattr(exc, "status_code", None) in (404, 412):
                raise WatchConflict(f"{state.step_id}: the step's row changed since this run read it") from exc
            raise
        state.etag = metadata.get("etag")
        return state

    def archive(self, incident: Incident) -> None:
        """Keep an incident in the history (idempotent: the same id replaces itself)."""
        from azure.data.tables import UpdateMode

        entity = {"PartitionKey": INCIDENT_PARTITION, "RowKey": incident.id, **_incident_entity(incident, "")}
        self._table.upsert_entity(entity, mode=UpdateMode.REPLACE)

    def archived(self, incident_id: str) -> Incident | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return _incident_from(self._table.get_entity(INCIDENT_PARTITION, incident_id), "")
        except ResourceNotFoundError:
            return None

    def history(self) -> list[Incident]:
        rows = self._table.query_entities(f"PartitionKey eq '{INCIDENT_PARTITION}'")
        return [i for i in (_incident_from(e, "") for e in rows) if i is not None]

    def prune(self, before: datetime) -> None:
        """Delete history rows of incidents that began before ``before`` (at most PRUNE_BATCH)."""
        query = f"PartitionKey eq '{INCIDENT_PARTITION}' and RowKey lt '{_stamp(before)}'"
        try:
            old = self._table.query_entities(query, results_per_page=PRUNE_BATCH, select=["PartitionKey", "RowKey"])
            for count, entity in enumerate(old):
                if count >= PRUNE_BATCH:
                    break
                self._table.delete_entity(INCIDENT_PARTITION, entity["RowKey"])
        except Exception as exc:  # the next run prunes again
            log_event(logger, "webhook_watch_prune_failed", logging.WARNING, error=type(exc).__name__)


def _boundary_chunks() -> int:
    return -(-MAX_BOUNDARY_IDS * 37 // BOUNDARY_CHUNK_CHARS)  # 36 characters and a comma per id


# -- failed jobs -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FailedJob:
    job_id: str
    completed_on: datetime
    table: str
    message: str  # safe_text of friendlymessage or message


@dataclass(frozen=True)
class WatchedStep:
    step_id: str
    name: str
    endpoint: str  # host and path


def _pages(client: DataverseReader, path: str, params: Mapping[str, str], page_size: int) -> Iterator[list[Any]]:
    """A query page by page, following ``@odata.nextLink`` (the client refuses a link outside its
    environment, so no bearer token leaves it)."""
    headers = {"Prefer": f"odata.maxpagesize={page_size}"}
    link, first = path, True
    while True:
        payload = client.request("GET", link, params=params if first else None, headers=headers).json()
        rows = payload.get("value") if isinstance(payload, dict) else None
        if not isinstance(rows, list):
            raise DataverseError(0, "BadPage", f"{path}: a page without a value list")
        yield rows
        next_link = payload.get("@odata.nextLink")
        if not isinstance(next_link, str) or not next_link:
            return
        link, first = next_link, False


def _alert_kind(text: str | None) -> AlertKind | None:
    for kind in ("opened", "reminder", "resolved"):
        if text == kind:
            return kind
    return None


def _job(row: Any) -> FailedJob | None:
    if not isinstance(row, dict):
        return None
    try:
        job_id = guid(row.get("asyncoperationid"), "asyncoperationid")
    except KeyValueRefused:
        return None
    completed = _parse_time(row.get("completedon"))
    if completed is None:
        return None
    table = row.get("primaryentitytype")
    table = table.lower() if isinstance(table, str) and _TABLE_NAME.fullmatch(table) else "unknown"
    message = safe_text(row.get("friendlymessage") or row.get("message") or "no message")
    return FailedJob(job_id, completed, table, message)


# -- reports ---------------------------------------------------------------------------------------------------
@dataclass
class StepReport:
    """One step's watch. ``status``: ``watched``; ``busy`` (another watcher holds the step); ``conflict`` (the
    row changed meanwhile: nothing counted, the next run reads the same jobs); ``failed`` (nothing counted)."""

    step_id: str
    step_name: str = ""
    endpoint: str = ""
    status: str = "watched"
    failed_jobs: int = 0  # failed jobs counted by this run
    failed_total: int = 0  # every failed job counted for the step so far
    skipped: int = 0  # rows without a usable id or completedon
    incident: Incident | None = None
    alerts_sent: int = 0
    suppressed: int = 0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        incident = self.incident
        return {
            "step_name": self.step_name,
            "endpoint": self.endpoint,
            "status": self.status,
            "failed_jobs": self.failed_jobs,
            "failed_total": self.failed_total,
            "skipped": self.skipped,
            "incident": None
            if incident is None
            else {"id": incident.id, "status": incident.status, "failures": incident.failures},
            "alerts_sent": self.alerts_sent,
            "suppressed": self.suppressed,
            **({"error": self.error} if self.error else {}),
        }


@dataclass
class WatchReport:
    started_at: datetime
    finished_at: datetime | None = None
    discovery: str = "endpoints"  # endpoints (by the app's host) | settings (WEBHOOK_WATCH_STEP_IDS)
    endpoints: list[str] = field(default_factory=list)  # the matching endpoints, host and path
    steps: dict[str, StepReport] = field(default_factory=dict)

    @property
    def failed_jobs(self) -> int:
        return sum(s.failed_jobs for s in self.steps.values())

    @property
    def alerts_sent(self) -> int:
        return sum(s.alerts_sent for s in self.steps.values())

    @property
    def failed(self) -> list[str]:
        return [step for step, s in self.steps.items() if s.status == "failed"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at) if self.finished_at else None,
            "discovery": self.discovery,
            "endpoints": list(self.endpoints),
            "failed_jobs": self.failed_jobs,
            "alerts_sent": self.alerts_sent,
            "steps": {step: s.to_dict() for step, s in self.steps.items()},
        }


# -- alerts ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IncidentAlert:
    """What the channels get about an incident (the door turns it into the expiry notifier's alert)."""

    kind: AlertKind
    severity: Severity
    incident: Incident
    title: str
    text: str
    facts: dict[str, str]
    fix: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": f"webhook_incident_{self.kind}",
            "severity": self.severity,
            "incident": self.incident.to_dict(),
            "title": self.title,
            "text": self.text,
            "facts": dict(self.facts),
            "fix": self.fix,
        }


FIX = (
    "Check the receiver (GET /api/health/doctor, the function app's logs around the first failure) and that the"
    " service endpoint's WebhookKey is the dataverse_webhook function key. Dataverse does not redeliver these"
    " events; the reconciler recovers the changes from change tracking (POST /api/webhooks-admin/reconcile runs"
    " it now)."
)


def _when(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{table} {n:,}" for table, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def build_alert(kind: AlertKind, incident: Incident, recovered: dict[str, int] | None, quiet_s: int) -> IncidentAlert:
    step = incident.step_name or "unnamed step"
    endpoint = incident.endpoint or "an unknown endpoint"
    span = f"between {_when(incident.first_failure_at)} and {_when(incident.last_failure_at)}"
    if recovered is None:
        recovery = "unknown (the reconciler's run log could not be read)"
    else:
        total = sum(recovered.values())
        recovery = f"{total:,} events ({_counts(recovered)})" if total else "nothing yet"
    facts = {
        "Step": f"{step} ({incident.step_id})",
        "Endpoint": endpoint,
        "Failed deliveries": f"{incident.failures:,}",
        "First failure": _when(incident.first_failure_at),
        "Last failure": _when(incident.last_failure_at),
        "Tables": _counts(incident.tables) or "-",
        "Recovered by the reconciler": recovery,
        "Incident": incident.id,
    }
    if incident.samples:
        facts["Sample"] = incident.samples[0]["message"]
    lost = f"{incident.failures:,} webhook deliveries to {endpoint} failed for good {span}"
    if kind == "opened":
        title = f"Webhook deliveries failing: {step}"
        text = (
            f"Dataverse gave up on {lost}: the system jobs of step {step} are Failed (a status other than"
            " 502/503/504, a refused connection or a timeout), and Dataverse does not retry them."
        )
        return IncidentAlert(kind, "error", incident, title, text, facts, FIX)
    if kind == "reminder":
        title = f"Still failing: webhook deliveries of {step}"
        text = f"The incident is still open: {lost}."
        return IncidentAlert(kind, "critical", incident, title, text, facts, FIX)
    title = f"Resolved: webhook deliveries of {step}"
    text = (
        f"No failed delivery for {quiet_s // 60} minutes since {_when(incident.last_failure_at)};"
        f" the incident is closed. In all {lost}."
    )
    return IncidentAlert(kind, "info", incident, title, text, facts)


# -- the watcher -----------------------------------------------------------------------------------------------
class Watcher:
    """Watch every step (discovered, or the ones given) once; see the module docstring."""

    def __init__(
        self,
        storage: WatchStorage,
        client: DataverseReader,
        notifier: AlertSender,
        recovery: RecoveryLog,
        *,
        step_ids: Sequence[str] | None = None,
        app_host: str | None = None,
        receiver_path: str = RECEIVER_PATH,
        quiet_s: int = DEFAULT_INCIDENT_QUIET_S,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        lookback: timedelta = FIRST_RUN_LOOKBACK,
        reminder_after: timedelta = REMINDER_AFTER,
        page_size: int = PAGE_SIZE,
    ) -> None:
        if step_ids is None and not app_host:
            raise ValueError("the watcher needs step ids or the app's host to discover them by")
        self._storage = storage
        self._client = client
        self._notifier = notifier
        self._recovery = recovery
        self._step_ids = None if step_ids is None else [guid(s, "step id") for s in step_ids]
        self._app_host = app_host
        self._path = receiver_path
        self._quiet = timedelta(seconds=quiet_s)
        self._quiet_s = quiet_s
        self._clock = clock
        self._lookback = lookback
        self._reminder_after = reminder_after
        self._page_size = max(1, min(page_size, 5000))

    def _states(self) -> WatchStates:
        return WatchStates(self._storage.table(WATCH_TABLE))

    # -- which steps ---------------------------------------------------------------------------------------
    def steps(self) -> tuple[list[WatchedStep], list[str]]:
        """The steps to watch and the matching endpoints (host and path). Raises on a Dataverse failure."""
        if self._step_ids is not None:
            return [self._named_step(step_id) for step_id in self._step_ids], []
        if self._app_host is None:  # the constructor requires one of the two
            raise ValueError("the watcher needs WEBHOOK_WATCH_STEP_IDS or this app's host name (WEBSITE_HOSTNAME)")
        endpoints: list[tuple[str, str]] = []
        params = {"$filter": f"contract eq {CONTRACT_WEBHOOK}", "$select": "serviceendpointid,url,name"}
        for page in _pages(self._client, "serviceendpoints", params, self._page_size):
            for row in page:
                if not isinstance(row, dict) or not isinstance(row.get("url"), str):
                    continue
                if not endpoint_matches(row["url"], self._app_host, self._path):
                    continue
                with contextlib.suppress(KeyValueRefused):
                    endpoints.append((guid(row.get("serviceendpointid"), "serviceendpointid"), row["url"]))
        steps: dict[str, WatchedStep] = {}
        for endpoint_id, url in endpoints:
            params = {
                "$filter": f"_eventhandler_value eq {literal('_eventhandler_value', endpoint_id)}",
                "$select": "sdkmessageprocessingstepid,name",
            }
            for page in _pages(self._client, "sdkmessageprocessingsteps", params, self._page_size):
                for row in page:
                    if not isinstance(row, dict):
                        continue
                    try:
                        step_id = guid(row.get("sdkmessageprocessingstepid"), "sdkmessageprocessingstepid")
                    except KeyValueRefused:
                        continue
                    steps.setdefault(step_id, WatchedStep(step_id, safe_text(row.get("name")), endpoint_label(url)))
        return list(steps.values()), sorted({endpoint_label(url) for _, url in endpoints})

    def _named_step(self, step_id: str) -> WatchedStep:
        """A step given by id, with its name and endpoint when Dataverse still has them."""
        name, endpoint = "", ""
        try:
            step = self._client.request(
                "GET", f"sdkmessageprocessingsteps({step_id})", params={"$select": "name,_eventhandler_value"}
            ).json()
            name = safe_text(step.get("name"))
            handler = guid(step.get("_eventhandler_value"), "_eventhandler_value")
            found = self._client.request("GET", f"serviceendpoints({handler})", params={"$select": "url"}).json()
            endpoint = endpoint_label(str(found.get("url") or ""))
        except (DataverseError, KeyValueRefused, AttributeError) as exc:
            log_event(logger, "webhook_watch_step_unknown", logging.WARNING, step=step_id, error=type(exc).__name__)
        return WatchedStep(step_id, name, endpoint)

    # -- a run ---------------------------------------------------------------------------------------------
    def run(self) -> WatchReport:
        """Watch every step; a step's failure is in its report and does not stop the others. Discovery's
        failure (no step ran) raises."""
        report = WatchReport(
            started_at=self._clock(), discovery="settings" if self._step_ids is not None else "endpoints"
        )
        steps, report.endpoints = self.steps()
        if not steps:
            log_event(logger, "webhook_watch_no_steps", logging.WARNING, host=self._app_host or "-", path=self._path)
        for step in steps:
            report.steps[step.step_id] = self._watch_step(step)
        try:
            self._states().prune(self._clock() - INCIDENT_RETENTION)
        except Exception as exc:  # old history rows cost nothing; the next run prunes
            log_event(logger, "webhook_watch_prune_failed", logging.WARNING, error=type(exc).__name__)
        report.finished_at = self._clock()
        log_event(
            logger,
            "webhook_watched",
            steps=len(report.steps),
            failed_jobs=report.failed_jobs,
            alerts=report.alerts_sent,
            failed=len(report.failed),
        )
        return report

    def _watch_step(self, step: WatchedStep) -> StepReport:
        report = StepReport(step.step_id, step.name, step.endpoint)
        lease = self._storage.lease(f"{LEASE_PREFIX}{step.step_id}")
        if lease is None:
            report.status = "busy"
            log_event(logger, "webhook_watch_busy", step=step.step_id)
            return report
        try:
            self._watch(step, report)
        except WatchConflict as exc:
            report.status, report.error, report.failed_jobs = "conflict", str(exc), 0
            report.alerts_sent = report.suppressed = 0
            log_event(logger, "webhook_watch_conflict", logging.WARNING, step=step.step_id)
        except Exception as exc:  # nothing counted: the next run reads the same jobs
            report.status, report.failed_jobs = "failed", 0
            report.alerts_sent = report.suppressed = 0
            report.error = f"{type(exc).__name__}: {exc}" if isinstance(exc, DvbridgeError) else type(exc).__name__
            log_event(logger, "webhook_watch_failed", logging.ERROR, step=step.step_id, error=type(exc).__name__)
        finally:
            lease.release()
        return report

    def _read_jobs(self, step_id: str, since: datetime, skip: set[str], report: StepReport) -> list[FailedJob]:
        where = (
            f"statuscode eq {STATUS_FAILED} and _owningextensionid_value eq"
            f" {literal('_owningextensionid_value', step_id)} and completedon ge {_odata_time(since)}"
        )
        params = {"$filter": where, "$select": ",".join(JOB_COLUMNS), "$orderby": "completedon asc"}
        jobs: dict[str, FailedJob] = {}
        for page in _pages(self._client, "asyncoperations", params, self._page_size):
            for row in page:
                job = _job(row)
                if job is None:
                    report.skipped += 1
                elif job.job_id not in skip and job.job_id not in jobs:  # a row repeated across pages: once
                    jobs[job.job_id] = job
        return sorted(jobs.values(), key=lambda j: (j.completed_on, j.job_id))

    def _watch(self, step: WatchedStep, report: StepReport) -> None:
        states = self._states()
        now = self._clock()
        previous = states.get(step.step_id)
        state = previous or StepState(step.step_id, watching_since=now, checkpoint=now - self._lookback)
        since = state.checkpoint or now - self._lookback
        jobs = self._read_jobs(step.step_id, since, state.boundary, report)
        changed = previous is None or (step.name, step.endpoint) != (state.step_name, state.endpoint)
        state.step_name, state.endpoint = step.name or state.step_name, step.endpoint or state.endpoint
        due: list[AlertKind] = []
        incident = state.incident
        if jobs:
            if incident is None or incident.status != "open":
                if incident is not None:
                    states.archive(incident)  # before the row forgets it
                incident = state.incident = Incident(
                    id=incident_id(jobs[0].completed_on, step.step_id),
                    step_id=step.step_id,
                    step_name=state.step_name,
                    endpoint=state.endpoint,
                    opened_at=now,
                    first_failure_at=jobs[0].completed_on,
                    last_failure_at=jobs[0].completed_on,
                )
                due.append("opened")
            for job in jobs:
                incident.add(job)
            state.failed_total += len(jobs)
            self._advance(state, jobs)
            changed = True
        elif incident is not None and incident.status == "open" and now - incident.last_failure_at >= self._quiet:
            incident.status, incident.resolved_at = "resolved", now
            due.append("resolved")
        reminder_due = (
            incident is not None
            and incident.status == "open"
            and not incident.reminded
            and "opened" not in due
            and now - incident.opened_at >= self._reminder_after
        )
        if incident is not None and reminder_due:
            if not incident.silenced(now):
                incident.reminded = True
                due.append("reminder")
            elif "reminder" not in incident.withheld:  # withheld, counted once; sent if the silence ends first
                incident.withheld.append("reminder")
                incident.suppressed += 1
                report.suppressed += 1
                changed = True
        retry: list[str] = []
        if incident is not None and not due and incident.undelivered and _alert_kind(incident.undelivered_kind):
            retry = list(incident.undelivered)  # the channels that missed the last alert get it now
        if incident is not None:
            if due:
                incident.alerts_sent += len(due)
            if due or retry:
                incident.undelivered, changed = [], True
            if "resolved" in due:  # the silence was about this incident; the next one alerts afresh
                incident.acknowledged_by = incident.acknowledged_until = incident.snoozed_until = None
        if changed or due:
            states.save(state)  # claim first: the checkpoint, the counts and the alerts due move together
        report.failed_jobs = len(jobs)
        report.failed_total = state.failed_total
        report.incident = incident
        if incident is None or not (due or retry):
            return
        failed: set[str] = set()
        missed = _alert_kind(incident.undelivered_kind)
        last_kind = due[-1] if due else missed
        if retry and missed is not None:
            failed |= set(self._notifier.send(self._alert(missed, incident, now), only=retry))
        for kind in due:
            failed |= set(self._notifier.send(self._alert(kind, incident, now)))
            report.alerts_sent += 1
        if failed:
            incident.undelivered, incident.undelivered_kind = sorted(failed), last_kind
            try:
                states.save(state)
            except WatchConflict:
                log_event(logger, "webhook_watch_conflict", logging.WARNING, step=step.step_id)
        if incident.status == "resolved" and "resolved" in due:
            with contextlib.suppress(Exception):  # the step's row keeps it until the next incident archives it
                states.archive(incident)

    def _advance(self, state: StepState, jobs: list[FailedJob]) -> None:
        """Move the checkpoint to the last counted job's completedon, keeping the ids counted at that moment
        (the next read starts there with ``ge`` and skips them). More than MAX_BOUNDARY_IDS at one moment
        cannot be kept: the checkpoint then moves a second past it (a job completing in that second after
        this read would be missed; none is counted twice)."""
        last = jobs[-1].completed_on
        at_last = {j.job_id for j in jobs if j.completed_on == last}
        boundary = (state.boundary | at_last) if state.checkpoint == last else at_last
        if len(boundary) > MAX_BOUNDARY_IDS:
            log_event(logger, "webhook_watch_boundary_overflow", logging.WARNING, step=state.step_id, ids=len(boundary))
            state.checkpoint, state.boundary = last + timedelta(seconds=1), set()
        else:
            state.checkpoint, state.boundary = last, boundary

    def _alert(self, kind: AlertKind, incident: Incident, now: datetime) -> IncidentAlert:
        end = incident.resolved_at or now
        try:
            recovered: dict[str, int] | None = self._recovery.recovered_between(incident.first_failure_at, end)
        except Exception as exc:  # the alert goes out without the recovery figure
            log_event(logger, "webhook_watch_recovery_unknown", logging.WARNING, error=type(exc).__name__)
            recovered = None
        alert = build_alert(kind, incident, recovered, self._quiet_s)
        log_event(
            logger,
            "webhook_delivery_incident",
            logging.INFO if kind == "resolved" else logging.ERROR,
            kind=kind,
            incident=incident.id,
            step=incident.step_id,
            endpoint=incident.endpoint or "-",
            failures=incident.failures,
            first_failure=_iso(incident.first_failure_at),
            last_failure=_iso(incident.last_failure_at),
        )
        return alert


# -- incidents: list, acknowledge, snooze -----------------------------------------------------------------------
class Incidents:
    """The incidents as the API shows them, and their acknowledgement and snooze (same semantics as a
    credential's: silent until then; the resolution ends the silence)."""

    def __init__(self, storage: WatchStorage, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._storage = storage
        self.clock = clock

    def _states(self) -> WatchStates:
        return WatchStates(self._storage.table(WATCH_TABLE))

    def listing(self) -> dict[str, Any]:
        """Every incident (current ones from the step rows, the rest from the history), newest first, and
        every watched step with its cumulative count of failed jobs."""
        states = self._states()
        steps = states.steps()
        incidents = {i.id: i for i in states.history()}
        incidents |= {s.incident.id: s.incident for s in steps if s.incident is not None}
        ordered = sorted(incidents.values(), key=lambda i: (i.status != "open", -i.first_failure_at.timestamp()))
        return {"incidents": [i.to_dict() for i in ordered], "steps": [s.to_dict() for s in steps]}

    def acknowledge(self, incident_id: str, by: str, until: datetime | None = None) -> Incident | None:
        def change(incident: Incident, now: datetime) -> None:
            incident.acknowledged_by = by
            incident.acknowledged_until = until or now + timedelta(days=DEFAULT_ACK_DAYS)

        return self._silence(incident_id, change)

    def snooze(self, incident_id: str, until: datetime) -> Incident | None:
        def change(incident: Incident, now: datetime) -> None:
            incident.snoozed_until = until

        return self._silence(incident_id, change)

    def _silence(self, incident_id: str, change: Callable[[Incident, datetime], None]) -> Incident | None:
        """None for an unknown incident; IncidentNotOpen for a resolved one."""
        step_id = parse_incident_id(incident_id)
        if step_id is None:
            return None
        states = self._states()
        for _ in range(CLAIM_ATTEMPTS):
            state = states.get(step_id)
            current = state.incident if state is not None else None
            if state is None or current is None or current.id != incident_id:
                if states.archived(incident_id) is not None:
                    raise IncidentNotOpen(incident_id)
                return None
            if current.status != "open":
                raise IncidentNotOpen(incident_id)
            change(current, self.clock())
            try:
                states.save(state)
            except WatchConflict:
                continue
            return current
        raise WatchConflict(incident_id)
