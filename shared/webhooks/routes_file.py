"""Where the webhook routes live (``WEBHOOK_ROUTES_FILE``) and their validation at start-up.

Kept apart from ``routes`` (the pydantic models) so that indexing can check a build-time stamp without
importing yaml and pydantic; see ``shared.stamps``.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

from shared.config import read_text
from shared.settings_registry import EnvVars
from shared.stamps import ROUTES_VALIDATORS, read_stamp, write_stamp

if TYPE_CHECKING:
    from shared.webhooks.routes import RoutesFile

ROUTES_FILE_SETTING = EnvVars.WEBHOOK_ROUTES_FILE
APP_ROOT = Path(__file__).resolve().parents[2]
_lock = threading.Lock()
_loaded: tuple[Path, RoutesFile] | None = None


def routes_file() -> Path:
    path = Path(read_text(ROUTES_FILE_SETTING))  # the declared default when unset
    return path if path.is_absolute() else APP_ROOT / path


def validate_routes_file(path: Path, *, stamp: bool = False) -> Path | None:
    """Validate fully (ConfigError naming file and field); with ``stamp``, record it for indexing.
    An absent file is valid (no webhooks configured) and gets no stamp."""
    from shared.webhooks.routes import load_routes

    load_routes(path)
    return write_stamp(path, ROUTES_VALIDATORS, {}) if stamp and path.exists() else None


def check_routes_at_start_up() -> None:
    """Raise ConfigError now if the routes file is broken; cheap when a matching stamp exists."""
    path = routes_file()
    if path.exists() and read_stamp(path, ROUTES_VALIDATORS) is None:
        validate_routes_file(path)


def routes() -> RoutesFile:
    """The validated routes, loaded on first use and kept for the worker's life."""
    global _loaded
    from shared.webhooks.routes import load_routes

    path = routes_file()
    with _lock:
        if _loaded is None or _loaded[0] != path:
            _loaded = (path, load_routes(path))
        return _loaded[1]
