"""The expiry monitor's outside world for unit tests: an alert sink (webhook endpoints on :class:`FakeHttp`
behind the real ``Notifier``, so every payload is built as in production), a live-credential probe, and a
clock to walk."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import requests

from shared.errors import AuthError
from shared.expiry.notify import Channel, Notifier
from tests.fakes.http import Answer, FakeHttp, Recorded, answer
from tests.fakes.keyvault import FakeSecretStore

__all__ = ["AlertSink", "FakeProbe", "WalkingClock"]

SINK_URL = "https://alerts.example.test"


class AlertSink:
    """One webhook URL per channel, each a Key Vault secret in ``store`` (as ``EXPIRY_CHANNELS`` wants), at
    ``{SINK_URL}/{channel}``. ``down(name, status)`` makes a channel answer ``status`` (or refuse the
    connection with ``status=None``) until ``up(name)``."""

    def __init__(self, http: FakeHttp, store: FakeSecretStore, channels: Sequence[Channel]) -> None:
        self.channels = tuple(channels)
        self.received: dict[str, list[Any]] = {c.name: [] for c in self.channels}
        self._down: dict[str, int | None] = {}
        self._http = http
        for channel in self.channels:
            store.set_secret(channel.secret, f"{SINK_URL}/{channel.name}?sig=fake-sig-{channel.name}-0123456789")
        http.route(SINK_URL, self)

    def notifier(self, store: FakeSecretStore) -> Notifier:
        """The real Notifier over the fake wire, reading its URLs from the vault, never sleeping."""
        return Notifier(self.channels, lambda name: store.get(name).value, session=self._http.session(),
                        sleep=lambda _: None)  # fmt: skip

    def down(self, name: str, status: int | None = 503) -> None:
        self._down[name] = status

    def up(self, name: str) -> None:
        self._down.pop(name, None)

    def __call__(self, request: Recorded) -> Answer:
        name = request.path.strip("/")
        if name in self._down:
            status = self._down[name]
            if status is None:
                raise requests.ConnectionError(f"connection refused ({name})")
            return answer(status, "down")
        self.received.setdefault(name, []).append(request.json())
        return answer(202 if name == "teams" else 200, "ok" if name == "slack" else None)

    def json_alerts(self, channel: str = "json") -> list[dict[str, Any]]:
        """What a ``json`` channel received: ``alert.to_dict()`` plus the envelope."""
        return list(self.received[channel])


class FakeProbe:
    """The live Dataverse probe: returns its outcome, or raises the AuthError set by :meth:`fail`."""

    def __init__(self) -> None:
        self.error: AuthError | None = None
        self.calls = 0

    def fail(self, code: str = "AADSTS7000215", *, step: str = "token") -> None:
        self.error = AuthError(code, cause="Invalid client secret provided.", fix="Rotate the client secret.",
                               step=step)  # fmt: skip

    def recover(self) -> None:
        self.error = None

    def __call__(self) -> str:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return "token and WhoAmI ok (UserId fake)"


class WalkingClock:
    """A clock the test moves: ``clock.now``, ``clock.walk(days=1)``."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 3, 1, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def walk(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now
