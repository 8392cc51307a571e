"""bench.webhooks' storage-call counter: Azurite's access-log lines (samples from a real run of the bench,
Azurite 3.35 started without ``--silent``) parsed into service, resource and operation, put in the
webhook path's phases; Azurite's own messages ignored, a malformed line counted and kept as a sample."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.webhooks import (
    BACKGROUND,
    EITHER,
    PROCESS,
    RECEIVE,
    AccessLog,
    StorageCall,
    StorageCalls,
    count_until_processed,
    parse_access_line,
    phase,
    quiet_timers,
)

pytestmark = pytest.mark.unit

# One event through the current design: the receiver's enqueue; the host's receive, the guard's query and
# claim, the blob sink, the guard's finish, the host's delete.
ONE_EVENT = [
    '127.0.0.1 - - [03/Dec/2026:12:07:21 +0000] "POST /devstoreaccount1/webhook-events/messages HTTP/1.1" 201 -',
    '127.0.0.1 - - [03/Dec/2026:12:07:20 +0000] "GET /devstoreaccount1/webhook-events/messages?numofmessages=16&'
    'visibilitytimeout=600 HTTP/1.1" 200 -',
    '127.0.0.1 - - [03/Dec/2026:12:07:21 +0000] "GET /devstoreaccount1/webhookapplied()?$filter=PartitionKey%20eq%20'
    "%27dataverse%7Caccount%27%20and%20%28%20RowKey%20eq%20%27c01d61fb-4c49-4f86-ac8a-c5758483f523%27%20or%20RowKey"
    '%20eq%20%27ce377e9b-b996-41ad-8677-637a79ad596e%27%20%29 HTTP/1.1" 200 -',
    '127.0.0.1 - - [03/Dec/2026:12:07:21 +0000] "POST /devstoreaccount1/$batch HTTP/1.1" 202 -',
    '127.0.0.1 - - [03/Dec/2026:12:07:21 +0000] "PUT /devstoreaccount1/webhook-events/dataverse/account/'
    'ce377e9b-b996-41ad-8677-637a79ad596e/9c26e78fb2ea30e0f842d4f1.json HTTP/1.1" 201 -',
    '127.0.0.1 - - [03/Dec/2026:12:07:21 +0000] "POST /devstoreaccount1/$batch HTTP/1.1" 202 -',
    '127.0.0.1 - - [03/Dec/2026:12:07:21 +0000] "DELETE /devstoreaccount1/webhook-events/messages/'
    '80311c90-9b2d-479e-8d57-40a925d36ddb?popreceipt=MDNEZWMyMDI2MTI6MDc6MjE3YTll HTTP/1.1" 204 -',
]
AZURITE_MESSAGES = [
    "In-memory extent storage is enabled with a limit of 256.00 MB (268435456 bytes, 1% of total memory).",
    "Azurite Queue service is starting at http://127.0.0.1:33501",
    "Azurite Table service successfully closed",
    "",
]


def line(method: str, target: str, status: int = 200) -> str:
    return f'127.0.0.1 - - [03/Dec/2026:12:07:21 +0000] "{method} {target} HTTP/1.1" {status} -'


@pytest.mark.parametrize(
    ("sample", "expected", "expected_phase"),
    [
        (ONE_EVENT[0], ("queue", "webhook-events", "put message", 201), RECEIVE),
        (ONE_EVENT[1], ("queue", "webhook-events", "get messages", 200), PROCESS),
        (ONE_EVENT[2], ("table", "webhookapplied", "query", 200), PROCESS),
        (ONE_EVENT[3], ("table", "", "transaction", 202), PROCESS),
        (ONE_EVENT[4], ("blob", "webhook-events", "put blob", 201), PROCESS),
        (ONE_EVENT[6], ("queue", "webhook-events", "delete message", 204), PROCESS),
        # the previous design's dedupe table: the receiver's record and the processor's claim look alike
        (
            line("POST", "/devstoreaccount1/webhookdedupe", 201),
            ("table", "webhookdedupe", "insert entity", 201),
            EITHER,
        ),
        (  # ... but an entity's URL names its partition: the processor's scope
            line("PUT", "/devstoreaccount1/webhookdedupe(PartitionKey='processed-dataverse-fd',RowKey='fd21fc')", 204),
            ("table", "webhookdedupe", "replace entity", 204, "processed-dataverse-fd"),
            PROCESS,
        ),
        (
            line("GET", "/devstoreaccount1/webhookdedupe(PartitionKey='received-dataverse-0a',RowKey='0a9c')"),
            ("table", "webhookdedupe", "get entity", 200, "received-dataverse-0a"),
            RECEIVE,
        ),
        # a queue and a container of the same name are told apart by restype=container
        (line("PUT", "/devstoreaccount1/webhook-events", 204), ("queue", "webhook-events", "PUT queue", 204), PROCESS),
        (
            line("PUT", "/devstoreaccount1/webhook-events?restype=container", 409),
            ("blob", "webhook-events", "PUT container", 409),
            PROCESS,
        ),
        # the bench's own drain check lists the sink's container: not the app's
        (
            line("GET", "/devstoreaccount1/webhook-events?restype=container&comp=list&prefix=dataverse%2Faccount%2F"),
            ("blob", "webhook-events", "GET container list", 200),
            BACKGROUND,
        ),
        (
            line("PUT", "/devstoreaccount1/webhook-claims/0f-1a.json", 201),
            ("blob", "webhook-claims", "put blob", 201),
            RECEIVE,
        ),
        (
            line("DELETE", "/devstoreaccount1/webhook-claims/0f-1a.json", 202),
            ("blob", "webhook-claims", "delete blob", 202),
            PROCESS,
        ),
        (
            line("PUT", "/devstoreaccount1/webhook-events/messages/80311c90?popreceipt=MDN&visibilitytimeout=30", 204),
            ("queue", "webhook-events", "update message", 204),
            PROCESS,
        ),
        (
            line("POST", "/devstoreaccount1/webhook-events-poison/messages", 201),
            ("queue", "webhook-events-poison", "put message", 201),
            PROCESS,
        ),
        (
            line("PATCH", "/devstoreaccount1/webhookapplied(PartitionKey='dataverse%7Caccount',RowKey='c01d')", 204),
            ("table", "webhookapplied", "merge entity", 204, "dataverse|account"),
            PROCESS,
        ),
        # everything else is background: other queues' polling, other capabilities' tables, table creation
        (
            line("GET", "/devstoreaccount1/sync-chunks/messages?numofmessages=16&visibilitytimeout=600"),
            ("queue", "sync-chunks", "get messages", 200),
            BACKGROUND,
        ),
        (
            line("GET", "/devstoreaccount1/credentialstate(PartitionKey='credential',RowKey='kv-secret%3Aerp')", 404),
            ("table", "credentialstate", "get entity", 404, "credential"),
            BACKGROUND,
        ),
        (line("POST", "/devstoreaccount1/Tables", 409), ("table", "", "create table", 409), BACKGROUND),
        (line("GET", "/devstoreaccount1?comp=list"), ("account", "", "GET list", 200), BACKGROUND),
    ],
)
def test_each_sample_line_is_one_call_of_its_service_resource_and_operation(
    sample: str, expected: tuple[Any, ...], expected_phase: str
) -> None:
    call = parse_access_line(sample + "\n")
    assert call == StorageCall(*expected)
    assert phase(call) == expected_phase


def test_azurites_own_messages_are_not_calls() -> None:
    assert [parse_access_line(text) for text in AZURITE_MESSAGES] == [None] * len(AZURITE_MESSAGES)


@pytest.mark.parametrize(
    "malformed",
    [
        '127.0.0.1 - - [03/Dec/2026:12:07:21 +0000] "POST /devstoreaccount1/webhook-ev',  # cut off mid-write
        '127.0.0.1 - - [03/Dec/2026:12:07:21 +0000] "POST /devstoreaccount1/webhook-events/messages HTTP/1.1" 2O1 -',
        '::1 - - [03/Dec/2026:12:07:21 +0000] "BREW /devstoreaccount1/pot HTTP/1.1"',
    ],
)
def test_a_line_that_starts_like_a_request_but_does_not_parse_is_refused(malformed: str) -> None:
    with pytest.raises(ValueError, match="not an access-log line"):
        parse_access_line(malformed)


def test_one_event_costs_its_calls_and_a_planted_malformed_line_is_reported_not_counted() -> None:
    cut = '127.0.0.1 - - [03/Dec/2026:12:07:21 +0000] "DELETE /devstoreaccount1/webhook-events/messages/8031'
    calls = StorageCalls()
    calls.add_lines([*AZURITE_MESSAGES, *ONE_EVENT[:3], cut, *ONE_EVENT[3:], ONE_EVENT[0]])  # a second event's put

    figures = calls.per_event(2)
    assert calls.total() == 8
    assert figures["calls_per_event"] == 4.0
    assert figures["by_phase"] == {RECEIVE: 1.0, PROCESS: 3.0, EITHER: 0.0}
    assert figures["by_kind"][PROCESS] == {
        "blob put blob (webhook-events)": 0.5,
        "queue delete message (webhook-events)": 0.5,
        "queue get messages (webhook-events)": 0.5,
        "table query (webhookapplied)": 0.5,
        "table transaction": 1.0,
    }
    assert figures["malformed_lines"] == 1
    assert calls.malformed_samples == [cut]
    assert any("1 malformed log lines ignored" in text for text in calls.summary(2))
    assert calls.count("queue delete message (webhook-events)") == 1


def test_calls_answered_with_an_error_are_counted_and_named() -> None:
    calls = StorageCalls()
    calls.add_lines([line("POST", "/devstoreaccount1/$batch", 202), line("POST", "/devstoreaccount1/$batch", 409)])
    assert calls.per_event(1)["failed_calls"] == {"table transaction": 1}
    assert calls.count("table transaction") == 2


def test_the_log_is_read_from_where_the_window_opened_in_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "azurite.log"
    path.write_text(ONE_EVENT[0] + "\n")
    log = AccessLog(path)  # the window opens here: the first line is not read
    with path.open("a") as out:
        out.write(ONE_EVENT[1] + "\n" + ONE_EVENT[2][:40])  # the last line is still being written
    assert log.read() == [ONE_EVENT[1]]
    with path.open("a") as out:
        out.write(ONE_EVENT[2][40:] + "\n")
    assert log.read() == [ONE_EVENT[2]]
    assert log.read() == []


def test_the_window_closes_when_every_events_message_is_deleted_or_time_runs_out(tmp_path: Path) -> None:
    path = tmp_path / "azurite.log"
    path.write_text("")
    log = AccessLog(path)
    path.write_text("\n".join(ONE_EVENT + ONE_EVENT) + "\n")  # two events, two deletes
    calls, complete = count_until_processed(log, 2, timeout_s=5)
    assert complete
    assert calls.total() == 14

    calls, complete = count_until_processed(AccessLog(tmp_path / "none.log"), 1, timeout_s=0)
    assert not complete
    assert calls.total() == 0


def test_the_timers_are_moved_out_of_the_run(tmp_path: Path) -> None:
    values = {"SYNC_SCHEDULE_ACCOUNTS": "0 */15 * * * *", "WEBHOOK_RECONCILE_SCHEDULE": "0 */5 * * * *", "X": "1"}
    (tmp_path / "local.settings.json.example").write_text(json.dumps({"Values": values}))
    assert quiet_timers(tmp_path) == {
        "SYNC_SCHEDULE_ACCOUNTS": "0 0 0 1 1 *",
        "WEBHOOK_RECONCILE_SCHEDULE": "0 0 0 1 1 *",
    }
    assert quiet_timers(tmp_path / "none") == {}


@pytest.mark.parametrize(
    ("environ", "silent"),
    [({}, True), ({"DEVSTACK_AZURITE_ACCESS_LOG": "0"}, True), ({"DEVSTACK_AZURITE_ACCESS_LOG": "1"}, False)],
)
def test_azurite_stays_silent_unless_the_access_log_is_asked_for(
    environ: dict[str, str], silent: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import devstack.azurite as azurite

    launched: list[list[str]] = []
    binary = tmp_path / "azurite"
    binary.write_text("")
    monkeypatch.setattr(azurite, "AZURITE_BIN", binary)
    monkeypatch.setattr(azurite, "_launch", lambda args, log_path: launched.append(args))
    monkeypatch.setattr(azurite, "_wait_listening", lambda *args: None)
    monkeypatch.setattr(azurite, "_free_port", lambda: 10000)  # no socket in a unit test
    monkeypatch.delenv(azurite.ACCESS_LOG_SETTING, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)

    azurite.start_azurite(None, tmp_path / "azurite.log")
    assert ("--silent" in launched[0]) is silent
    azurite.start_azurite(None, tmp_path / "azurite.log", access_log=True)  # the parameter wins
    assert "--silent" not in launched[1]
