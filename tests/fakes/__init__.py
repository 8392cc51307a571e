"""In-memory fakes of what dvbridge talks to (Table Storage, HTTP, Key Vault, Graph, alert channels), for unit
tests that open no socket and start no process. Each fake answers like the real service and SDK do, and
tests/unit/test_fakes.py holds them to that."""

from tests.fakes.expiry import AlertSink, FakeProbe, WalkingClock
from tests.fakes.graph import FakeGraph, FakeTokenCredential
from tests.fakes.http import Answer, FakeHttp, Recorded, answer
from tests.fakes.keyvault import FakeSecretStore, vault_http_error
from tests.fakes.tables import FakeTableClient, FakeTables, UnsupportedQuery, service_error

__all__ = [
    "AlertSink",
    "Answer",
    "FakeGraph",
    "FakeHttp",
    "FakeProbe",
    "FakeSecretStore",
    "FakeTableClient",
    "FakeTables",
    "FakeTokenCredential",
    "Recorded",
    "UnsupportedQuery",
    "WalkingClock",
    "answer",
    "service_error",
    "vault_http_error",
]
