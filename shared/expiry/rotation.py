"""The app rotates its own Dataverse credential before it expires: a resumable state machine.

Client secret (``DATAVERSE_CLIENT_SECRET_NAME``)::

    plan -> Graph addPassword -> Entra accepts it -> Key Vault new version -> verify -> switch -> grace -> retire

Certificate (``DATAVERSE_CERTIFICATE_NAME``; Key Vault's lifetime action renews it as a new version)::

    plan -> Graph addKey (proof signed with the current certificate) -> verify -> switch -> grace -> retire

Every step is saved (ETag-guarded, :mod:`shared.expiry.rotation_state`) before the next begins, and one
rotation per credential runs at a time (a blob lease), so a crash anywhere is resumed by the next tick:

- After addPassword only that invocation knows the secret's text. It waits in memory until Entra accepts the
  new secret, and only then writes it to Key Vault: a version Entra still refuses would be the one every
  instance reads when its cache expires. If it dies before the write, the text is lost; the resume removes
  that orphan password (found by its display name, which carries the rotation id, even when the keyId was
  never saved) and adds a new one.
- A failed verify removes the new credential, and Key Vault's latest version holds the old value again.
- The old credential is removed only after the grace period: at least twice the secret cache TTL, so every
  instance has read the new version, and at least ``ROTATION_GRACE_S``.

Each step is one structured log event (``rotation_step``) and one notice through the expiry channels.
"""

from __future__ import annotations

import base64
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, Protocol

from shared.errors import AuthError, ConfigError, CredentialFormatError, DownstreamError, DvbridgeError
from shared.expiry.model import Alert, Credential, Source
from shared.expiry.rotation_state import RotationState
from shared.expiry.state import StateConflict
from shared.graph import ENTRA_KEY_ID_TAG, graph_time, possession_proof
from shared.logging import log_event

if TYPE_CHECKING:
    from shared.config import Settings
    from shared.identity.credential import DataverseCredential
    from shared.identity.secret_store import SecretValue

logger = logging.getLogger(__name__)

ROTATION_ID_TAG = "rotationId"
DISPLAY_NAME_PREFIX = "dvbridge-rotation-"  # + rotation id: how a resume finds an orphan it cannot name by keyId
SECRET_CONTENT_TYPE = "text/plain"  # noqa: S105 - a MIME type  # nosec B105
VERIFY_BACKOFF_FIRST_S = 1.0
VERIFY_BACKOFF_MAX_S = 30.0
HINT_CHARS = 3  # Graph's passwordCredential.hint: the secret's first three characters


@dataclass(frozen=True)
class RotationSettings:
    enabled: bool
    client_id: str
    credential_name: str
    kind: Literal["secret", "certificate"]
    rotate_before_days: int
    lifetime_days: int
    grace_s: float  # already at least twice the secret cache TTL
    verify_deadline_s: float
    retry_after_s: float

    @classmethod
    def from_env(cls, config: Settings, env: Mapping[str, str] | None = None) -> RotationSettings:
        """The rotation settings, with the app's identity settings already read in ``config``; one ConfigError
        lists every problem."""
        from shared.config import SettingsReader
        from shared.settings_registry import EnvVars

        reader = SettingsReader(env)
        enabled = reader.boolean(EnvVars.ROTATION_ENABLED)
        before = reader.integer(EnvVars.ROTATE_BEFORE_DAYS)
        lifetime = reader.integer(EnvVars.ROTATION_SECRET_LIFETIME_DAYS)
        grace = reader.integer(EnvVars.ROTATION_GRACE_S)
        deadline = reader.integer(EnvVars.ROTATION_VERIFY_DEADLINE_S)
        retry = reader.integer(EnvVars.ROTATION_RETRY_AFTER_S)
        if lifetime <= before:
            reader.problem(
                f"{EnvVars.ROTATION_SECRET_LIFETIME_DAYS}={lifetime} must be longer than {EnvVars.ROTATE_BEFORE_DAYS}"
                f"={before}: a new secret would be due for rotation at once",
                EnvVars.ROTATION_SECRET_LIFETIME_DAYS,
            )
        reader.raise_problems()
        return cls(
            enabled=enabled,
            client_id=config.client_id,
            credential_name=config.credential_name,
            kind="certificate" if config.uses_certificate else "secret",
            rotate_before_days=before,
            lifetime_days=lifetime,
            grace_s=float(max(grace, 2 * config.secret_cache_ttl_s)),
            verify_deadline_s=float(deadline),
            retry_after_s=float(retry),
        )


