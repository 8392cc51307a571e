"""The worker's expiry monitor, built once from the settings (managed identity for Key Vault and Graph)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime

from shared.expiry.monitor import ExpiryMonitor
from shared.expiry.settings import ExpirySettings

_lock = threading.Lock()
_monitor: ExpiryMonitor | None = None


def dataverse_probe() -> str:
    """The current Dataverse credential still gets a token, and WhoAmI answers. Raises AuthError."""
    from shared.dataverse.client import ClientOptions, DataverseClient
    from shared.errors import AuthError, DataverseError
    from shared.identity.worker import settings, token_provider

    client = DataverseClient(settings().dataverse_url, token_provider(), options=ClientOptions())
    try:
        who = client.whoami()
    except DataverseError as exc:
        raise AuthError(
            f"Dataverse {exc.status}",
            cause=f"a token was issued but WhoAmI failed: {exc.code} {exc.message}",
            fix="Check the application user and its security role in the Power Platform admin center.",
            step="whoami",
            status=exc.status,
        ) from exc
    return f"token and WhoAmI ok (UserId {who.get('UserId')})"


def build_monitor(clock: Callable[[], datetime] | None = None) -> ExpiryMonitor:
    from shared.expiry.inventory import GraphReader
    from shared.expiry.notify import Notifier, parse_channels
    from shared.expiry.state import STATE_TABLE, StateStore
    from shared.identity.managed_identity import managed_identity_credential
    from shared.identity.worker import secret_store, settings
    from shared.sync.worker import storage

    config = settings()
    expiry = ExpirySettings.from_env()
    store = secret_store()
    kwargs = {"clock": clock} if clock else {}
    return ExpiryMonitor(
        expiry,
        store=store,
        states=StateStore(storage().table(STATE_TABLE)),
        notifier=Notifier(parse_channels(expiry.channels), lambda name: store.get(name).value),
        graph=GraphReader(config.graph_url, managed_identity_credential(config.managed_identity_client_id)),
        probe=dataverse_probe,
        # A connection-string setting is not a secret name: no hint matching then.
        dataverse_secret_name=config.client_secret_name if "=" not in (config.client_secret_name or "=") else None,
        **kwargs,
    )


def monitor() -> ExpiryMonitor:
    global _monitor
    with _lock:
        if _monitor is None:
            _monitor = build_monitor()
        return _monitor


def reset() -> None:
    global _monitor
    with _lock:
        _monitor = None
