"""The HTTP forward handler's delivery: one POST of the event under the FORWARD policy
(shared.outgoing_http), signed afresh for each attempt by the caller's header builder."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from shared.errors import DownstreamError
from shared.outgoing_http import FORWARD, HttpCaller, origin

QUEUE_RETRIES = "the queue retries the event, then the poison queue keeps it"


def forward_event(
    url: str,
    data: bytes,
    headers_for_attempt: Callable[[], Mapping[str, str]],
    *,
    caller: HttpCaller | None = None,
) -> str:
    """POST ``data`` to ``url``; return what was done. Raises :class:`DownstreamError` (naming the target's
    host only: a forward URL may carry a key) when the target refuses the event or stays unreachable."""
    caller = caller or HttpCaller(None, FORWARD)  # the worker passes its own: pooled, kept
    try:
        response = caller.send("POST", url, data=data, headers_for_attempt=headers_for_attempt)
    except DownstreamError as exc:
        raise exc.with_context(QUEUE_RETRIES) from None
    return f"forwarded to {origin(url)} ({response.status_code})"
