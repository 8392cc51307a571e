"""The settings registry: every app setting dvbridge reads (or that the Functions host reads for it), declared once.

Each :class:`Setting` gives the name, its group (:class:`Kind`), its type, the default, the accepted range or
values, a one-line description, whether it is required, whether its value may be secret-ish (then no message
shows it), who reads it and how a deployment gets it. ``shared.config`` reads every setting through this
table (typed readers that collect every problem into one ConfigError); docs/settings.md and DEPLOY.md's table
of optional settings are generated from it by ``python -m shared.settings_docs``, and tests fail when either
drifts or when code reads a setting by a literal name.

Stdlib only and cheap to import: indexing imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class EnvVars:
    """Names of the app settings (environment variables). The only place a setting's name is spelled."""

    # platform
    STORAGE = "AzureWebJobsStorage"
    STORAGE_ACCOUNT_NAME = "AzureWebJobsStorage__accountName"
    STORAGE_CREDENTIAL = "AzureWebJobsStorage__credential"
    STORAGE_CLIENT_ID = "AzureWebJobsStorage__clientId"
    APPINSIGHTS_CONNECTION_STRING = "APPLICATIONINSIGHTS_CONNECTION_STRING"
    APPINSIGHTS_AUTHENTICATION_STRING = "APPLICATIONINSIGHTS_AUTHENTICATION_STRING"
    PYTHON_ENABLE_OPENTELEMETRY = "PYTHON_ENABLE_OPENTELEMETRY"
    TELEMETRY_ENABLED = "TELEMETRY_ENABLED"
    TELEMETRY_LIVE_METRICS = "TELEMETRY_LIVE_METRICS"
    TELEMETRY_SAMPLING_RATIO = "TELEMETRY_SAMPLING_RATIO"
    WORKER_RUNTIME = "FUNCTIONS_WORKER_RUNTIME"
    WEBSITE_HOSTNAME = "WEBSITE_HOSTNAME"
    # identity
    DATAVERSE_TENANT_ID = "DATAVERSE_TENANT_ID"
    DATAVERSE_CLIENT_ID = "DATAVERSE_CLIENT_ID"
    DATAVERSE_CLIENT_SECRET_NAME = "DATAVERSE_CLIENT_SECRET_NAME"  # noqa: S105 - a setting's name  # nosec B105
    DATAVERSE_CERTIFICATE_NAME = "DATAVERSE_CERTIFICATE_NAME"
    KEY_VAULT_URL = "KEY_VAULT_URL"
    AZURE_CLIENT_ID = "AZURE_CLIENT_ID"
    ENTRA_AUTHORITY_HOST = "ENTRA_AUTHORITY_HOST"
    ENTRA_INSTANCE_DISCOVERY = "ENTRA_INSTANCE_DISCOVERY"
    KEY_VAULT_VERIFY_CHALLENGE_RESOURCE = "KEY_VAULT_VERIFY_CHALLENGE_RESOURCE"
    GRAPH_URL = "GRAPH_URL"
    ARM_URL = "ARM_URL"
    KEY_VAULT_RESOURCE_ID = "KEY_VAULT_RESOURCE_ID"
    # dataverse
    DATAVERSE_URL = "DATAVERSE_URL"
    DATAVERSE_TABLES = "DATAVERSE_TABLES"
    DATAVERSE_CONCURRENCY_BUDGET = "DATAVERSE_CONCURRENCY_BUDGET"
    DATAVERSE_INSTANCE_CONCURRENCY = "DATAVERSE_INSTANCE_CONCURRENCY"
    DATAVERSE_BUDGET_SHARED = "DATAVERSE_BUDGET_SHARED"
    DATAVERSE_BUDGET_LEASE_S = "DATAVERSE_BUDGET_LEASE_S"
    # sync
    SYNC_JOBS_FILE = "SYNC_JOBS_FILE"
    SYNC_LEASE_DURATION_S = "SYNC_LEASE_DURATION_S"
    SYNC_CHUNK_CONCURRENCY = "SYNC_CHUNK_CONCURRENCY"
    SYNC_SCHEDULE = "SYNC_SCHEDULE_<JOB>"  # one per job: shared.sync.jobs_file.schedule_setting spells it
    # webhooks
    WEBHOOK_ROUTES_FILE = "WEBHOOK_ROUTES_FILE"
    WEBHOOK_DEDUPE_TTL_S = "WEBHOOK_DEDUPE_TTL_S"
    WEBHOOK_RECONCILE_SCHEDULE = "WEBHOOK_RECONCILE_SCHEDULE"
    WEBHOOK_RECONCILE_INITIAL_FULL = "WEBHOOK_RECONCILE_INITIAL_FULL"
    WEBHOOK_WATCH_SCHEDULE = "WEBHOOK_WATCH_SCHEDULE"
    WEBHOOK_WATCH_STEP_IDS = "WEBHOOK_WATCH_STEP_IDS"
    WEBHOOK_INCIDENT_QUIET_S = "WEBHOOK_INCIDENT_QUIET_S"
    # expiry
    EXPIRY_THRESHOLDS_DAYS = "EXPIRY_THRESHOLDS_DAYS"
    EXPIRY_CHANNELS = "EXPIRY_CHANNELS"
    EXPIRY_APP_IDS = "EXPIRY_APP_IDS"
    EXPIRY_EVENT_TOPICS = "EXPIRY_EVENT_TOPICS"
    EXPIRY_VAULT_NAME = "EXPIRY_VAULT_NAME"
    EXPIRY_DRIFT_TOLERANCE_S = "EXPIRY_DRIFT_TOLERANCE_S"
    EXPIRY_SWEEP_SCHEDULE = "EXPIRY_SWEEP_SCHEDULE"
    # rotation (of the app's own Dataverse credential)
    ROTATION_ENABLED = "ROTATION_ENABLED"
    ROTATION_SCHEDULE = "ROTATION_SCHEDULE"
    ROTATE_BEFORE_DAYS = "ROTATE_BEFORE_DAYS"
    ROTATION_SECRET_LIFETIME_DAYS = "ROTATION_SECRET_LIFETIME_DAYS"  # noqa: S105 - a setting's name  # nosec B105
    ROTATION_GRACE_S = "ROTATION_GRACE_S"
    ROTATION_VERIFY_DEADLINE_S = "ROTATION_VERIFY_DEADLINE_S"
    ROTATION_RETRY_AFTER_S = "ROTATION_RETRY_AFTER_S"
    # tuning
    SECRET_CACHE_TTL_S = "SECRET_CACHE_TTL_S"  # noqa: S105 - a setting's name  # nosec B105
    SECRET_MAX_STALE_S = "SECRET_MAX_STALE_S"  # noqa: S105 - a setting's name  # nosec B105
    TOKEN_REFRESH_MARGIN_S = "TOKEN_REFRESH_MARGIN_S"  # noqa: S105 - a setting's name  # nosec B105
    HTTP_TIMEOUT_S = "HTTP_TIMEOUT_S"


