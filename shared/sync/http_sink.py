"""An outbound job's HTTP sink: the changes POSTed in batches under the HTTP_SINK policy
(shared.outgoing_http): 408, 429, 5xx and connection errors are retried; any other 4xx fails at once."""

from __future__ import annotations

from typing import Any

from shared.errors import DownstreamError
from shared.outgoing_http import HTTP_SINK, HttpCaller


def post_changes(
    url: str, job: str, changes: list[dict[str, Any]], batch_size: int, *, caller: HttpCaller | None = None
) -> int:
    """POST ``{"job": job, "changes": batch}`` for each batch in order; return the number of batches sent.

    Raises :class:`DownstreamError` at the first batch the sink does not take, naming its offset: the run
    keeps its delta link, so the next run sends the same changes again."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    caller = caller or HttpCaller(None, HTTP_SINK)  # the run passes its own, on the worker's session
    sent = 0
    for start in range(0, len(changes), batch_size):
        batch = changes[start : start + batch_size]
        try:
            caller.send("POST", url, json={"job": job, "changes": batch})
        except DownstreamError as exc:
            raise exc.with_context(
                f"the batch at offset {start} ({len(batch)} changes) was not delivered; the delta link is kept"
            ) from None
        sent += 1
    return sent
