"""The expiry monitor: one sweep (inventory → correlation → policy → notifications → state), the same
path for a Key Vault Event Grid event, and acknowledge/snooze. Time is injected, so a test can walk a
clock day by day."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from shared.errors import AuthError
from shared.expiry.eventgrid import VaultExpiryEvent
from shared.expiry.inventory import drift_findings, entra_credentials, vault_credentials
from shared.expiry.model import Alert, Credential
from shared.expiry.notify import Notifier, parse_channels
from shared.expiry.policy import (
    CredentialState,
    Level,
    current_level,
    decide,
    levels,
    removed,
    threshold_alert,
)
from shared.expiry.settings import ExpirySettings, vault_name
from shared.expiry.state import StateConflict, StateStore
from shared.graph import GraphReader
from shared.logging import log_event
from shared.telemetry import record_credential_days_left

if TYPE_CHECKING:
    from shared.identity.secret_store import SecretStore

logger = logging.getLogger(__name__)

DEFAULT_ACK_DAYS = 7
CLAIM_ATTEMPTS = 3
PROBE_ID = "probe:dataverse"
_ID_SOURCES = {"kv-secret": "keyvault-secret", "kv-certificate": "keyvault-certificate",
               "entra-password": "entra-password", "entra-certificate": "entra-certificate"}  # fmt: skip


# What the monitor uses of each collaborator, so a unit test can hand it in-memory ones; the functions under
# TYPE_CHECKING below make mypy prove the production classes still fit.
class SecretValueLike(Protocol):
    @property
    def value(self) -> str: ...


class VaultStore(Protocol):
    """``SecretStore``: the vault's URL, its properties listings (for ``vault_credentials``) and a value read."""

    @property
    def vault_url(self) -> str: ...

    def list_secret_properties(self) -> list[Any]: ...

    def list_certificate_properties(self) -> list[Any]: ...

    def get(self, name: str) -> SecretValueLike: ...


class CredentialStates(Protocol):
    """``StateStore``: ``save`` raises StateConflict when the row changed since it was read, and sets the
    saved state's etag."""

    def get(self, credential_id: str) -> CredentialState | None: ...

    def all(self) -> list[tuple[CredentialState, dict[str, Any]]]: ...

    def save(self, state: CredentialState, credential: Credential | None = None) -> CredentialState: ...


class AlertSender(Protocol):
    """``Notifier``: sends to every channel (or ``only`` these) and returns the names of those that failed."""

    def send(self, alert: Alert, only: Sequence[str] | None = None) -> list[str]: ...


class ApplicationSource(Protocol):
    """``GraphReader``: the app registrations' JSON as Graph returns it; AuthError when Graph refuses."""

    def applications(self, app_ids: Sequence[str]) -> Iterable[dict[str, Any]]: ...


if TYPE_CHECKING:

    def _production_classes_fit(
        store: SecretStore, states: StateStore, notifier: Notifier, graph: GraphReader
    ) -> tuple[VaultStore, CredentialStates, AlertSender, ApplicationSource]:
        return store, states, notifier, graph