SYNC_SCHEDULE_PREFIX = EnvVars.SYNC_SCHEDULE.removesuffix("<JOB>")

DEFAULT_AUTHORITY_HOST = "https://login.microsoftonline.com"
DEFAULT_GRAPH_URL = "https://graph.microsoft.com"
DEFAULT_SECRET_CACHE_TTL_S = 900  # at most one Key Vault GET per secret per 15 minutes
DEFAULT_SECRET_MAX_STALE_S = 3600  # serve a cached secret this long past its TTL while Key Vault is down
DEFAULT_TOKEN_REFRESH_MARGIN_S = 300  # a token handed to an invocation lives at least this long
MAX_TOKEN_REFRESH_MARGIN_S = 3000  # Entra tokens live about an hour: a larger margin would refresh on every call
DEFAULT_HTTP_TIMEOUT_S = 30
DEFAULT_JOBS_FILE = "sync_jobs.yaml"
DEFAULT_LEASE_DURATION_S = 60
MIN_LEASE_DURATION_S = 15  # the range Blob Storage accepts for a finite lease
MAX_LEASE_DURATION_S = 60
DEFAULT_CHUNK_CONCURRENCY = 2  # Dataverse requests in flight per fan-out work item
MAX_CHUNK_CONCURRENCY = 52  # Dataverse's concurrent-request limit per user: more can never be in flight
# A little under the application user's 52 concurrent requests per web server: other tools (a maker's
# Power Automate flow, a migration run) share the same user, and a 429 costs a Retry-After pause for everyone.
DEFAULT_CONCURRENCY_BUDGET = 48
MAX_CONCURRENCY_BUDGET = 52
DEFAULT_INSTANCE_CONCURRENCY = 16  # one instance's own cap, within its share of the budget and the dop hint
DEFAULT_BUDGET_LEASE_S = 30  # a dead instance's share is free again this long after its last renewal
MIN_BUDGET_LEASE_S = 3
MAX_BUDGET_LEASE_S = 300
DEFAULT_ROUTES_FILE = "webhook_routes.yaml"
DEFAULT_DEDUPE_TTL_S = 24 * 3600  # Dataverse retries a delivery within minutes; a day leaves a wide margin
# Every five minutes: an outage's lost events are back in the queue within one period of it ending.
DEFAULT_RECONCILE_SCHEDULE = "0 */5 * * * *"
# A minute after each reconcile, so an incident's alert can say what the reconciler recovered.
DEFAULT_WATCH_SCHEDULE = "0 1-59/5 * * * *"
DEFAULT_INCIDENT_QUIET_S = 1800  # no new failed delivery for this long closes a webhook incident
DEFAULT_THRESHOLDS_DAYS = (30, 14, 7, 1)
DEFAULT_DRIFT_TOLERANCE_S = 86400  # Key Vault exp and Entra endDateTime may differ by a day (time zones, typing)
DEFAULT_ARM_URL = "https://management.azure.com"
DEFAULT_ROTATION_SCHEDULE = "0 */10 * * * *"  # a grace period ends, or a renewed certificate is seen, within 10 minutes
DEFAULT_ROTATE_BEFORE_DAYS = 30  # the first expiry threshold: a rotation that fails still leaves a month to act
DEFAULT_SECRET_LIFETIME_DAYS = 180
MAX_SECRET_LIFETIME_DAYS = 730  # Entra caps a client secret at two years (a tenant policy may cap it lower)
DEFAULT_ROTATION_GRACE_S = 3600  # the old credential stays valid this long (at least) after the switch
DEFAULT_ROTATION_VERIFY_DEADLINE_S = 600  # Entra may take minutes to accept a new secret everywhere
DEFAULT_ROTATION_RETRY_AFTER_S = 6 * 3600  # a failed rotation is tried again after this (an admin may start it sooner)
DEFAULT_SWEEP_SCHEDULE = "0 0 6 * * *"  # daily 06:00 UTC: the EXPIRY_SWEEP_SCHEDULE main.bicep and local settings set


