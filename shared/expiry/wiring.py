"""The expiry monitor and the credential rotation assembled from the composition root's objects (managed
identity for Key Vault, Graph and storage), and the Dataverse probe the sweep runs."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from shared.composition import Worker, worker
from shared.errors import AuthError, DataverseError
from shared.expiry.monitor import ExpiryMonitor
from shared.expiry.rotation import RotationSettings, Rotator
from shared.expiry.settings import ExpirySettings


def dataverse_probe(source: Worker | None = None) -> str:
    """The current Dataverse credential still gets a token, and WhoAmI answers. Raises AuthError."""
    try:
        who = (source or worker()).dataverse().whoami()
    except DataverseError as exc:
        raise AuthError(
            f"Dataverse {exc.status}",
            cause=f"a token was issued but WhoAmI failed: {exc.code} {exc.message}",
            fix="Check the application user and its security role in the Power Platform admin center.",
            step="whoami",
            status=exc.status,
        ) from exc
    return f"token and WhoAmI ok (UserId {who.get('UserId')})"


def build_monitor(clock: Callable[[], datetime] | None = None, source: Worker | None = None) -> ExpiryMonitor:
    from shared.expiry.notify import Notifier, parse_channels
    from shared.expiry.state import STATE_TABLE, StateStore

    root = source or worker()
    config = root.settings()
    expiry = ExpirySettings.from_env()
    kwargs = {"clock": clock} if clock else {}
    return ExpiryMonitor(
        expiry,
        store=root.secret_store(),
        states=StateStore(root.storage().table(STATE_TABLE)),
        notifier=Notifier(parse_channels(expiry.channels), root.secret, session=root.http_session()),
        graph=root.graph(),
        probe=lambda: dataverse_probe(root),
        # A connection-string setting is not a secret name: no hint matching then.
        dataverse_secret_name=config.client_secret_name if "=" not in (config.client_secret_name or "=") else None,
        **kwargs,
    )


def monitor() -> ExpiryMonitor:
    """The monitor for this invocation, on the worker's objects (their caches outlive it)."""
    return build_monitor()


def build_rotator(source: Worker | None = None, clock: Callable[[], datetime] | None = None) -> Rotator:
    """The rotation of the app's own Dataverse credential, on the worker's objects."""
    from shared.expiry.notify import Notifier, parse_channels
    from shared.expiry.rotation_state import ROTATION_TABLE, RotationStore
    from shared.identity.credential import DataverseCredential, certificate_credential
    from shared.identity.credential_check import CredentialCheck
    from shared.identity.managed_identity import identity_label
    from shared.identity.secret_store import SecretValue
    from shared.identity.vault_writer import VaultWriter

    root = source or worker()
    config = root.settings()
    settings = RotationSettings.from_env(config)
    expiry = ExpirySettings.from_env()
    store = root.secret_store()

    def parse(secret: SecretValue) -> DataverseCredential:
        if settings.kind == "certificate":
            return certificate_credential(secret)
        return DataverseCredential(kind="secret", source=secret.name, secret=secret.value.strip())

    return Rotator(
        settings,
        states=RotationStore(root.storage().table(ROTATION_TABLE)),
        entra=root.graph(),
        vault=VaultWriter(
            config.key_vault_url,
            root.credential(),
            verify_challenge_resource=config.verify_challenge_resource,
            identity_label=identity_label(config),
        ),
        check=CredentialCheck(config),
        notices=Notifier(parse_channels(expiry.channels), root.secret, session=root.http_session()),
        lease=root.storage().lease,
        # The token provider re-reads the credential through the store and rebuilds its MSAL app when it changed.
        switch=lambda name: store.invalidate(name),
        parse=parse,
        clock=clock or (lambda: datetime.now(UTC)),
    )
