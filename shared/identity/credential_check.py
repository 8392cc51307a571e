"""Proving a Dataverse credential works before the app depends on it: a token from a fresh MSAL app (no cache
shared with the worker's), then WhoAmI and the doctor's privilege probe with that token. The rotation runs
it on a new credential before it switches to it."""

from __future__ import annotations

from shared.config import Settings
from shared.errors import AuthError
from shared.identity.credential import DataverseCredential
from shared.identity.token_provider import DataverseTokenProvider


class CredentialCheck:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def __repr__(self) -> str:
        return f"CredentialCheck(client_id={self._settings.client_id!r})"

    def token(self, credential: DataverseCredential) -> None:
        """A token for the Dataverse scope with ``credential`` only. Raises AuthError (the catalogue's cause
        and fix: AADSTS7000215 while Entra does not accept a new secret yet)."""
        DataverseTokenProvider(self._settings, None, fixed=credential).token_for_invocation()

    def dataverse(self, credential: DataverseCredential) -> str:
        """WhoAmI and the privilege probe of DATAVERSE_TABLES with a token from ``credential``. Raises AuthError
        naming the step that failed."""
        from shared.identity.doctor import privileges_step, probe_client, whoami_step
        from shared.identity.doctor_report import StepResult

        client = probe_client(self._settings, DataverseTokenProvider(self._settings, None, fixed=credential))
        steps: list[StepResult] = [whoami_step(self._settings, client)]
        if steps[0].status == "ok":
            steps.append(privileges_step(self._settings, client))
        for step in steps:
            if step.status == "fail":
                raise AuthError(
                    step.code or step.name,
                    cause=f"{step.name}: {step.cause or step.summary}",
                    fix=step.fix or "Run the doctor (GET /api/doctor) for the whole chain.",
                    step=step.name,
                )
        return "; ".join(f"{s.name}: {s.summary}" for s in steps)