class Kind(StrEnum):
    """The group a setting belongs to (docs/settings.md has one section per group, in this order)."""

    PLATFORM = "platform"
    IDENTITY = "identity"
    DATAVERSE = "dataverse"
    SYNC = "sync"
    WEBHOOKS = "webhooks"
    EXPIRY = "expiry"
    TUNING = "tuning"


KIND_TITLES = {
    Kind.PLATFORM: "Platform: the Functions host, its storage and telemetry",
    Kind.IDENTITY: "Identity: the Entra app, the managed identity, Key Vault and Graph",
    Kind.DATAVERSE: "Dataverse",
    Kind.SYNC: "Sync jobs",
    Kind.WEBHOOKS: "Webhooks",
    Kind.EXPIRY: "Credential expiry monitoring",
    Kind.TUNING: "Tuning: caches, refresh margins and timeouts",
}


class Type(StrEnum):
    """How a value is written; ``shared.config.SettingsReader`` has one reader per type."""

    TEXT = "text"
    CONNECTION = "connection string"
    HTTPS_URL = "https URL, scheme and host only"
    GUID = "GUID"
    TENANT = "tenant: GUID or domain"
    VAULT_OBJECT = "Key Vault object name"
    BOOL = "boolean (true/false, 1/0, yes/no)"
    INT = "whole number"
    NUMBER = "number"
    LIST = "comma-separated list"
    DAYS = "comma-separated whole days"
    ENTITY_SETS = "comma-separated entity set names"
    PATH = "file path (relative: to the app root)"
    NCRONTAB = "six-field NCRONTAB (UTC)"


class Need(StrEnum):
    """Whether the app needs the setting; for a pair, exactly one (the credential) or at least one (storage)."""

    REQUIRED = "yes"
    ONE_OF_CREDENTIAL = (
        f"exactly one of `{EnvVars.DATAVERSE_CLIENT_SECRET_NAME}`, `{EnvVars.DATAVERSE_CERTIFICATE_NAME}`"
    )
    ONE_OF_STORAGE = f"one of `{EnvVars.STORAGE}`, `{EnvVars.STORAGE_ACCOUNT_NAME}`"
    OPTIONAL = "no"


class ReadBy(StrEnum):
    APP = "dvbridge"
    HOST = "Functions host"
    BOTH = "Functions host and dvbridge"


