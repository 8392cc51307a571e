"""The worker's managed identity.

We use ``ManagedIdentityCredential`` directly rather than ``DefaultAzureCredential``: in Azure the
platform sets IDENTITY_ENDPOINT/IDENTITY_HEADER and the managed identity is the only right answer;
the default chain would probe environment variables, workload identity, CLI, PowerShell and IMDS
first, add up to seconds to a cold start when something is misconfigured, and could silently pick a
developer's CLI login. One credential per worker keeps its token cache warm across invocations.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

    from shared.config import Settings

_credentials: dict[str | None, TokenCredential] = {}
_lock = threading.Lock()


def managed_identity_credential(client_id: str | None) -> TokenCredential:
    """The worker-wide credential for the system-assigned identity, or the user-assigned ``client_id``."""
    with _lock:
        credential = _credentials.get(client_id)
        if credential is None:
            from azure.identity import ManagedIdentityCredential

            # Constructed on first use: it reads IDENTITY_ENDPOINT/IDENTITY_HEADER at construction.
            credential = ManagedIdentityCredential(client_id=client_id) if client_id else ManagedIdentityCredential()
            _credentials[client_id] = credential
        return credential


def identity_label(config: Settings) -> str:
    """How errors and the doctor name the identity in use."""
    client_id = config.managed_identity_client_id
    return f"user-assigned {client_id}" if client_id else "system-assigned"


def reset_managed_identity() -> None:
    """Forget the worker's credentials (tests that change the environment)."""
    with _lock:
        _credentials.clear()
