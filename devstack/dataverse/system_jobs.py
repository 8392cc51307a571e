"""System jobs (``asyncoperations``) of the emulator's outgoing webhooks, and the registrations behind them
(``serviceendpoints``, ``sdkmessageprocessingsteps``), as read-only collections.

Each delivery of an asynchronous webhook step is one system job, as Dataverse records it: created Ready /
Waiting For Resources when the change commits, Locked / In Progress while it is sent, then Completed with
Succeeded or Failed. The three collections are served by the same query code as ordinary tables (filter,
select, order, top, count, paging), from the rows this module builds.

Confirmed from Microsoft's Web API reference for the three entity types
(https://learn.microsoft.com/power-apps/developer/data-platform/webapi/reference/asyncoperation, .../serviceendpoint,
.../sdkmessageprocessingstep) and the webhook registration page
(https://learn.microsoft.com/power-apps/developer/data-platform/register-web-hook): every column name and type
served here, the statecode/statuscode pairs, operationtype 1 = System Event, contract 8 = Webhook, authtype
4/5/6 = Webhook Key / Http Header / Http Query String, mode 1 = asynchronous, stage 40 = post-operation,
``_owningextensionid_value`` = the step and ``_eventhandler_value`` = the service endpoint, and the documented
query for failed jobs (``statuscode eq 31 and _owningextensionid_value eq <step>``).

UNCONFIRMED, and marked where they are made: the wording of ``message`` and ``friendlymessage``; ``errorcode``
(left null); whether ``regardingobjectid`` is filled for a webhook's job (we fill it with the changed row);
``name`` (we use the step's name); whether the one retry on 502/503/504 counts in ``retrycount`` (we count it)
and whether the job leaves In Progress between the two attempts (ours does not).
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from devstack.dataverse.metadata import Attribute, Table

if TYPE_CHECKING:
    from devstack.dataverse.webhooks import Registration

# asyncoperation statecode and statuscode (Status / Status Reason), as the reference lists them.
STATE_READY = 0
STATE_LOCKED = 2
STATE_COMPLETED = 3
STATUS_WAITING_FOR_RESOURCES = 0
STATUS_IN_PROGRESS = 20
STATUS_SUCCEEDED = 30
STATUS_FAILED = 31
OPERATION_TYPE_SYSTEM_EVENT = 1
# serviceendpoint and sdkmessageprocessingstep choices.
CONTRACT_WEBHOOK = 8
MESSAGE_FORMAT_JSON = 2
AUTH_TYPES = {"WebhookKey": 4, "HttpHeader": 5, "HttpQueryString": 6}
MODE_ASYNCHRONOUS = 1
STAGE_POST_OPERATION = 40
STEP_STATE_ENABLED = 0
STEP_STATUS_ENABLED = 1
# The emulator keeps this many system jobs, dropping the oldest first, so a long run's memory stays bounded
# (Dataverse deletes completed jobs with its own bulk-deletion jobs; when is not modelled).
MAX_RETAINED_JOBS = 100_000


def _attributes(*specs: tuple[str, str] | Attribute) -> dict[str, Attribute]:
    attrs = [spec if isinstance(spec, Attribute) else Attribute(spec[0], spec[1]) for spec in specs]
    return {a.logical_name: a for a in attrs}


ASYNC_OPERATION = Table(
    logical_name="asyncoperation",
    entity_set="asyncoperations",
    primary_id="asyncoperationid",
    primary_name="name",
    attributes=_attributes(
        ("asyncoperationid", "uniqueidentifier"),
        ("name", "string"),
        Attribute("operationtype", "picklist", options={OPERATION_TYPE_SYSTEM_EVENT: "System Event"}),
        Attribute("statecode", "picklist", options={0: "Ready", 1: "Suspended", 2: "Locked", 3: "Completed"}),
        Attribute(
            "statuscode",
            "picklist",
            options={
                0: "Waiting For Resources",
                10: "Waiting",
                20: "In Progress",
                21: "Pausing",
                22: "Canceling",
                30: "Succeeded",
                31: "Failed",
                32: "Canceled",
            },
        ),
        Attribute("owningextensionid", "lookup", target="sdkmessageprocessingstep"),
        # Polymorphic in Dataverse (any table); here always the changed row's table.
        Attribute("regardingobjectid", "lookup", target=None),
        ("primaryentitytype", "string"),
        ("messagename", "string"),
        ("message", "memo"),
        ("friendlymessage", "memo"),
        ("errorcode", "int"),
        ("retrycount", "int"),
        ("depth", "int"),
        ("correlationid", "uniqueidentifier"),
        ("createdon", "datetime"),
        ("startedon", "datetime"),
        ("completedon", "datetime"),
        ("modifiedon", "datetime"),
    ),
    keys=[],
    change_tracking=False,
    bulk=False,
    object_type_code=4700,
)

SERVICE_ENDPOINT = Table(
    logical_name="serviceendpoint",
    entity_set="serviceendpoints",
    primary_id="serviceendpointid",
    primary_name="name",
    attributes=_attributes(
        ("serviceendpointid", "uniqueidentifier"),
        ("name", "string"),
        ("url", "string"),
        Attribute("contract", "picklist", options={CONTRACT_WEBHOOK: "Webhook"}),
        Attribute("authtype", "picklist", options={v: k for k, v in AUTH_TYPES.items()}),
        Attribute("messageformat", "picklist", options={MESSAGE_FORMAT_JSON: "Json"}),
    ),
    keys=[],
    change_tracking=False,
    bulk=False,
    object_type_code=4618,
)

SDK_MESSAGE_PROCESSING_STEP = Table(
    logical_name="sdkmessageprocessingstep",
    entity_set="sdkmessageprocessingsteps",
    primary_id="sdkmessageprocessingstepid",
    primary_name="name",
    attributes=_attributes(
        ("sdkmessageprocessingstepid", "uniqueidentifier"),
        ("name", "string"),
        Attribute("mode", "picklist", options={0: "Synchronous", MODE_ASYNCHRONOUS: "Asynchronous"}),
        Attribute("stage", "picklist", options={STAGE_POST_OPERATION: "Post-operation"}),
        Attribute("statecode", "picklist", options={STEP_STATE_ENABLED: "Enabled", 1: "Disabled"}),
        Attribute("statuscode", "picklist", options={STEP_STATUS_ENABLED: "Enabled", 2: "Disabled"}),
        Attribute("eventhandler", "lookup", target="serviceendpoint"),
        ("asyncautodelete", "bool"),
        ("filteringattributes", "string"),
        ("rank", "int"),
    ),
    keys=[],
    change_tracking=False,
    bulk=False,
    object_type_code=4608,
)


def now_text() -> str:
    """Dataverse's DateTimeOffset as the Web API writes it: UTC, whole seconds."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(slots=True)
