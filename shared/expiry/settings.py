"""The expiry monitor's settings, validated at start-up. Kept apart (stdlib only) so indexing stays light."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from shared.config import SettingsReader
from shared.settings_registry import (
    DEFAULT_DRIFT_TOLERANCE_S,
    DEFAULT_SWEEP_SCHEDULE,
    DEFAULT_THRESHOLDS_DAYS,
    EnvVars,
)

__all__ = ["DEFAULT_DRIFT_TOLERANCE_S", "DEFAULT_SWEEP_SCHEDULE", "DEFAULT_THRESHOLDS_DAYS", "ExpirySettings"]


def vault_name(vault_url: str) -> str:
    return (urlsplit(vault_url).hostname or vault_url).split(".")[0].lower()


@dataclass(frozen=True)
class ExpirySettings:
    thresholds_days: tuple[int, ...] = DEFAULT_THRESHOLDS_DAYS
    channels: str = ""
    app_ids: tuple[str, ...] = ()
    event_topics: tuple[str, ...] = ()
    drift_tolerance_s: float = DEFAULT_DRIFT_TOLERANCE_S
    vault_name: str = ""  # names credentials and matches event topics; default: KEY_VAULT_URL's first label

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ExpirySettings:
        """Read and validate the expiry settings; raise one ConfigError listing every problem."""
        reader = SettingsReader(env)
        thresholds = reader.days(EnvVars.EXPIRY_THRESHOLDS_DAYS)
        tolerance = reader.number(EnvVars.EXPIRY_DRIFT_TOLERANCE_S)
        # DATAVERSE_CLIENT_ID and KEY_VAULT_URL are only borrowed as defaults: Settings.from_env validates them,
        # and a broken identity setting must not stop indexing here (the doctor reports it).
        apps = reader.items(EnvVars.EXPIRY_APP_IDS) or (reader.raw(EnvVars.DATAVERSE_CLIENT_ID),)
        vault = (reader.text(EnvVars.EXPIRY_VAULT_NAME) or vault_name(reader.raw(EnvVars.KEY_VAULT_URL))).lower()
        own_topic = f"/providers/Microsoft.KeyVault/vaults/{vault}" if vault else ""
        topics = reader.items(EnvVars.EXPIRY_EVENT_TOPICS) or (own_topic,)
        channels = reader.text(EnvVars.EXPIRY_CHANNELS)
        reader.raise_problems()
        return cls(
            thresholds_days=thresholds,
            channels=channels,
            app_ids=tuple(a for a in apps if a),
            event_topics=tuple(t for t in topics if t),
            drift_tolerance_s=tolerance,
            vault_name=vault,
        )