# -- what the machine uses of its collaborators (in-memory fakes in the unit tests) ----------------------------
class AppCredentials(Protocol):
    """``shared.graph.GraphApplications``."""

    def application(self, app_id: str, select: str = ...) -> dict[str, Any]: ...

    def add_password(self, app_id: str, display_name: str, end: datetime) -> dict[str, Any]: ...

    def remove_password(self, app_id: str, key_id: str) -> None: ...

    def add_key(self, app_id: str, certificate_der: bytes, display_name: str, proof: str) -> dict[str, Any]: ...

    def remove_key(self, app_id: str, key_id: str, proof: str) -> None: ...


class VaultVersions(Protocol):
    """``shared.identity.vault_writer.VaultWriter``: one Key Vault object's versions."""

    def latest(self, name: str) -> SecretValue: ...

    def version(self, name: str, version: str) -> SecretValue: ...

    def store(
        self, name: str, value: str, *, content_type: str | None, expires_on: datetime | None, tags: dict[str, str]
    ) -> str: ...

    def disable(self, name: str, version: str) -> None: ...

    def enabled_versions(self, name: str) -> list[str]: ...


class CredentialCheck(Protocol):
    """Proves a credential works: a token from a fresh MSAL app, then Dataverse's WhoAmI and privilege probe."""

    def token(self, credential: DataverseCredential) -> None: ...

    def dataverse(self, credential: DataverseCredential) -> str: ...


class Notices(Protocol):
    def send(self, alert: Alert, only: Sequence[str] | None = None) -> list[str]: ...


class HeldLease(Protocol):
    def release(self) -> None: ...


LeaseTaker = Callable[[str], HeldLease | None]  # the lease of a name, or None while another holder has it


@dataclass
class TickReport:
    outcome: str  # disabled, busy, not due, waiting, retired, failed, in progress
    state: RotationState | None = None
    notices: list[str] = field(default_factory=list)


class RotationFailed(DvbridgeError):
    """A step failed for good: the rotation is undone and alerted; the next attempt waits."""

    def __init__(self, step: str, code: str, cause: str, fix: str) -> None:
        super().__init__(f"rotation step {step} failed: {code}: {cause}")
        self.step, self.code, self.cause, self.fix = step, code, cause, fix


STEP_TITLES = {
    "planned": "Rotation planned",
    "orphan_removed": "A credential the rotation could not finish was removed",
    "added": "New credential added in Entra",
    "stored": "New secret stored in Key Vault",
    "verified": "New credential verified (token, WhoAmI, privileges)",
    "switched": "Switched to the new credential",
    "retired": "Old credential removed: rotation complete",
    "failed": "Rotation failed: the old credential is kept",
}


