"""What the Dataverse client reads off the wire and checks before sending: error bodies, the URL a next or
delta link may point to, key columns a body may carry, the primary id in a key query's answer, and the
cookie policy that keeps requests spread over web servers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from http.cookiejar import DefaultCookiePolicy
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import SplitResult, urlsplit

from shared.errors import DataverseError, ThrottledError
from shared.outgoing_http import retry_after_s

if TYPE_CHECKING:
    import requests

ERROR_TEXT_CHARS = 300  # of a non-JSON error body, kept in the error


class TokenSource(Protocol):
    def token_for_invocation(self, *, force_refresh: bool = False) -> Any: ...


@dataclass(frozen=True)
class DeltaPage:
    """One change-tracking read: changed rows, deleted ids, and the link for the next delta read."""

    changed: list[dict[str, Any]]
    deleted: list[str]
    delta_link: str


def within(url: str, root: str) -> bool:
    """Whether ``url`` is below ``root``: same scheme, host (any case) and port (default or not), path."""
    target, base = urlsplit(url), urlsplit(root)
    default = {"https": 443, "http": 80}

    def origin(parts: SplitResult) -> tuple[str, str, int | None]:
        return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port or default.get(parts.scheme.lower())

    path, prefix = target.path.rstrip("/"), base.path.rstrip("/")
    return origin(target) == origin(base) and (path == prefix or path.startswith(prefix + "/"))


def writable(key: Mapping[str, Any]) -> dict[str, Any]:
    """The key columns a body may carry, so a record written by id keeps the key's exact text; a lookup
    column's ``_x_value`` is read-only and stays out."""
    return {name: value for name, value in key.items() if not (name.startswith("_") and name.endswith("_value"))}


def alike(stored: Any, wanted: Any) -> bool:
    """Equal as Dataverse's case-insensitive collation compares text (an approximation: casefold)."""
    if isinstance(stored, str) and isinstance(wanted, str):
        return stored.casefold() == wanted.casefold()
    return bool(stored == wanted)


def primary_id(row: Mapping[str, Any], key: Mapping[str, Any], table: str | None) -> str:
    extra = [name for name in row if "@" not in name and name not in key]
    if len(extra) == 1:
        return str(row[extra[0]])
    hint = f"{table}id" if table else None
    if hint and hint in row:
        return str(row[hint])
    raise DataverseError(0, "NoPrimaryId", f"a key query answered columns {sorted(extra)[:5]}: which is the id?")


class NoCookies(DefaultCookiePolicy):
    """Refuse every cookie, so no ARRAffinity pins this client to one web server."""

    def set_ok(self, cookie: Any, request: Any) -> bool:
        return False


def error_fields(response: requests.Response) -> tuple[str, str]:
    try:
        error = response.json().get("error") or {}
        return str(error.get("code", "")), str(error.get("message", ""))
    except (ValueError, AttributeError):
        return "", (response.text or "")[:ERROR_TEXT_CHARS]


def error_from(response: requests.Response) -> DataverseError:
    code, message = error_fields(response)
    return DataverseError(
        response.status_code, code or f"HTTP{response.status_code}", message, retry_after_s=retry_after_s(response)
    )


def throttled_from(response: requests.Response) -> ThrottledError:
    code, message = error_fields(response)
    return ThrottledError(429, code, message, retry_after_s=retry_after_s(response))