class SystemJob:
    asyncoperationid: str
    name: str
    step_id: str
    primaryentitytype: str
    regarding_id: str
    messagename: str
    correlationid: str
    depth: int
    createdon: str
    modifiedon: str
    version: int
    statecode: int = STATE_READY
    statuscode: int = STATUS_WAITING_FOR_RESOURCES
    startedon: str | None = None
    completedon: str | None = None
    message: str | None = None
    friendlymessage: str | None = None
    errorcode: int | None = None  # UNCONFIRMED which code a failed webhook call records: left null
    retrycount: int = 0

    def row(self) -> dict[str, Any]:
        """The job as the Web API represents it (the shape ordinary tables' rows have: etag first, id last)."""
        return {
            "@odata.etag": f'W/"{self.version}"',
            "name": self.name,
            "operationtype": OPERATION_TYPE_SYSTEM_EVENT,
            "statecode": self.statecode,
            "statuscode": self.statuscode,
            "_owningextensionid_value": self.step_id,
            # UNCONFIRMED that Dataverse fills the regarding row for a webhook step's job; an async plug-in's
            # job names the row it ran for, and so does ours.
            "_regardingobjectid_value": self.regarding_id,
            "primaryentitytype": self.primaryentitytype,
            "messagename": self.messagename,
            "message": self.message,
            "friendlymessage": self.friendlymessage,
            "errorcode": self.errorcode,
            "retrycount": self.retrycount,
            "depth": self.depth,
            "correlationid": self.correlationid,
            "createdon": self.createdon,
            "startedon": self.startedon,
            "completedon": self.completedon,
            "modifiedon": self.modifiedon,
            "asyncoperationid": self.asyncoperationid,
        }