class Rotator:
    def __init__(
        self,
        settings: RotationSettings,
        *,
        states: Any,  # RotationStore: get(name) / save(state), StateConflict on a lost race
        entra: AppCredentials,
        vault: VaultVersions,
        check: CredentialCheck,
        notices: Notices,
        lease: LeaseTaker,
        switch: Callable[[str], None],
        parse: Callable[[SecretValue], DataverseCredential],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.states = states
        self.entra = entra
        self.vault = vault
        self.check = check
        self.notices = notices
        self.lease = lease
        self.switch = switch
        self.parse = parse
        self.clock = clock
        self.sleep = sleep

    # -- entry point ------------------------------------------------------------------------------------------
    def tick(self, reason: str = "sweep", *, force: bool = False) -> TickReport:
        """Start a rotation when one is due (or ``force``), and move the one in progress as far as it can go
        now. Safe to call from any number of instances at once."""
        if not self.settings.enabled:
            return TickReport("disabled")
        held = self.lease(f"rotation-{self.settings.credential_name}")
        if held is None:
            return TickReport("busy")
        try:
            return self._tick(reason, force)
        finally:
            held.release()

    def _tick(self, reason: str, force: bool) -> TickReport:
        report = TickReport("in progress")
        state = self.states.get(self.settings.credential_name)
        if state is None or not state.in_flight:
            if not force and state is not None and self._waiting_after_failure(state):
                return TickReport("not due", state)
            try:
                state = self._plan(state, reason, force)
            except RotationFailed as exc:
                return TickReport("failed", self._fail_before_start(state, reason, exc), [f"failed: {exc.code}"])
            if state is None:
                return TickReport("not due", self.states.get(self.settings.credential_name))
            self._announce(state, "planned", report)
        try:
            while state.in_flight:
                moved = self._step(state, report)
                if moved is None:
                    report.outcome = "waiting"
                    break
                state = moved
        except RotationFailed as exc:
            if exc.step == "retire":  # the new credential is in use and works: remove the old one next tick
                self._retire_delayed(state, exc, report)
                report.outcome = "waiting"
            else:
                state = self._fail(state, exc, report)
        report.state = state
        if state.phase in ("retired", "failed"):
            report.outcome = state.phase
        return report

    def _waiting_after_failure(self, state: RotationState) -> bool:
        if state.phase != "failed" or state.finished_at is None:
            return False
        return self.clock() < state.finished_at + timedelta(seconds=self.settings.retry_after_s)

    # -- plan -------------------------------------------------------------------------------------------------
    def _plan(self, last: RotationState | None, reason: str, force: bool) -> RotationState | None:
        now = self.clock()
        app = self._application("plan")
        if self.settings.kind == "secret":
            current = self._vault("plan", lambda: self.vault.latest(self.settings.credential_name))
            self._refuse_unrotatable(current)
            old = _password_in_use(app, current)
            end = (graph_time(old["endDateTime"]) if old and old.get("endDateTime") else None) or current.expires_on
            due = end is not None and end - now <= timedelta(days=self.settings.rotate_before_days)
            if not (due or force):
                return None
            old_key_id = str(old["keyId"]) if old else ""
            old_version, new_version = current.version or "", ""
        else:
            versions = self._certificate_versions(app)
            if versions.renewed is None and not force:
                return None  # nothing renewed: Key Vault's lifetime action has not made a new version yet
            if versions.renewed is None:
                raise RotationFailed(
                    "plan", "NoRenewedCertificate",
                    f"Key Vault certificate {self.settings.credential_name} has no version Entra does not know yet",
                    "Renew the certificate in Key Vault (its lifetime action, or az keyvault certificate create) "
                    "and start the rotation again.",
                )  # fmt: skip
            old_key_id, old_version = versions.registered_key_id, versions.registered_version
            new_version = versions.renewed
        state = RotationState(
            credential=self.settings.credential_name,
            kind=self.settings.kind,
            rotation_id=uuid.uuid4().hex[:16],
            phase="planned",
            reason=reason,
            started_at=now,
            updated_at=now,
            old_key_id=old_key_id,
            old_version=old_version,
            new_version=new_version,
            notified=["planned"],
            etag=last.etag if last is not None else None,
        )
        return self._save(state)

    def _refuse_unrotatable(self, current: SecretValue) -> None:
        from shared.identity.connection_string import looks_like_connection_string

        if looks_like_connection_string(current.value):
            raise RotationFailed(
                "plan", "ConnectionStringNotRotated",
                f"Key Vault secret {self.settings.credential_name} holds a connection string",
                "Store the client secret's Value alone in the secret (the other parts are settings), or set "
                "ROTATION_ENABLED=false and rotate it by hand.",
            )  # fmt: skip

    # -- one step ---------------------------------------------------------------------------------------------
    def _step(self, state: RotationState, report: TickReport) -> RotationState | None:
        """Move ``state`` one phase on and save it; None when it must wait (the grace period)."""
        if state.phase == "planned":
            return self._add(state, report)
        if state.phase == "added":
            return self._resume_added(state, report)
        if state.phase == "stored":
            return self._verify(state, report)
        if state.phase == "verified":
            return self._switch(state, report)
        if state.phase == "switched":
            if self.clock() < (state.grace_until or self.clock()):
                return None
            return self._retire(state, report)
        return None

    def _add(self, state: RotationState, report: TickReport) -> RotationState:
        app = self._application("add")
        self._remove_orphans(state, app, report)
        now = self.clock()
        if state.kind == "certificate":
            return self._add_key(state, app, report)
        end = now + timedelta(days=self.settings.lifetime_days)
        try:
            added = self.entra.add_password(self.settings.client_id, _display_name(state), end)
        except (AuthError, DownstreamError) as exc:
            raise _failed("add", exc) from exc
        text = str(added.get("secretText") or "")
        from shared.logging import register_secret

        register_secret(text)
        state.new_key_id = str(added.get("keyId") or "")
        state.new_end = graph_time(str(added["endDateTime"])) if added.get("endDateTime") else end
        state.added_at = now
        state = self._advance(state, "added", report)
        # Still in memory only: Key Vault gets it once Entra accepts it (see the module docstring). A failure
        # from here on is undone by _fail: the new password is removed while the state says "added".
        from shared.identity.credential import DataverseCredential

        self._await_acceptance(state, DataverseCredential(kind="secret", source=state.credential, secret=text))
        try:
            version = self.vault.store(
                state.credential,
                text,
                content_type=SECRET_CONTENT_TYPE,
                expires_on=state.new_end,
                tags={ENTRA_KEY_ID_TAG: state.new_key_id, ROTATION_ID_TAG: state.rotation_id},
            )
        except AuthError as exc:  # its text is about to be lost: _fail removes the password
            raise _failed("store", exc) from exc
        state.new_version = version
        return self._advance(state, "stored", report)

    def _add_key(self, state: RotationState, app: dict[str, Any], report: TickReport) -> RotationState:
        new = self._certificate(state.new_version, "add")
        registered = {_thumbprint(k): str(k.get("keyId")) for k in app.get("keyCredentials") or []}
        if new.thumbprint in registered:  # an earlier attempt's addKey landed, its answer did not
            state.new_key_id = registered[new.thumbprint]
        else:
            old = self._certificate(state.old_version, "add")
            proof = self._proof(app, old)
            try:
                added = self.entra.add_key(self.settings.client_id, _der(new), _display_name(state), proof)
            except (AuthError, DownstreamError) as exc:
                raise _failed("add", exc) from exc
            state.new_key_id = str(added.get("keyId") or "")
        state.new_end = new.not_after
        state.added_at = self.clock()
        state = self._advance(state, "added", report)
        # Key Vault already holds the certificate: nothing to store, straight to the verify.
        return self._advance(state, "stored", report, announce=False)

    def _resume_added(self, state: RotationState, report: TickReport) -> RotationState:
        """A secret added to Entra by an invocation that died: if its Key Vault write landed, adopt it;
        otherwise its text is lost, so remove it and start over."""
        if state.kind == "certificate":
            return self._advance(state, "stored", report, announce=False)
        latest = self._vault("resume", lambda: self.vault.latest(state.credential))
        if latest.tags.get(ROTATION_ID_TAG) == state.rotation_id and latest.version:
            state.new_version = latest.version
            return self._advance(state, "stored", report)
        self._remove_password(state.new_key_id)
        self._remove_orphans(state, self._application("resume"), report, announced=True)
        state.new_key_id, state.new_end, state.added_at = "", None, None
        return self._advance(state, "planned", report, announce=False)

    def _verify(self, state: RotationState, report: TickReport) -> RotationState:
        if state.kind == "secret":
            stored = self._vault("verify", lambda: self.vault.version(state.credential, state.new_version))
            credential = self.parse(stored)
        else:
            credential = self._certificate(state.new_version, "verify")
        self._await_acceptance(state, credential)
        try:
            self.check.dataverse(credential)
        except AuthError as exc:
            raise _failed("verify", exc) from exc
        return self._advance(state, "verified", report)

    def _switch(self, state: RotationState, report: TickReport) -> RotationState:
        self.switch(state.credential)
        now = self.clock()
        state.switched_at = now
        state.grace_until = now + timedelta(seconds=self.settings.grace_s)
        return self._advance(state, "switched", report)

    def _retire(self, state: RotationState, report: TickReport) -> RotationState:
        app = self._application("retire")
        if state.kind == "secret":
            if state.old_key_id and any(str(p.get("keyId")) == state.old_key_id for p in _passwords(app)):
                try:
                    self.entra.remove_password(self.settings.client_id, state.old_key_id)
                except (AuthError, DownstreamError) as exc:
                    raise _failed("retire", exc) from exc
            for version in self._vault("retire", partial(self.vault.enabled_versions, state.credential)):
                if version != state.new_version:  # every older copy: none of them works any more
                    self._vault("retire", partial(self.vault.disable, state.credential, version))
        elif state.old_key_id and any(str(k.get("keyId")) == state.old_key_id for k in app.get("keyCredentials") or []):
            proof = self._proof(app, self._certificate(state.new_version, "retire"))
            try:
                self.entra.remove_key(self.settings.client_id, state.old_key_id, proof)
            except (AuthError, DownstreamError) as exc:
                raise _failed("retire", exc) from exc
        state.finished_at = self.clock()
        return self._advance(state, "retired", report)

    # -- waiting for Entra ------------------------------------------------------------------------------------
    def _await_acceptance(self, state: RotationState, credential: DataverseCredential) -> None:
        """A token with the new credential, retried with backoff until ROTATION_VERIFY_DEADLINE_S after it
        was added: Entra takes a while to accept a new credential everywhere."""
        deadline = (state.added_at or self.clock()) + timedelta(seconds=self.settings.verify_deadline_s)
        wait = VERIFY_BACKOFF_FIRST_S
        while True:
            try:
                self.check.token(credential)
                return
            except AuthError as exc:
                left = (deadline - self.clock()).total_seconds()
                if left <= 0:
                    raise _failed(
                        "verify", exc, note=f"still refused {self.settings.verify_deadline_s:.0f} s after it was added"
                    ) from exc
                log_event(logger, "rotation_awaiting_entra", credential=state.credential, code=exc.code,
                          retry_in_s=round(min(wait, left), 1))  # fmt: skip
                self.sleep(min(wait, left))
                wait = min(wait * 2, VERIFY_BACKOFF_MAX_S)

    # -- failure ----------------------------------------------------------------------------------------------
    def _fail(self, state: RotationState, exc: RotationFailed, report: TickReport) -> RotationState:
        """Undo what the rotation did (unless the new credential is already in use), save it failed, alert."""
        undone: list[str] = []
        if state.phase in ("added", "stored", "verified"):
            undone = self._undo(state)
        state.phase, state.failed_step = "failed", exc.step
        state.failure = f"{exc.code}: {exc.cause}"
        state.finished_at = state.updated_at = self.clock()
        try:
            state = self._save(state)
        except StateConflict:
            log_event(logger, "rotation_state_conflict", logging.WARNING, credential=state.credential)
        log_event(logger, "rotation_step", logging.ERROR, credential=state.credential, rotation=state.rotation_id,
                  step="failed", failed_step=exc.step, code=exc.code, undone=",".join(undone) or "-")  # fmt: skip
        self._send(state, "failed", report, exc=exc, undone=undone)
        return state

    def _fail_before_start(self, last: RotationState | None, reason: str, exc: RotationFailed) -> RotationState:
        now = self.clock()
        state = RotationState(
            credential=self.settings.credential_name, kind=self.settings.kind, rotation_id=uuid.uuid4().hex[:16],
            phase="failed", reason=reason, started_at=now, updated_at=now, finished_at=now, failed_step=exc.step,
            failure=f"{exc.code}: {exc.cause}", etag=last.etag if last is not None else None,
        )  # fmt: skip
        try:
            state = self._save(state)
        except StateConflict:
            return state
        log_event(logger, "rotation_step", logging.ERROR, credential=state.credential, rotation=state.rotation_id,
                  step="failed", failed_step=exc.step, code=exc.code)  # fmt: skip
        self._send(state, "failed", TickReport("failed"), exc=exc, undone=[])
        return state

    def _retire_delayed(self, state: RotationState, exc: RotationFailed, report: TickReport) -> None:
        log_event(logger, "rotation_retire_delayed", logging.WARNING, credential=state.credential,
                  rotation=state.rotation_id, code=exc.code)  # fmt: skip
        step = "retire_delayed"
        if step in state.notified:
            return
        state.notified = [*state.notified, step]
        try:
            self._save(state)
        except StateConflict:
            return
        self._send(state, step, report, exc=exc)

    def _undo(self, state: RotationState) -> list[str]:
        undone = []
        if state.kind == "secret":
            if state.new_version:
                try:
                    old = self.vault.version(state.credential, state.old_version)
                    self.vault.store(state.credential, old.value, content_type=old.content_type,
                                     expires_on=old.expires_on, tags=dict(old.tags))  # fmt: skip
                    self.vault.disable(state.credential, state.new_version)
                    undone.append("Key Vault's latest version holds the old secret again")
                except AuthError as exc:
                    log_event(logger, "rotation_undo_failed", logging.ERROR, credential=state.credential,
                              step="key_vault", code=exc.code)  # fmt: skip
            if state.new_key_id and self._remove_password(state.new_key_id):
                undone.append("the new password was removed from Entra")
        elif state.new_key_id:
            try:
                app = self._application("undo")
                proof = self._proof(app, self._certificate(state.old_version, "undo"))
                self.entra.remove_key(self.settings.client_id, state.new_key_id, proof)
                undone.append("the new certificate was removed from Entra")
            except (AuthError, DownstreamError, RotationFailed) as exc:
                log_event(logger, "rotation_undo_failed", logging.ERROR, credential=state.credential,
                          step="entra", code=getattr(exc, "code", type(exc).__name__))  # fmt: skip
        return undone

    def _remove_password(self, key_id: str) -> bool:
        if not key_id:
            return False
        try:
            self.entra.remove_password(self.settings.client_id, key_id)
        except (AuthError, DownstreamError) as exc:  # the next resume finds it by its display name
            log_event(logger, "rotation_undo_failed", logging.ERROR, credential=self.settings.credential_name,
                      step="entra", code=getattr(exc, "code", type(exc).__name__))  # fmt: skip
            return False
        return True

    def _remove_orphans(
        self, state: RotationState, app: dict[str, Any], report: TickReport, *, announced: bool = False
    ) -> None:
        orphans = [str(p["keyId"]) for p in _passwords(app) if p.get("displayName") == _display_name(state)]
        for key_id in orphans:
            try:
                self.entra.remove_password(self.settings.client_id, key_id)
            except (AuthError, DownstreamError) as exc:
                raise _failed("add", exc) from exc
        if orphans or announced:
            log_event(logger, "rotation_step", logging.WARNING, credential=state.credential,
                      rotation=state.rotation_id, step="orphan_removed", removed=len(orphans) or 1)  # fmt: skip
            self._send(state, "orphan_removed", report)

    # -- helpers ----------------------------------------------------------------------------------------------
    def _advance(self, state: RotationState, phase: str, report: TickReport, *, announce: bool = True) -> RotationState:
        """Save ``state`` in ``phase``, then announce it. The notice goes after the save: a crash between them
        loses a notice, never repeats one (a resumed rotation does not announce a step twice)."""
        fresh = announce and phase not in state.notified
        state.phase = phase  # type: ignore[assignment]
        state.updated_at = self.clock()
        if fresh:
            state.notified = [*state.notified, phase]
        state = self._save(state)
        if announce:
            self._announce(state, phase, report, send=fresh)
        return state

    def _save(self, state: RotationState) -> RotationState:
        saved: RotationState = self.states.save(state)
        return saved

    def _announce(self, state: RotationState, step: str, report: TickReport, *, send: bool = True) -> None:
        """The step's log event, and its notice."""
        log_event(logger, "rotation_step", credential=state.credential, rotation=state.rotation_id, step=step,
                  key_id=state.new_key_id or "-", version=state.new_version or "-")  # fmt: skip
        if send:
            self._send(state, step, report)

    def _send(
        self, state: RotationState, step: str, report: TickReport, *, exc: RotationFailed | None = None,
        undone: list[str] | None = None,
    ) -> None:  # fmt: skip
        alert = rotation_alert(state, step, exc=exc, undone=undone or [], grace_s=self.settings.grace_s)
        failed = self.notices.send(alert)
        report.notices.append(step)
        if failed:
            log_event(logger, "rotation_notice_undelivered", logging.WARNING, step=step, channels=",".join(failed))

    def _application(self, step: str) -> dict[str, Any]:
        try:
            return self.entra.application(self.settings.client_id)
        except (AuthError, DownstreamError) as exc:
            raise _failed(step, exc) from exc

    def _vault(self, step: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except AuthError as exc:
            raise _failed(step, exc) from exc

    def _certificate(self, version: str, step: str) -> DataverseCredential:
        secret = self._vault(step, lambda: self.vault.version(self.settings.credential_name, version))
        try:
            return self.parse(secret)
        except CredentialFormatError as exc:
            raise RotationFailed(
                step, "CredentialFormatError", str(exc), "Re-import the certificate with its key."
            ) from exc

    def _certificate_versions(self, app: dict[str, Any]) -> _CertificateVersions:
        name = self.settings.credential_name
        registered = {_thumbprint(k): str(k.get("keyId")) for k in app.get("keyCredentials") or []}
        versions = self._vault("plan", lambda: self.vault.enabled_versions(name))  # newest first
        renewed: str | None = None
        for version in versions:
            credential = self._certificate(version, "plan")
            if credential.thumbprint in registered:
                return _CertificateVersions(renewed, version, registered[credential.thumbprint or ""])
            if renewed is None:
                renewed = version
        raise RotationFailed(
            "plan", "NoRegisteredCertificate",
            f"no version of Key Vault certificate {name} is registered on app {self.settings.client_id}",
            "Upload the certificate in use to the app registration (Certificates & secrets) once; rotation keeps it "
            "current from then on, because addKey must be signed by a certificate the app already has.",
        )  # fmt: skip

    def _proof(self, app: dict[str, Any], signer: DataverseCredential) -> str:
        if not signer.private_key_pem or not signer.thumbprint:
            raise RotationFailed("add", "NoPrivateKey", "the signing certificate has no private key",
                                 "Import the certificate into Key Vault with its private key.")  # fmt: skip
        return possession_proof(str(app.get("id")), signer.private_key_pem, bytes.fromhex(signer.thumbprint),
                                self.clock().timestamp())  # fmt: skip


@dataclass(frozen=True)
class _CertificateVersions:
    renewed: str | None  # the newest enabled version Entra does not know, if newer than the registered one
    registered_version: str
    registered_key_id: str


def _failed(step: str, exc: AuthError | DownstreamError, *, note: str = "") -> RotationFailed:
    code = getattr(exc, "code", "") or type(exc).__name__
    cause = getattr(exc, "cause", "") or str(exc)
    status = getattr(exc, "status", None)
    if status is not None and str(status) not in cause:  # the status is what a person looks up first
        cause = f"{cause} (HTTP {status})"
    fix = getattr(exc, "fix", "") or "Check the service named in the cause; the rotation retries later."
    return RotationFailed(step, code, f"{cause} ({note})" if note else cause, fix)


def _display_name(state: RotationState) -> str:
    return f"{DISPLAY_NAME_PREFIX}{state.rotation_id}"


def _passwords(app: dict[str, Any]) -> list[dict[str, Any]]:
    return list(app.get("passwordCredentials") or [])


def _password_in_use(app: dict[str, Any], current: SecretValue) -> dict[str, Any] | None:
    """The Entra password Key Vault's secret is a copy of: by its entraKeyId tag, else by Graph's hint."""
    passwords = _passwords(app)
    tagged = current.tags.get(ENTRA_KEY_ID_TAG)
    if tagged:
        found = next((p for p in passwords if str(p.get("keyId")) == tagged), None)
        if found is not None:
            return found
    hinted = [p for p in passwords if p.get("hint") == current.value.strip()[:HINT_CHARS]]
    return hinted[0] if len(hinted) == 1 else None


def _thumbprint(key: dict[str, Any]) -> str:
    """A Graph keyCredential's SHA-1 thumbprint (customKeyIdentifier, base64), lower-case hex."""
    raw = key.get("customKeyIdentifier") or ""
    try:
        return base64.b64decode(raw).hex()
    except ValueError:
        return ""


def _der(credential: DataverseCredential) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    return x509.load_pem_x509_certificate((credential.certificate_pem or "").encode()).public_bytes(
        serialization.Encoding.DER
    )


def rotation_alert(
    state: RotationState,
    step: str,
    *,
    exc: RotationFailed | None = None,
    undone: Sequence[str] = (),
    grace_s: float = 0,
) -> Alert:
    """The notice for one step of a rotation."""
    source: Source = "keyvault-secret" if state.kind == "secret" else "keyvault-certificate"
    credential = Credential(
        id=f"rotation:{state.credential}", name=state.credential, source=source, expires_on=state.new_end,
        owner="dvbridge's Dataverse credential", key_id=state.new_key_id or None,
    )  # fmt: skip
    facts = {"Rotation": state.rotation_id, "Step": step, "Started by": state.reason}
    if state.old_key_id:
        facts["Old Entra key"] = state.old_key_id
    if state.new_key_id:
        facts["New Entra key"] = state.new_key_id
    if state.new_end:
        facts["New end date"] = f"{state.new_end:%Y-%m-%d}"
    if state.new_version:
        facts["Key Vault version"] = state.new_version
    texts = {
        "planned": "dvbridge starts rotating its Dataverse credential before it expires.",
        "orphan_removed": "A new password from an interrupted attempt was never stored; it was removed, and "
        "the rotation starts that step again.",
        "added": "Entra holds the new credential; dvbridge waits until Entra accepts it.",
        "stored": "Key Vault's latest version holds the new secret, with its end date and entraKeyId tag.",
        "verified": "A fresh token, WhoAmI and the privilege probe succeed with the new credential.",
        "switched": f"This instance uses the new credential now, the others within their cache TTL. The old one "
        f"is removed after the grace period ({grace_s:.0f} s).",
        "retired": "The old credential is removed from Entra and its Key Vault versions are disabled.",
    }
    if step == "retire_delayed" and exc is not None:
        return replace(
            _ALERT_BASE, level=step, severity="warning", credential=credential,
            title=f"Rotation of {state.credential}: the old credential could not be removed yet ({exc.code})",
            text=f"{exc.cause}. The new credential is in use and works; the next rotation sweep tries again.",
            facts=facts | {"Code": exc.code}, fix=exc.fix,
        )  # fmt: skip
    if exc is None:
        return replace(
            _ALERT_BASE, level=step, severity="info", credential=credential,
            title=f"{STEP_TITLES.get(step, step)}: {state.credential}", text=texts.get(step, step), facts=facts,
        )  # fmt: skip
    facts |= {"Failed step": exc.step, "Code": exc.code}
    done = "; ".join(undone) if undone else "nothing had changed yet"
    return replace(
        _ALERT_BASE, level="failed", severity="error", credential=credential,
        title=f"Rotation of {state.credential} failed at {exc.step}: {exc.code}",
        text=f"{exc.cause}. The old credential is kept and still works ({done}).", facts=facts, fix=exc.fix,
    )  # fmt: skip


_ALERT_BASE = Alert("rotation", "", "info", Credential("rotation:", "", "keyvault-secret", None, ""), "", "", {})

__all__ = ["ConfigError", "RotationFailed", "RotationSettings", "Rotator", "TickReport", "rotation_alert"]
