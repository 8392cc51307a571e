"""The expiry monitor assembled from the composition root's objects (managed identity for Key Vault,
Graph and storage), and the Dataverse probe the sweep runs."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from shared.composition import Worker, worker
from shared.errors import AuthError, DataverseError
from shared.expiry.monitor import ExpiryMonitor
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
