"""The composition root: the one place that builds the objects a worker keeps for its lifetime.

A Functions worker process serves many invocations; the settings, the managed-identity credential, the
Key Vault secret store, the Dataverse token provider and client, table metadata, storage, the Graph reader
and the pooled session for outside services (with the caches inside them) are built here once, on first
use, and handed to the capabilities' doors (``shared.*.functions``), which build their own small contexts
from them. No capability builds a client itself, so no capability depends on another for its wiring.

Storage and the secret store need only the managed identity: webhook receivers keep accepting events
while the Dataverse credential is broken (an expired secret must not turn deliveries away).
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shared.config import Settings

if TYPE_CHECKING:
    import requests
    from azure.core.credentials import TokenCredential

    from shared.dataverse.client import DataverseClient
    from shared.dataverse.governor import ThrottleGovernor
    from shared.dataverse.schema import TableMetadata
    from shared.graph import GraphApplications
    from shared.identity.secret_store import SecretStore
    from shared.identity.token_provider import AccessToken, DataverseTokenProvider
    from shared.outgoing_http import HttpCaller, RetryPolicy
    from shared.storage import Storage


class Worker:
    """The per-worker objects, each built on first use under one lock (no import cost at indexing)."""

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings
        self._lock = threading.RLock()
        self._credential: TokenCredential | None = None
        self._secrets: SecretStore | None = None
        self._tokens: DataverseTokenProvider | None = None
        self._dataverse: DataverseClient | None = None
        self._metadata: TableMetadata | None = None
        self._storage: Storage | None = None
        self._graph: GraphApplications | None = None
        self._http: requests.Session | None = None
        self._callers: dict[str, HttpCaller] = {}

    def settings(self) -> Settings:
        with self._lock:
            if self._settings is None:
                self._settings = Settings.from_env()
            return self._settings

    def credential(self) -> TokenCredential:
        """The managed identity: system-assigned, or the user-assigned one that ``AZURE_CLIENT_ID`` names."""
        with self._lock:
            if self._credential is None:
                from shared.identity.managed_identity import managed_identity_credential

                self._credential = managed_identity_credential(self.settings().managed_identity_client_id)
            return self._credential

    def secret_store(self) -> SecretStore:
        with self._lock:
            if self._secrets is None:
                from shared.identity.managed_identity import identity_label
                from shared.identity.secret_store import SecretStore

                config = self.settings()
                self._secrets = SecretStore(
                    config.key_vault_url,
                    self.credential(),
                    ttl_s=config.secret_cache_ttl_s,
                    max_stale_s=config.secret_max_stale_s,
                    verify_challenge_resource=config.verify_challenge_resource,
                    identity_label=identity_label(config),
                )
            return self._secrets

    def secret(self, name: str) -> str:
        """A Key Vault secret's value (cached by the secret store)."""
        return self.secret_store().get(name).value

    def token_provider(self) -> DataverseTokenProvider:
        with self._lock:
            if self._tokens is None:
                from shared.identity.token_provider import DataverseTokenProvider

                self._tokens = DataverseTokenProvider(self.settings(), self.secret_store())
            return self._tokens

    def dataverse_token(self) -> AccessToken:
        """The invocation's Dataverse token: call once at the start of an invocation."""
        return self.token_provider().token_for_invocation()

    def dataverse(self) -> DataverseClient:
        """The worker's Dataverse client: one pooled session and one throttle governor for every run."""
        with self._lock:
            if self._dataverse is None:
                from shared.dataverse.client import ClientOptions, DataverseClient

                config = self.settings()
                self._dataverse = DataverseClient(
                    config.dataverse_url,
                    self.token_provider(),
                    options=ClientOptions(max_concurrency=config.instance_concurrency),
                    governor=self.governor(),
                )
            return self._dataverse

    def governor(self) -> ThrottleGovernor:
        """The worker's throttle governor: its own ceiling within the app's budget, and with
        ``DATAVERSE_BUDGET_SHARED`` (the default) its share of the budget every instance shares through
        storage, and the 429 pauses they share."""
        from shared.dataverse.governor import ThrottleGovernor

        config = self.settings()
        ceiling = min(config.instance_concurrency, config.concurrency_budget)
        if not config.budget_shared:
            return ThrottleGovernor(ceiling)
        from shared.dataverse.budget import SharedBudget
        from shared.storage.budget import BUDGET_TABLE, TableBudgetStore, budget_partition

        store = TableBudgetStore(
            lambda: self.storage().table(BUDGET_TABLE), budget_partition(config.dataverse_url, config.client_id)
        )
        budget = SharedBudget(store, config.concurrency_budget, float(config.budget_lease_s))
        return ThrottleGovernor(ceiling, budget=budget)

    def metadata(self) -> TableMetadata:
        with self._lock:
            if self._metadata is None:
                from shared.dataverse.schema import TableMetadata

                self._metadata = TableMetadata(self.dataverse())
            return self._metadata

    def storage(self) -> Storage:
        with self._lock:
            if self._storage is None:
                from shared.storage import Storage

                config = self.settings()
                # The credential only where there is no connection string: in Azure, identity-based storage.
                credential = None if config.storage_connection else self.credential()
                self._storage = Storage(
                    config.storage_connection, account_name=config.storage_account_name, credential=credential
                )
            return self._storage

    def http_session(self) -> requests.Session:
        """One pooled session for the services outside Azure (source APIs, HTTP sinks, forward targets,
        notification channels): their connections are reused across invocations."""
        with self._lock:
            if self._http is None:
                import requests

                self._http = requests.Session()
            return self._http

    def caller(self, policy: RetryPolicy) -> HttpCaller:
        """The worker's caller for one kind of outside service, on the shared session."""
        with self._lock:
            found = self._callers.get(policy.name)
            if found is None:
                from shared.outgoing_http import HttpCaller

                found = self._callers[policy.name] = HttpCaller(self.http_session(), policy)
            return found

    def graph(self) -> GraphApplications:
        """App registrations through Graph: read (expiry, doctor) and the app's own credentials (rotation)."""
        with self._lock:
            if self._graph is None:
                from shared.graph import GraphApplications

                config = self.settings()
                self._graph = GraphApplications(config.graph_url, self.credential(), timeout_s=config.http_timeout_s)
            return self._graph