class Deploy(StrEnum):
    """How an Azure deployment gets the setting."""

    TEMPLATE = "main.bicep sets it"
    TEMPLATE_WHEN = "main.bicep sets it when"  # followed by Setting.deploy_note
    OPTIONAL = "optional: set it by hand when the default does not fit"
    LOCAL = "local only"


@dataclass(frozen=True)
class Setting:
    name: str
    kind: Kind
    type: Type
    description: str
    default: str | None = None  # the value an unset setting reads as, written as in an app setting
    default_note: str = ""  # what unset means when it is no fixed value, or why the default is what it is
    minimum: float | None = None
    maximum: float | None = None
    unit: str = ""  # "seconds", "days": the unit of a number
    choices: tuple[str, ...] = ()
    need: Need = Need.OPTIONAL
    secret: bool = False  # the value may hold a secret: problems show its shape, never the value
    read_by: ReadBy = ReadBy.APP
    deploy: Deploy = Deploy.OPTIONAL
    deploy_note: str = ""
    example: str = ""  # a good value for messages, when the default is none or is not telling

    @property
    def sample(self) -> str:
        """A good value, shown after "e.g." in a problem."""
        return self.example or self.default or ""

    @property
    def pattern(self) -> bool:
        """The name holds a placeholder (``SYNC_SCHEDULE_<JOB>``): one setting per job."""
        return "<" in self.name

    @property
    def accepted(self) -> str:
        """The accepted values in words: a list of choices, a range, or the type."""
        if self.choices:
            return " or ".join(self.choices)
        each = f"{self.type}, each " if self.type is Type.DAYS else ""
        if self.minimum is not None and self.maximum is not None:
            return f"{each}{_number(self.minimum)} to {_quantity(self.maximum, self.unit)}"
        if self.minimum is not None:
            return f"{each}at least {_quantity(self.minimum, self.unit)}"
        return str(self.type)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _quantity(value: float, unit: str) -> str:
    """``60 seconds``, ``1 second``, ``2``."""
    if not unit:
        return _number(value)
    return f"{_number(value)} {unit.removesuffix('s') if value == 1 else unit}"