@dataclass
class SweepReport:
    at: datetime
    credentials: list[tuple[Credential, str]] = field(default_factory=list)  # (credential, state label)
    alerts: list[Alert] = field(default_factory=list)
    failed_channels: dict[str, list[str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # sources that could not be listed


class ExpiryMonitor:
    def __init__(
        self,
        settings: ExpirySettings,
        *,
        store: VaultStore,
        states: CredentialStates,
        notifier: AlertSender,
        graph: ApplicationSource | None = None,
        probe: Callable[[], str] | None = None,
        dataverse_secret_name: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.store = store
        self.states = states
        self.notifier = notifier
        self.graph = graph
        self.probe = probe
        self.dataverse_secret_name = dataverse_secret_name
        self.clock = clock
        self.levels: tuple[Level, ...] = levels(settings.thresholds_days)

    # -- the sweep ------------------------------------------------------------------------------------
    def sweep(self) -> SweepReport:
        now = self.clock()
        report = SweepReport(at=now)
        listed: list[Credential] = []
        # Id prefixes of the credentials a source listed in full: only those can be proved gone. An event
        # may have told us about another vault's secret, and EXPIRY_APP_IDS may name only some apps.
        complete: set[str] = set()
        vault = self.settings.vault_name or vault_name(self.store.vault_url)
        try:
            listed += vault_credentials(self.store, vault)
            complete |= {f"kv-secret:{vault}:", f"kv-certificate:{vault}:"}
        except AuthError as exc:
            report.problems.append(f"Key Vault not listed: {exc.code}: {exc.fix}")
        entra_listed = False
        if self.graph is not None and self.settings.app_ids:
            app_ids = self.settings.app_ids
            try:
                listed += entra_credentials(list(self.graph.applications(app_ids)))
                entra_listed = True
                if tuple(app_ids) == ("*",):
                    complete |= {"entra-password:", "entra-certificate:"}
                else:
                    complete |= {
                        f"{kind}:{app}:" for app in app_ids for kind in ("entra-password", "entra-certificate")
                    }
            except AuthError as exc:
                report.problems.append(f"Entra credentials not listed: {exc.code}: {exc.fix}")
            except Exception as exc:  # unreachable or no token: the vault's alerts must still go out
                report.problems.append(f"Entra credentials not listed: {type(exc).__name__}: {_first_line(exc)}")
        for problem in report.problems:
            log_event(logger, "expiry_source_unavailable", logging.ERROR, problem=problem)
        for credential in listed:
            days = credential.days_left(now)
            if days is not None:
                record_credential_days_left(credential.id, str(credential.source), days)
            label = self._process(credential, now, report)
            report.credentials.append((credential, label))
        if entra_listed:  # without Entra's list every tagged copy would look like it names a deleted secret
            self._drift(listed, now, report)
        self._removed(listed, complete, now, report)
        if self.probe is not None:
            self._probe(now, report)
        log_event(logger, "expiry_sweep", credentials=len(listed), alerts=len(report.alerts),
                  problems=len(report.problems))  # fmt: skip
        return report

    def on_event(self, event: VaultExpiryEvent) -> list[Alert]:
        """A Key Vault expiry event: the same policy and state as the sweep, so the two send one alert."""
        now = self.clock()
        source = "keyvault-secret" if event.kind == "secret" else "keyvault-certificate"
        credential_id = f"kv-{event.kind}:{event.vault_name}:{event.object_name}"
        known = self.states.get(credential_id)
        credential = Credential(
            id=credential_id,
            name=event.object_name,
            source=source,  # type: ignore[arg-type]
            expires_on=event.expires_on or (known.expires_on if known else None),
            owner=f"vault {event.vault_name}",
        )
        report = SweepReport(at=now)
        self._process(credential, now, report)
        return report.alerts

    # -- per credential -------------------------------------------------------------------------------
    def _process(self, credential: Credential, now: datetime, report: SweepReport) -> str:
        for _ in range(CLAIM_ATTEMPTS):
            state = self.states.get(credential.id) or CredentialState(id=credential.id, first_seen=now)
            retry = state.undelivered
            alerts, new = decide(credential, state, now, self.levels)
            if not alerts and not retry and state.etag is not None and state.expires_on == credential.expires_on:
                return self._label(credential, new, now)
            new.undelivered = []
            try:
                self.states.save(new, credential)  # claim first: a racing invocation now sees the level sent
            except StateConflict:
                continue
            failed = set()
            if retry and state.last_level and not alerts:
                level = next((lvl for lvl in self.levels if lvl.name == state.last_level), None)
                if level is not None:
                    failed |= set(self.notifier.send(threshold_alert(credential, level, now), only=retry))
            for alert in alerts:
                failed |= set(self.notifier.send(alert))
                report.alerts.append(alert)
            if failed:
                report.failed_channels[credential.id] = sorted(failed)
                new.undelivered = sorted(failed)
                try:
                    self.states.save(new, credential)
                except StateConflict:
                    log_event(logger, "expiry_state_conflict", logging.WARNING, credential=credential.id)
            return self._label(credential, new, now)
        log_event(logger, "expiry_state_conflict", logging.WARNING, credential=credential.id)
        return "busy"

    def _label(self, credential: Credential, state: CredentialState, now: datetime) -> str:
        level = current_level(credential, now, self.levels)
        silenced = state.silenced(now)
        label = level.name if level else ("no expiry" if credential.expires_on is None else "ok")
        return f"{label} ({silenced})" if silenced and level else label

    def _drift(self, listed: list[Credential], now: datetime, report: SweepReport) -> None:
        hints: dict[str, str] = {}
        if self.dataverse_secret_name:
            with contextlib.suppress(AuthError):  # its value is read anyway; the first 3 characters are the hint
                hints[self.dataverse_secret_name] = self.store.get(self.dataverse_secret_name).value[:3]
        for finding in drift_findings(listed, hints=hints, tolerance_s=self.settings.drift_tolerance_s):
            state = self.states.get(finding.vault_copy.id)
            if state is None or state.drift_notified == finding.text:
                continue
            state.drift_notified = finding.text
            try:
                self.states.save(state, finding.vault_copy)
            except StateConflict:
                continue
            alert = Alert(
                kind="drift",
                level="drift",
                severity="error" if (finding.entra and (finding.entra.days_left(now) or 99) < 30) else "warning",
                credential=finding.vault_copy,
                title=f"Drift: {finding.vault_copy.describe()} disagrees with Entra",
                text=finding.text,
                facts={
                    "Key Vault copy": finding.vault_copy.name,
                    "Key Vault expiry": _day(finding.vault_copy.expires_on),
                    "Entra credential": finding.entra.describe() if finding.entra else "none",
                    "Entra end date": _day(finding.entra.expires_on) if finding.entra else "-",
                },
                fix="Set the Key Vault secret's expiry to the Entra end date and tag it entraKeyId=<keyId>; "
                "if Entra has a newer secret, store that one as a new version.",
            )
            failed = self.notifier.send(alert)
            report.alerts.append(alert)
            if failed:
                report.failed_channels[f"{finding.vault_copy.id} (drift)"] = failed

    def _removed(self, listed: list[Credential], complete: set[str], now: datetime, report: SweepReport) -> None:
        present = {c.id for c in listed}
        for state, row in self.states.all():
            listed_in_full = any(state.id.startswith(prefix) for prefix in complete)
            if state.id in present or not listed_in_full or not state.last_level:
                continue  # only a source listed in full proves a credential gone
            # A row acknowledged or snoozed before saves merged has lost these facts; its id still names them.
            kind, _, rest = state.id.partition(":")
            source = str(row.get("source") or _ID_SOURCES.get(kind, ""))
            name = str(row.get("name") or rest.rpartition(":")[2])
            if source not in _ID_SOURCES.values():
                continue
            gone = Credential(state.id, name, source, state.expires_on, str(row.get("owner") or ""))  # type: ignore[arg-type]
            state.last_level = None
            try:
                self.states.save(state, gone)
            except StateConflict:
                continue
            alert = removed(gone, state, now)
            self.notifier.send(alert)
            report.alerts.append(alert)

    def _probe(self, now: datetime, report: SweepReport) -> None:
        if self.probe is None:
            return
        credential = Credential(PROBE_ID, "Dataverse credential", "probe", None, "dvbridge")
        state = self.states.get(PROBE_ID) or CredentialState(id=PROBE_ID, first_seen=now)
        try:
            outcome = self.probe()
            failure = None
        except AuthError as exc:
            outcome, failure = f"{exc.code}: {exc.cause}", exc
        level = f"failed:{failure.code}" if failure else None  # no level while it works: nothing alerting
        report.credentials.append((credential, "ok" if failure is None else f"FAILED {failure.code}"))
        if state.last_level == level or (state.last_level is None and failure is None):
            if state.etag is None:
                self.states.save(CredentialState(id=PROBE_ID, first_seen=now, last_level=level), credential)
            return
        state.last_level, state.last_notified = level, now
        try:
            self.states.save(state, credential)
        except StateConflict:
            return
        if failure is not None:
            alert = Alert("probe_failed", "probe_failed", "critical", credential,
                          f"The Dataverse credential no longer gets a token: {failure.code}", outcome,
                          {"Step": failure.step, "Code": failure.code}, failure.fix)  # fmt: skip
        else:
            alert = Alert("probe_recovered", "probe_recovered", "info", credential,
                          "The Dataverse credential gets a token again", outcome, {"Result": outcome})  # fmt: skip
        self.notifier.send(alert)
        report.alerts.append(alert)

    # -- acknowledge and snooze -----------------------------------------------------------------------
    def acknowledge(self, credential_id: str, by: str, until: datetime | None = None) -> CredentialState | None:
        def change(state: CredentialState, now: datetime) -> None:
            state.acknowledged_by = by
            state.acknowledged_until = until or now + timedelta(days=DEFAULT_ACK_DAYS)

        return self._silence(credential_id, change)

    def snooze(self, credential_id: str, until: datetime) -> CredentialState | None:
        def change(state: CredentialState, now: datetime) -> None:
            state.snoozed_until = until

        return self._silence(credential_id, change)

    def _silence(
        self, credential_id: str, change: Callable[[CredentialState, datetime], Any]
    ) -> CredentialState | None:
        for _ in range(CLAIM_ATTEMPTS):
            state = self.states.get(credential_id)
            if state is None:
                return None
            change(state, self.clock())
            try:
                return self.states.save(state)
            except StateConflict:
                continue
        raise StateConflict(credential_id)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else "no detail"


def _day(value: datetime | None) -> str:
    return f"{value:%Y-%m-%d}" if value else "no expiry"


def channels_from(settings: ExpirySettings) -> Any:
    return parse_channels(settings.channels)