_lock = threading.Lock()
_worker: Worker | None = None


def worker() -> Worker:
    """This worker process's objects."""
    global _worker
    with _lock:
        if _worker is None:
            _worker = Worker()
            created = _worker
        else:
            return _worker
    _configure_telemetry(created)
    return created


def _configure_telemetry(built: Worker) -> None:
    """The first invocation in a worker turns the app's telemetry on (never at indexing)."""
    from shared import telemetry
    from shared.errors import ConfigError

    try:
        configured = telemetry.configure(built.credential())
    except ConfigError:  # a bad telemetry setting leaves telemetry off; the doctor lists the problem
        return
    if configured:
        telemetry.observe_queues(lambda queue: built.storage().backlog(queue))


def reset_worker() -> None:
    """Forget every per-worker object (tests that change the environment between 'workers')."""
    global _worker
    from shared.identity.managed_identity import reset_managed_identity

    with _lock:
        _worker = None
    reset_managed_identity()


# Shorthands for the objects most callers want (the CLI tools, the doctor, tests).
def settings() -> Settings:
    return worker().settings()


def secret_store() -> SecretStore:
    return worker().secret_store()


def token_provider() -> DataverseTokenProvider:
    return worker().token_provider()


def dataverse_token() -> AccessToken:
    return worker().dataverse_token()


def traced(function: Callable[..., Any]) -> Callable[..., Any]:
    """Every function's invocation: this worker's root built first (so telemetry is configured before any span
    opens), then the host's trace context attached for the call, so the spans the function opens are the
    host's children. The Python runtime attaches that context itself only for async functions: a sync one
    (all of dvbridge's) runs in its thread pool without it. The wrapper takes the runtime's ``context``
    argument (``azure.functions.Context``, which carries the trace context) for that."""
    import azure.functions as func

    signature = inspect.signature(function)
    if inspect.iscoroutinefunction(function) or "context" in signature.parameters:
        return function  # the runtime attaches it for a coroutine; a function taking context does its own

    @functools.wraps(function)
    def invoked(*args: Any, **kwargs: Any) -> Any:
        from shared.telemetry import invocation_context

        context = kwargs.pop("context", None)
        worker()
        with invocation_context(context):
            return function(*args, **kwargs)

    extra = inspect.Parameter("context", inspect.Parameter.KEYWORD_ONLY, annotation=func.Context)
    invoked.__signature__ = signature.replace(parameters=[*signature.parameters.values(), extra])  # type: ignore[attr-defined]
    invoked.__annotations__ = {**function.__annotations__, "context": func.Context}
    return invoked