K, T, D = Kind, Type, Deploy
SETTINGS: tuple[Setting, ...] = (
    # -- platform ---------------------------------------------------------------------------------------------
    Setting(EnvVars.STORAGE, K.PLATFORM, T.CONNECTION,
            "Storage connection string, e.g. UseDevelopmentStorage=true for Azurite.",
            default_note="unset in Azure: the identity-based `AzureWebJobsStorage__accountName` replaces it",
            need=Need.ONE_OF_STORAGE, secret=True, read_by=ReadBy.BOTH, deploy=D.LOCAL),
    Setting(EnvVars.STORAGE_ACCOUNT_NAME, K.PLATFORM, T.TEXT,
            "Storage account reached with the managed identity (blobs, queues, tables: host and app).",
            default_note=f"unset: `{EnvVars.STORAGE}` is used", need=Need.ONE_OF_STORAGE, read_by=ReadBy.BOTH,
            deploy=D.TEMPLATE),
    Setting(EnvVars.STORAGE_CREDENTIAL, K.PLATFORM, T.TEXT,
            "The host's storage credential kind; with a user-assigned identity.",
            choices=("managedidentity",), read_by=ReadBy.HOST, deploy=D.TEMPLATE_WHEN,
            deploy_note="a user-assigned identity is given"),
    Setting(EnvVars.STORAGE_CLIENT_ID, K.PLATFORM, T.GUID,
            "Client ID of the user-assigned identity the host reaches storage with.",
            read_by=ReadBy.HOST, deploy=D.TEMPLATE_WHEN, deploy_note="a user-assigned identity is given"),
    Setting(EnvVars.APPINSIGHTS_CONNECTION_STRING, K.PLATFORM, T.CONNECTION,
            "Where the host and the app (the Azure Monitor OpenTelemetry distro) send telemetry.", secret=True,
            read_by=ReadBy.BOTH, deploy=D.TEMPLATE),
    Setting(EnvVars.PYTHON_ENABLE_OPENTELEMETRY, K.PLATFORM, T.BOOL,
            "The Python worker attaches each invocation's trace context (host.json telemetryMode OpenTelemetry), "
            "so the app's spans are children of the host's invocation.", read_by=ReadBy.HOST, deploy=D.TEMPLATE),
    Setting(EnvVars.TELEMETRY_ENABLED, K.PLATFORM, T.BOOL,
            "Send the app's metrics, spans and logs to Application Insights (needs its connection string).",
            default="true"),
    Setting(EnvVars.TELEMETRY_SAMPLING_RATIO, K.PLATFORM, T.NUMBER,
            "The share of traces kept, whole (by trace id): the distro's own default, 5 spans a second, drops a "
            "run's span and keeps some of its requests'.", default="1.0", minimum=0, maximum=1),
    Setting(EnvVars.TELEMETRY_LIVE_METRICS, K.PLATFORM, T.BOOL,
            "Application Insights Live Metrics from the app (devstack does not emulate it: its env sets false).",
            default="true"),
    Setting(EnvVars.APPINSIGHTS_AUTHENTICATION_STRING, K.PLATFORM, T.TEXT,
            "Telemetry authenticated with Entra (the resource has local auth disabled).",
            choices=("Authorization=AAD",), read_by=ReadBy.HOST, deploy=D.TEMPLATE),
    Setting(EnvVars.WORKER_RUNTIME, K.PLATFORM, T.TEXT,
            "The local host's language worker; Flex Consumption takes it from functionAppConfig instead.",
            choices=("python",), read_by=ReadBy.HOST, deploy=D.LOCAL),
    Setting(EnvVars.WEBSITE_HOSTNAME, K.PLATFORM, T.TEXT,
            "The app's default host name (host or host:port); the failed-delivery watcher finds this app's webhook"
            " endpoints by it.",
            default_note="set by the platform (custom domains are not in it); never set it by hand in Azure",
            example="contoso-dvbridge.azurewebsites.net"),
    # -- identity ---------------------------------------------------------------------------------------------
    Setting(EnvVars.DATAVERSE_TENANT_ID, K.IDENTITY, T.TENANT,
            "Directory (tenant) of the app registration; not common/organizations/consumers.",
            need=Need.REQUIRED, deploy=D.TEMPLATE),
    Setting(EnvVars.DATAVERSE_CLIENT_ID, K.IDENTITY, T.GUID,
            "Application (client) ID of the app registration Dataverse knows as an application user.",
            need=Need.REQUIRED, deploy=D.TEMPLATE),
    Setting(EnvVars.DATAVERSE_CLIENT_SECRET_NAME, K.IDENTITY, T.VAULT_OBJECT,
            "Key Vault secret holding the client secret (or a Dataverse connection string).",
            need=Need.ONE_OF_CREDENTIAL, deploy=D.TEMPLATE_WHEN, deploy_note="no certificate is given"),
    Setting(EnvVars.DATAVERSE_CERTIFICATE_NAME, K.IDENTITY, T.VAULT_OBJECT,
            "Key Vault certificate for certificate authentication (preferred to a secret).",
            need=Need.ONE_OF_CREDENTIAL, deploy=D.TEMPLATE_WHEN, deploy_note="`dataverseCertificateName` is given"),
    Setting(EnvVars.KEY_VAULT_URL, K.IDENTITY, T.HTTPS_URL,
            "The vault holding the Dataverse credential and the alert channel URLs.",
            need=Need.REQUIRED, deploy=D.TEMPLATE, example="https://contoso-dvbridge.vault.azure.net"),
    Setting(EnvVars.AZURE_CLIENT_ID, K.IDENTITY, T.GUID,
            "Client ID of a user-assigned managed identity.",
            default_note="unset: the system-assigned identity", deploy=D.TEMPLATE_WHEN,
            deploy_note="a user-assigned identity is given"),
    Setting(EnvVars.ENTRA_AUTHORITY_HOST, K.IDENTITY, T.HTTPS_URL,
            "Entra authority host.", default=DEFAULT_AUTHORITY_HOST, default_note="sovereign clouds differ"),
    Setting(EnvVars.ENTRA_INSTANCE_DISCOVERY, K.IDENTITY, T.BOOL,
            "Let MSAL discover the authority's metadata (false for a private authority).", default="true"),
    Setting(EnvVars.KEY_VAULT_VERIFY_CHALLENGE_RESOURCE, K.IDENTITY, T.BOOL,
            "Check that Key Vault's auth challenge names the vault's own domain.", default="true"),
    Setting(EnvVars.GRAPH_URL, K.IDENTITY, T.HTTPS_URL,
            "Microsoft Graph: the app registrations' credential end dates, and the rotation's addPassword/addKey.",
            default=DEFAULT_GRAPH_URL),
    Setting(EnvVars.ARM_URL, K.IDENTITY, T.HTTPS_URL,
            "Azure Resource Manager, asked (read-only) by the doctor which Key Vault permissions the identity holds.",
            default=DEFAULT_ARM_URL),
    Setting(EnvVars.KEY_VAULT_RESOURCE_ID, K.IDENTITY, T.TEXT,
            "The vault's ARM resource id (/subscriptions/…/providers/Microsoft.KeyVault/vaults/<name>), for the"
            " doctor's rotation-readiness step.",
            default_note="none: the doctor cannot check the Key Vault role and says so", deploy=D.TEMPLATE),
    # -- dataverse --------------------------------------------------------------------------------------------
    Setting(EnvVars.DATAVERSE_URL, K.DATAVERSE, T.HTTPS_URL,
            "The Dataverse environment URL, scheme and host only (no /api/data path).",
            need=Need.REQUIRED, deploy=D.TEMPLATE, example="https://contoso.crm4.dynamics.com"),
    Setting(EnvVars.DATAVERSE_TABLES, K.DATAVERSE, T.ENTITY_SETS,
            "Entity sets the app reads and writes; the doctor probes their privileges.",
            default="", default_note="none: the doctor skips the privilege probe", deploy=D.TEMPLATE),
    Setting(EnvVars.DATAVERSE_CONCURRENCY_BUDGET, K.DATAVERSE, T.INT,
            "Dataverse requests in flight over all instances of the app together (the application user's limit"
            " is 52 per web server); several apps using one application user split it between them.",
            default=str(DEFAULT_CONCURRENCY_BUDGET), minimum=1, maximum=MAX_CONCURRENCY_BUDGET, deploy=D.TEMPLATE),
    Setting(EnvVars.DATAVERSE_INSTANCE_CONCURRENCY, K.DATAVERSE, T.INT,
            "Dataverse requests one instance has in flight at most, within its share of the budget and the"
            " server's x-ms-dop-hint.",
            default=str(DEFAULT_INSTANCE_CONCURRENCY), minimum=1, maximum=MAX_CONCURRENCY_BUDGET),
    Setting(EnvVars.DATAVERSE_BUDGET_SHARED, K.DATAVERSE, T.BOOL,
            "Share the concurrency budget and 429 pauses with the other instances through the app's storage;"
            " false lets each instance use the whole budget (only safe with one instance).",
            default="true"),
    Setting(EnvVars.DATAVERSE_BUDGET_LEASE_S, K.DATAVERSE, T.INT,
            "How long an instance's share of the budget is held without renewal: a dead instance's share is free"
            " again this long after its last renewal (renewed every third of it).",
            default=str(DEFAULT_BUDGET_LEASE_S), minimum=MIN_BUDGET_LEASE_S, maximum=MAX_BUDGET_LEASE_S,
            unit="seconds"),
    # -- sync -------------------------------------------------------------------------------------------------
    Setting(EnvVars.SYNC_JOBS_FILE, K.SYNC, T.PATH,
            "The jobs file.", default=DEFAULT_JOBS_FILE, default_note="deployed with the code"),
    Setting(EnvVars.SYNC_LEASE_DURATION_S, K.SYNC, T.INT,
            "A run's blob lease on its job, renewed every third of it: a crashed run frees the job this fast.",
            default=str(DEFAULT_LEASE_DURATION_S), minimum=MIN_LEASE_DURATION_S, maximum=MAX_LEASE_DURATION_S,
            unit="seconds"),
    Setting(EnvVars.SYNC_CHUNK_CONCURRENCY, K.SYNC, T.INT,
            "Dataverse requests in flight per fan-out work item, within the instance's share of the budget.",
            default=str(DEFAULT_CHUNK_CONCURRENCY), minimum=1, maximum=MAX_CHUNK_CONCURRENCY, deploy=D.TEMPLATE),
    Setting(EnvVars.SYNC_SCHEDULE, K.SYNC, T.NCRONTAB,
            "A job's timer, one setting per job (`SYNC_SCHEDULE_ACCOUNTS`...); unset disables that timer.",
            default_note="none; main.bicep and local settings set the job's `schedule` from the jobs file",
            need=Need.REQUIRED, read_by=ReadBy.HOST, deploy=D.TEMPLATE, example="0 */15 * * * *"),
    # -- webhooks ---------------------------------------------------------------------------------------------
    Setting(EnvVars.WEBHOOK_ROUTES_FILE, K.WEBHOOKS, T.PATH,
            "The webhook routes file.", default=DEFAULT_ROUTES_FILE, default_note="deployed with the code"),
    Setting(EnvVars.WEBHOOK_DEDUPE_TTL_S, K.WEBHOOKS, T.INT,
            "How long a delivery, nonce or processed event is remembered, so a copy of it is a replay.",
            default=str(DEFAULT_DEDUPE_TTL_S), minimum=1, unit="seconds"),
    Setting(EnvVars.WEBHOOK_RECONCILE_SCHEDULE, K.WEBHOOKS, T.NCRONTAB,
            "The webhook reconciler's timer: change-tracking deltas of the routed tables turned into the events"
            " a receiver outage lost.",
            default_note=f"none; main.bicep and local settings set `{DEFAULT_RECONCILE_SCHEDULE}` (every 5 minutes)",
            need=Need.REQUIRED, read_by=ReadBy.HOST, deploy=D.TEMPLATE, example=DEFAULT_RECONCILE_SCHEDULE),
    Setting(EnvVars.WEBHOOK_RECONCILE_INITIAL_FULL, K.WEBHOOKS, T.BOOL,
            "On a table's first reconciler run, compare every existing row with the applied versions (and"
            " enqueue what is not applied) instead of only taking the delta link as the checkpoint.",
            default="false"),
    Setting(EnvVars.WEBHOOK_WATCH_SCHEDULE, K.WEBHOOKS, T.NCRONTAB,
            "The failed-delivery watcher's timer: Dataverse's failed system jobs for our webhook steps, alerted"
            " once per incident.",
            default_note=f"none; main.bicep and local settings set `{DEFAULT_WATCH_SCHEDULE}` (a minute after each"
            " reconcile)", need=Need.REQUIRED, read_by=ReadBy.HOST, deploy=D.TEMPLATE,
            example=DEFAULT_WATCH_SCHEDULE),
    Setting(EnvVars.WEBHOOK_WATCH_STEP_IDS, K.WEBHOOKS, T.LIST,
            "The webhook steps (sdkmessageprocessingstep ids) whose failed deliveries the watcher reads.",
            default_note="the steps of every service endpoint whose URL is this app's `/api/webhooks/dataverse`"
            " (its host: `WEBSITE_HOSTNAME`)"),
    Setting(EnvVars.WEBHOOK_INCIDENT_QUIET_S, K.WEBHOOKS, T.INT,
            "How long without a new failed delivery before a step's incident is resolved.",
            default=str(DEFAULT_INCIDENT_QUIET_S), minimum=60, unit="seconds"),
    # -- expiry -----------------------------------------------------------------------------------------------
    Setting(EnvVars.EXPIRY_THRESHOLDS_DAYS, K.EXPIRY, T.DAYS,
            "Days before a credential's end date at which the sweep alerts, once each.",
            default=",".join(str(d) for d in DEFAULT_THRESHOLDS_DAYS), minimum=1, unit="days"),
    Setting(EnvVars.EXPIRY_CHANNELS, K.EXPIRY, T.LIST,
            "Alert channels, kind:secret-name or name=kind:secret-name (kinds teams, slack, json).",
            default="", default_note="none: alerts go to the log only", deploy=D.TEMPLATE),
    Setting(EnvVars.EXPIRY_APP_IDS, K.EXPIRY, T.LIST,
            "App registrations whose Entra credentials the sweep watches (`*`: every one it can read).",
            default_note="the value of `DATAVERSE_CLIENT_ID`", deploy=D.TEMPLATE),
    Setting(EnvVars.EXPIRY_EVENT_TOPICS, K.EXPIRY, T.LIST,
            "Event Grid topics whose Key Vault events the expiry function accepts.",
            default_note="the vault's own topic"),
    Setting(EnvVars.EXPIRY_VAULT_NAME, K.EXPIRY, T.TEXT,
            "The vault's name, used in credential ids and to match event topics.",
            default_note="the first label of `KEY_VAULT_URL`"),
    Setting(EnvVars.EXPIRY_DRIFT_TOLERANCE_S, K.EXPIRY, T.NUMBER,
            "How far Key Vault's exp and Entra's endDateTime may differ before drift is reported.",
            default=str(DEFAULT_DRIFT_TOLERANCE_S), minimum=0, unit="seconds"),
    Setting(EnvVars.EXPIRY_SWEEP_SCHEDULE, K.EXPIRY, T.NCRONTAB,
            "The expiry sweep's timer; unset disables it.",
            default_note=f"none; main.bicep and local settings set `{DEFAULT_SWEEP_SCHEDULE}` (daily, 06:00 UTC)",
            need=Need.REQUIRED, read_by=ReadBy.HOST, deploy=D.TEMPLATE, example=DEFAULT_SWEEP_SCHEDULE),
    Setting(EnvVars.ROTATION_ENABLED, K.EXPIRY, T.BOOL,
            "Rotate the app's own Dataverse credential (client secret or certificate) before it expires.",
            default="true"),
    Setting(EnvVars.ROTATION_SCHEDULE, K.EXPIRY, T.NCRONTAB,
            "The rotation sweep's timer: starts a rotation within `ROTATE_BEFORE_DAYS` of expiry (or when Key Vault"
            " renewed the certificate) and moves a rotation in progress on (its grace period, a resume).",
            default_note=f"none; main.bicep and local settings set `{DEFAULT_ROTATION_SCHEDULE}` (every 10 minutes)",
            need=Need.REQUIRED, read_by=ReadBy.HOST, deploy=D.TEMPLATE, example=DEFAULT_ROTATION_SCHEDULE),
    Setting(EnvVars.ROTATE_BEFORE_DAYS, K.EXPIRY, T.INT,
            "Days before the client secret's end date at which the app rotates it.",
            default=str(DEFAULT_ROTATE_BEFORE_DAYS), minimum=1, maximum=MAX_SECRET_LIFETIME_DAYS, unit="days"),
    Setting(EnvVars.ROTATION_SECRET_LIFETIME_DAYS, K.EXPIRY, T.INT,
            "Lifetime of a client secret the rotation creates (a tenant's app management policy may allow less).",
            default=str(DEFAULT_SECRET_LIFETIME_DAYS), minimum=2, maximum=MAX_SECRET_LIFETIME_DAYS, unit="days"),
    Setting(EnvVars.ROTATION_GRACE_S, K.EXPIRY, T.INT,
            "How long the old credential stays valid after the switch; the rotation waits at least twice"
            " `SECRET_CACHE_TTL_S` too, so every instance has read the new one before the old one goes.",
            default=str(DEFAULT_ROTATION_GRACE_S), minimum=0, unit="seconds"),
    Setting(EnvVars.ROTATION_VERIFY_DEADLINE_S, K.EXPIRY, T.INT,
            "How long a new credential may take before Entra accepts it; past it the rotation is undone.",
            default=str(DEFAULT_ROTATION_VERIFY_DEADLINE_S), minimum=1, unit="seconds"),
    Setting(EnvVars.ROTATION_RETRY_AFTER_S, K.EXPIRY, T.INT,
            "How long after a failed rotation the sweep tries again (the admin route starts one at once).",
            default=str(DEFAULT_ROTATION_RETRY_AFTER_S), minimum=0, unit="seconds"),
    # -- tuning -----------------------------------------------------------------------------------------------
    Setting(EnvVars.SECRET_CACHE_TTL_S, K.TUNING, T.INT,
            "How long a Key Vault secret is cached before it is read again.",
            default=str(DEFAULT_SECRET_CACHE_TTL_S), minimum=0, unit="seconds"),
    Setting(EnvVars.SECRET_MAX_STALE_S, K.TUNING, T.INT,
            "How long past its TTL a cached secret is still served while Key Vault cannot be reached.",
            default=str(DEFAULT_SECRET_MAX_STALE_S), minimum=0, unit="seconds"),
    Setting(EnvVars.TOKEN_REFRESH_MARGIN_S, K.TUNING, T.INT,
            "A Dataverse token is refreshed when it has less than this left.",
            default=str(DEFAULT_TOKEN_REFRESH_MARGIN_S), minimum=0, maximum=MAX_TOKEN_REFRESH_MARGIN_S,
            unit="seconds"),
    Setting(EnvVars.HTTP_TIMEOUT_S, K.TUNING, T.INT,
            "Timeout of each call to Entra (token, metadata) and of the doctor's Dataverse calls.",
            default=str(DEFAULT_HTTP_TIMEOUT_S), minimum=1, unit="seconds"),
)  # fmt: skip
del K, T, D

REGISTRY: dict[str, Setting] = {s.name: s for s in SETTINGS}


def setting(name: str) -> Setting:
    """The declaration of ``name``; a job's schedule setting (``SYNC_SCHEDULE_ACCOUNTS``) is ``SYNC_SCHEDULE_<JOB>``.
    A KeyError is a programming error: every name the code reads is declared above."""
    if name not in REGISTRY and name.startswith(SYNC_SCHEDULE_PREFIX):
        return REGISTRY[EnvVars.SYNC_SCHEDULE]
    return REGISTRY[name]