class SystemJobs:
    """The emulator's asyncoperation rows, in creation order; every change bumps the row's version (ETag)."""

    def __init__(self, max_jobs: int = MAX_RETAINED_JOBS) -> None:
        self._lock = threading.Lock()
        self._jobs: OrderedDict[str, SystemJob] = OrderedDict()
        self._version = 0
        self._max_jobs = max_jobs

    def _next_version(self) -> int:
        self._version += 1
        return self._version

    def create(
        self, *, name: str, step_id: str, table: str, record_id: str, message: str, correlation_id: str, depth: int
    ) -> SystemJob:
        now = now_text()
        with self._lock:
            job = SystemJob(
                asyncoperationid=str(uuid.uuid4()),
                name=name,
                step_id=step_id,
                primaryentitytype=table,
                regarding_id=record_id,
                messagename=message,
                correlationid=correlation_id,
                depth=depth,
                createdon=now,
                modifiedon=now,
                version=self._next_version(),
            )
            self._jobs[job.asyncoperationid] = job
            while len(self._jobs) > self._max_jobs:
                self._jobs.popitem(last=False)
        return job

    def _change(self, job: SystemJob, **fields: Any) -> None:
        with self._lock:
            for name, value in fields.items():
                setattr(job, name, value)
            job.modifiedon = now_text()
            job.version = self._next_version()

    def start(self, job: SystemJob) -> None:
        self._change(job, statecode=STATE_LOCKED, statuscode=STATUS_IN_PROGRESS, startedon=now_text())

    def retried(self, job: SystemJob) -> None:
        # UNCONFIRMED: whether Dataverse counts the webhook's one immediate retry here, and whether the job
        # passes through Waiting between the attempts; ours counts it and stays In Progress.
        self._change(job, retrycount=job.retrycount + 1)

    def succeed(self, job: SystemJob) -> None:
        self._change(job, statecode=STATE_COMPLETED, statuscode=STATUS_SUCCEEDED, completedon=now_text())

    def fail(self, job: SystemJob, message: str, friendly: str) -> None:
        self._change(
            job,
            statecode=STATE_COMPLETED,
            statuscode=STATUS_FAILED,
            completedon=now_text(),
            message=message,
            friendlymessage=friendly,
        )

    def rows(self) -> list[dict[str, Any]]:
        with self._lock:
            return [job.row() for job in self._jobs.values()]

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            job = self._jobs.get(job_id.lower())
            return job.row() if job is not None else None


@dataclass(frozen=True)
class SystemCollection:
    """A read-only collection the emulator serves through its ordinary query code."""

    table: Table
    rows: Callable[[], list[dict[str, Any]]]
    lookup: Callable[[str], dict[str, Any] | None] | None = None  # by id, when the source has an index

    def get(self, record_id: str) -> dict[str, Any] | None:
        if self.lookup is not None:
            return self.lookup(record_id)
        wanted = record_id.lower()
        return next((row for row in self.rows() if row[self.table.primary_id] == wanted), None)


def service_endpoint_rows(registrations: list[Registration]) -> list[dict[str, Any]]:
    """One ``serviceendpoint`` (contract 8) per registration. ``authvalue`` is left out: Dataverse does not
    return it either."""
    return [
        {
            "@odata.etag": f'W/"{index + 1}"',
            "name": reg.name,
            "url": reg.url,
            "contract": CONTRACT_WEBHOOK,
            "authtype": AUTH_TYPES[reg.auth_type],
            "messageformat": MESSAGE_FORMAT_JSON,
            "serviceendpointid": reg.endpoint_id,
        }
        for index, reg in enumerate(registrations)
    ]


def step_rows(registrations: list[Registration]) -> list[dict[str, Any]]:
    """One asynchronous post-operation ``sdkmessageprocessingstep`` per registration and message, bound to
    the registration's service endpoint, as the Plug-in Registration Tool registers a webhook step."""
    rows: list[dict[str, Any]] = []
    for reg in registrations:
        for message in reg.messages:
            rows.append(
                {
                    "@odata.etag": f'W/"{len(rows) + 1}"',
                    "name": reg.step_name(message),
                    "mode": MODE_ASYNCHRONOUS,
                    "stage": STAGE_POST_OPERATION,
                    "statecode": STEP_STATE_ENABLED,
                    "statuscode": STEP_STATUS_ENABLED,
                    "_eventhandler_value": reg.endpoint_id,
                    "asyncautodelete": False,
                    "filteringattributes": None,
                    "rank": 1,
                    "sdkmessageprocessingstepid": reg.step_for(message),
                }
            )
    return rows
