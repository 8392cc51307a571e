"""The doctor: walk the identity chain step by step and say, for each step, what is wrong and how
to fix it.

    settings -> managed identity -> Key Vault read -> credential -> credential expiry
             -> Entra token -> token claims -> WhoAmI -> privileges -> rotation readiness

``python -m shared.identity.doctor [--json] [--env-file .devstack/env]`` prints the report and
exits non-zero when a step failed; ``GET /api/health/doctor`` returns the same report as JSON.
Tokens are never printed: only their claims (aud, appid, tid, exp).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from shared.config import Settings, load_env_file, read_float
from shared.errors import AuthError, ConfigError, DataverseError
from shared.identity.doctor_expiry import expiry_step
from shared.identity.doctor_report import DoctorReport, StepResult
from shared.identity.doctor_rotation import STEP as ROTATION_STEP
from shared.identity.doctor_rotation import rotation_step
from shared.settings_registry import EnvVars

if TYPE_CHECKING:  # the client loads requests: imported when the doctor runs
    from shared.dataverse.client import DataverseClient
    from shared.dataverse.wire import TokenSource

VAULT_SCOPE = "https://vault.azure.net/.default"


def _failure(name: str, exc: AuthError | ConfigError) -> StepResult:
    if isinstance(exc, AuthError):
        return StepResult(name, "fail", f"{exc.code}: {exc.detail or exc.cause}", exc.code, exc.cause, exc.fix)
    return StepResult(
        name,
        "fail",
        f"{len(exc.problems)} problem(s)",
        "ConfigError",
        "; ".join(exc.problems),
        "Correct the settings listed (app settings in Azure; .devstack/env or local.settings.json locally).",
    )


def run_doctor(env: Mapping[str, str] | None = None, *, now: Callable[[], float] = time.time) -> DoctorReport:
    """Run every step; a failed step makes the steps that depend on it ``skip``."""
    from shared.identity.credential import load_credential
    from shared.identity.managed_identity import identity_label, managed_identity_credential
    from shared.identity.secret_store import SecretStore, key_vault_error
    from shared.identity.token_provider import DataverseTokenProvider

    report = DoctorReport()
    remaining = [
        "managed identity",
        "key vault",
        "credential",
        "credential expiry",
        "entra token",
        "token claims",
        "whoami",
        "privileges",
        ROTATION_STEP,
    ]

    def skip_rest(reason: str) -> DoctorReport:
        report.steps += [StepResult(n, "skip", f"skipped: {reason}") for n in remaining]
        return report

    problems: list[str] = []
    try:
        settings = Settings.from_env(env)
    except ConfigError as exc:
        problems += exc.problems
    try:  # the sweep's own tolerance, so that the doctor and the sweep agree on what drift is
        drift_tolerance_s = read_float(EnvVars.EXPIRY_DRIFT_TOLERANCE_S, env)
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        report.steps.append(_failure("settings", ConfigError(problems)))
        return skip_rest("settings are invalid")
    kind = "certificate" if settings.uses_certificate else "secret"
    report.steps.append(
        StepResult(
            "settings",
            "ok",
            f"Dataverse {settings.dataverse_url}, app {settings.client_id}, credential: Key Vault {kind}"
            f" {settings.credential_name}",
        )
    )

    remaining.pop(0)
    label = identity_label(settings)
    credential = managed_identity_credential(settings.managed_identity_client_id)
    try:
        mi_token = credential.get_token(VAULT_SCOPE)
    except Exception as exc:  # mapped to the catalogue
        error = key_vault_error(exc, identity=label, vault=settings.key_vault_url, name=settings.credential_name)
        report.steps.append(_failure("managed identity", error))
        return skip_rest("no managed-identity token")
    hours = (mi_token.expires_on - now()) / 3600
    report.steps.append(StepResult("managed identity", "ok", f"{label} identity: Key Vault token valid {hours:.1f} h"))

    remaining.pop(0)
    store = SecretStore(
        settings.key_vault_url,
        credential,
        ttl_s=0,  # the doctor always reads Key Vault itself
        max_stale_s=0,
        verify_challenge_resource=settings.verify_challenge_resource,
        identity_label=label,
    )
    try:
        secret = store.get(settings.credential_name)
    except AuthError as exc:
        report.steps.append(_failure("key vault", exc))
        return skip_rest("the credential could not be read")
    report.steps.append(
        StepResult(
            "key vault",
            "ok",
            f"read {settings.credential_name} (version {secret.version}, {secret.content_type or 'no content type'})",
        )
    )

    remaining.pop(0)
    try:
        dv_credential = load_credential(settings, store)
    except (AuthError, ConfigError) as exc:
        report.steps.append(_failure("credential", exc))
        return skip_rest("the credential is unusable")
    described = (
        f"certificate, thumbprint {dv_credential.thumbprint}"
        if dv_credential.kind == "certificate"
        else f"client secret ({len(dv_credential.secret or '')} characters)"
    )
    report.steps.append(StepResult("credential", "ok", described))

    remaining.pop(0)
    report.steps.append(expiry_step(settings, credential, secret, dv_credential, now(), drift_tolerance_s))

    remaining.pop(0)
    provider = DataverseTokenProvider(settings, store)
    try:
        token = provider.token_for_invocation()
    except (AuthError, ConfigError) as exc:
        report.steps.append(_failure("entra token", exc))
        return skip_rest("no Dataverse token")
    report.steps.append(
        StepResult(
            "entra token",
            "ok",
            f"token for {settings.dataverse_scope}, valid {token.expires_in(now()) / 60:.0f} min",
        )
    )

    remaining.pop(0)
    claims = _claims_step(settings, token.value, now())
    report.steps.append(claims)
    if claims.status == "fail":
        return skip_rest("the token would be refused")

    remaining.pop(0)
    client = probe_client(settings, provider)
    whoami = whoami_step(settings, client)
    report.steps.append(whoami)
    if whoami.status == "fail":
        return skip_rest("Dataverse refused the caller")

    remaining.pop(0)
    report.steps.append(privileges_step(settings, client))

    remaining.pop(0)  # rotation needs the identity, not the privileges: it runs whatever they said
    report.steps.append(rotation_step(settings, credential, dv_credential, now(), env=env))
    return report


def probe_client(settings: Settings, tokens: TokenSource) -> DataverseClient:
    """A Dataverse client that tries each request once (a 401 still refreshes the token once): the doctor
    reports what it finds now, within HTTP_TIMEOUT_S."""
    from shared.dataverse.client import ClientOptions, DataverseClient
    from shared.outgoing_http import PROBE

    options = ClientOptions(max_concurrency=1, policy=PROBE.with_timeout(settings.http_timeout_s))
    return DataverseClient(settings.dataverse_url, tokens, options=options)


def privileges_step(settings: Settings, client: DataverseClient) -> StepResult:
    """Read and write privileges on each configured table, without changing any data.

    Read: ``GET <set>?$top=1``. Write: ``PATCH <set>(<random id>)`` with ``If-Match: *``: with the
    privilege the answer is 404 (no such record, nothing written); without it 403. That Dataverse checks
    the privilege before the record's existence is UNCONFIRMED against a real environment.
    """
    import uuid

    from shared.dataverse.addressing import entity_path
    from shared.identity.diagnosis import diagnose

    if not settings.tables:
        return StepResult(
            "privileges", "skip", "set DATAVERSE_TABLES (e.g. accounts,contacts) to probe read/write privileges"
        )
    checked = []
    for entity_set in settings.tables:
        probes: list[tuple[str, str, str, dict[str, Any], set[int]]] = [
            ("read", "GET", entity_set, {"params": {"$top": "1"}}, {200}),
            ("write", "PATCH", entity_path(entity_set, str(uuid.uuid4())),
             {"body": {}, "headers": {"If-Match": "*"}}, {404}),
        ]  # fmt: skip
        for kind, method, path, kwargs, expected in probes:
            try:
                response = client.request(method, path, raise_for_status=False, **kwargs)
            except DataverseError as exc:  # no answer at all
                found = diagnose("DataverseUnreachable", url=settings.dataverse_url)
                return StepResult(
                    "privileges", "fail", f"{kind} on {entity_set}: {exc.code}", found.code, found.cause, found.fix
                )
            if response.status_code in expected:
                checked.append(f"{entity_set}:{kind}")
                continue
            try:
                error = response.json()["error"]
                code, message = str(error.get("code") or ""), str(error.get("message") or "")
            except (ValueError, KeyError, TypeError):
                code, message = f"HTTP {response.status_code}", ""
            found = diagnose(code, client_id=settings.client_id, url=settings.dataverse_url, detail=message)
            return StepResult(
                "privileges",
                "fail",
                f"{kind} on {entity_set}: {code} {message[:160]}",
                found.code,
                found.cause,
                found.fix,
            )
    return StepResult(
        "privileges", "ok", "read and write allowed on " + ", ".join(settings.tables), details={"checked": checked}
    )


def whoami_step(settings: Settings, client: DataverseClient) -> StepResult:
    """Call WhoAmI: proves the application user exists in the environment."""
    from shared.identity.diagnosis import diagnose

    try:
        body = client.whoami()
    except DataverseError as exc:
        if exc.status == 0:  # no answer: the environment is not reachable from here
            found = diagnose("DataverseUnreachable", url=settings.dataverse_url)
            reason = type(exc.__cause__).__name__ if exc.__cause__ is not None else exc.code
            return StepResult("whoami", "fail", f"DataverseUnreachable: {reason}", found.code, found.cause, found.fix)
        code, message = ("DataverseUnauthorized", "") if exc.status == 401 else (exc.code, exc.message)
        found = diagnose(code, client_id=settings.client_id, url=settings.dataverse_url, detail=message)
        return StepResult("whoami", "fail", f"{code}: {message or found.title}", found.code, found.cause, found.fix)
    return StepResult(
        "whoami",
        "ok",
        f"UserId={body.get('UserId')}, OrganizationId={body.get('OrganizationId')}",
        details={k: body.get(k) for k in ("UserId", "BusinessUnitId", "OrganizationId")},
    )


def _claims_step(settings: Settings, token: str, now: float) -> StepResult:
    import jwt

    claims = jwt.decode(token, options={"verify_signature": False})
    aud = str(claims.get("aud", "")).rstrip("/")
    shown = {k: claims.get(k) for k in ("aud", "appid", "tid", "exp")}
    problems = []
    if aud.lower() != settings.dataverse_url.lower():
        problems.append(f"aud is {aud}, expected {settings.dataverse_url}")
    if str(claims.get("appid", claims.get("azp", ""))).lower() != settings.client_id.lower():
        problems.append(f"appid is {claims.get('appid')}, expected {settings.client_id}")
    if str(claims.get("tid", "")).lower() != settings.tenant_id.lower() and "." not in settings.tenant_id:
        problems.append(f"tid is {claims.get('tid')}, expected {settings.tenant_id}")
    if float(claims.get("exp", 0)) <= now:
        problems.append("the token is already expired")
    summary = ", ".join(f"{k}={v}" for k, v in shown.items())
    if problems:
        return StepResult(
            "token claims",
            "fail",
            summary,
            "TokenClaimsMismatch",
            "; ".join(problems),
            "Dataverse accepts only tokens whose aud is the environment URL: check DATAVERSE_URL and the tenant.",
            shown,
        )
    return StepResult("token claims", "ok", summary, details=shown)


def main(argv: list[str] | None = None) -> int:
    import logging

    parser = argparse.ArgumentParser(prog="python -m shared.identity.doctor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--env-file", help="KEY=VALUE file to load first (e.g. .devstack/env)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.env_file:
        load_env_file(args.env_file)
    report = run_doctor()
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.render())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
