"""The expiry monitor's settings, validated at start-up. Kept apart (stdlib only) so indexing stays light."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from shared.errors import ConfigError

DEFAULT_SWEEP_SCHEDULE = "0 0 6 * * *"  # daily 06:00 UTC: the EXPIRY_SWEEP_SCHEDULE main.bicep and local settings set
DEFAULT_THRESHOLDS_DAYS = (30, 14, 7, 1)
DEFAULT_DRIFT_TOLERANCE_S = 86400  # Key Vault exp and Entra endDateTime may differ by a day (time zones, typing)


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
    def from_env(cls, environ: dict[str, str] | None = None) -> ExpirySettings:
        env = dict(os.environ if environ is None else environ)
        problems = []
        try:
            thresholds = tuple(int(d) for d in env.get("EXPIRY_THRESHOLDS_DAYS", "30,14,7,1").split(",") if d.strip())
            if not thresholds or any(d <= 0 for d in thresholds):
                raise ValueError
        except ValueError:
            problems.append("EXPIRY_THRESHOLDS_DAYS must be positive whole days, e.g. 30,14,7,1")
            thresholds = DEFAULT_THRESHOLDS_DAYS
        apps = env.get("EXPIRY_APP_IDS") or env.get("DATAVERSE_CLIENT_ID", "")
        vault = (env.get("EXPIRY_VAULT_NAME") or vault_name(env.get("KEY_VAULT_URL", ""))).lower()
        topics = env.get("EXPIRY_EVENT_TOPICS") or (f"/providers/Microsoft.KeyVault/vaults/{vault}" if vault else "")
        try:
            tolerance = float(env.get("EXPIRY_DRIFT_TOLERANCE_S", str(DEFAULT_DRIFT_TOLERANCE_S)))
        except ValueError:
            problems.append("EXPIRY_DRIFT_TOLERANCE_S must be seconds, e.g. 86400")
            tolerance = DEFAULT_DRIFT_TOLERANCE_S
        if problems:
            raise ConfigError(problems)
        return cls(
            thresholds_days=thresholds,
            channels=env.get("EXPIRY_CHANNELS", ""),
            app_ids=tuple(a.strip() for a in apps.split(",") if a.strip()),
            event_topics=tuple(t.strip() for t in topics.split(",") if t.strip()),
            drift_tolerance_s=tolerance,
            vault_name=vault,
        )
