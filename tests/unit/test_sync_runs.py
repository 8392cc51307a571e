"""Every kind of sync run (inbound, replay, fan-out chunk, outbound) on in-memory storage, client and planner:
what a run saves, counts and leaves behind, including the behaviours the four hand-written copies of the
run bookkeeping had drifted on (a failed replay saved as "running", replays and outbound runs not counting
requests, a failed chunk not saved, an HTTP sink asked five times for a 400)."""

from __future__ import annotations

from typing import Any

import pytest

from shared.errors import DataverseError, DownstreamError
from shared.sync.engine import SyncContext, replay_dead_letters, run_inbound
from shared.sync.fanout import CHUNK_QUEUE, run_chunk
from shared.sync.jobs import InboundJob, OutboundJob
from shared.sync.outbound import run_outbound
from shared.sync.sources import DELTA_LINK_STATE, WATERMARK_STATE
from tests.fakes.http import FakeHttp, answer
from tests.fakes.sockets import no_sockets  # noqa: F401  # autouse: these tests never open a socket
from tests.fakes.sync_store import FakeDataverse, FakeMetadata, FakePlanner, FakeSyncStore, Outcome

pytestmark = pytest.mark.unit

JOB = "accounts"
CONTAINER = "erp"


def inbound(**changes: Any) -> InboundJob:
    spec: dict[str, Any] = {
        "direction": "inbound",
        "source": {"kind": "blob_csv", "container": CONTAINER},
        "table": "account",
        "entity_set": "accounts",
        "key": ["accountnumber"],
        "mapping": {"accountnumber": {"source": "CustomerNo"}, "name": {"source": "Name", "required": True}},
    }
    return InboundJob.model_validate(spec | changes)


def outbound(sink: dict[str, Any]) -> OutboundJob:
    return OutboundJob.model_validate({"direction": "outbound", "table": "account", "entity_set": "accounts",
                                       "sink": sink})  # fmt: skip


def csv(*rows: tuple[str, str]) -> str:
    return "CustomerNo,Name\n" + "".join(f"{number},{name}\n" for number, name in rows)


class World:
    def __init__(self, verdict: Any = None, *, throttle_every: int = 0, http: FakeHttp | None = None) -> None:
        self.store = FakeSyncStore()
        self.client = FakeDataverse()
        self.planner = FakePlanner(self.client, verdict, throttle_every=throttle_every)
        self.ctx = SyncContext(self.store, self.client, metadata=FakeMetadata(), planner=self.planner,  # type: ignore[arg-type]
                               http=http.session() if http else None)  # fmt: skip

    def report(self, run_id: str) -> dict[str, Any]:
        saved = self.store.get_report(JOB, run_id)
        assert saved is not None, f"no report saved for {run_id}"
        return saved


def refuse(number: str) -> Any:
    return lambda record: (
        Outcome(0, "failed", "0x80040237", "bad value") if record["accountnumber"] == number else "created"
    )


# -- inbound ----------------------------------------------------------------------------------------------
def test_an_inbound_run_writes_counts_skips_unchanged_rows_and_marks_the_file() -> None:
    world = World(refuse("C3"))
    world.store.upload(CONTAINER, "a.csv", csv(("C1", "One"), ("C2", "Two"), ("C3", "Three"), ("C4", "")))
    first = run_inbound(JOB, inbound(), world.ctx)
    assert (first.status, first.rows_read, first.written, first.failed, first.dead_lettered) == (
        "succeeded",
        4,
        2,
        1,
        2,
    )
    assert {d["code"] for d in world.store.dead[first.dead_letter_blob or ""]} == {"0x80040237", "MissingRequired"}
    assert world.store.processed(JOB) == {"a.csv": world.store.etags[(CONTAINER, "a.csv")]}
    assert world.report(first.run_id)["status"] == "succeeded"
    world.store.upload(CONTAINER, "b.csv", csv(("C1", "One"), ("C2", "Two renamed")))
    second = run_inbound(JOB, inbound(), world.ctx)
    assert (second.files, second.files_skipped, second.unchanged, second.written) == (1, 1, 1, 1)
    assert [r["name"] for r in world.planner.written[-1:]] == ["Two renamed"]


def test_a_failed_inbound_run_is_saved_failed_with_its_error_and_frees_the_job() -> None:
    world = World(lambda record: DataverseError(403, "0x80040220", "no privilege"))
    world.store.upload(CONTAINER, "a.csv", csv(("C1", "One")))
    with pytest.raises(DataverseError):
        run_inbound(JOB, inbound(), world.ctx, run_id="r1")
    saved = world.report("r1")
    assert saved["status"] == "failed"
    assert "0x80040220" in saved["error"]
    assert world.store.processed(JOB) == {}  # the file is read again next time
    assert world.store.leases == set()


def test_a_run_that_finds_the_lease_held_is_skipped_and_touches_nothing() -> None:
    world = World()
    world.store.upload(CONTAINER, "a.csv", csv(("C1", "One")))
    world.store.leases.add(JOB)
    report = run_inbound(JOB, inbound(), world.ctx)
    assert report.status == "skipped"
    assert (world.planner.written, world.store.reports) == ([], {})


def test_an_api_source_moves_its_watermark_only_after_a_successful_run() -> None:
    http = FakeHttp()
    pages = [{"items": [{"CustomerNo": "C1", "Name": "One", "changed": "2026-11-02"},
                        {"CustomerNo": "C2", "Name": "Two", "changed": "2026-11-05"}], "next": None}]  # fmt: skip
    http.route("https://erp.example.test/customers", lambda request: answer(200, pages[0]))
    source = {"kind": "http_json", "url": "https://erp.example.test/customers", "watermark_param": "since"}
    job = inbound(source=source, watermark_field="changed")
    failing = World(lambda record: DataverseError(503, "0x80044151", "busy"), http=http)
    with pytest.raises(DataverseError):
        run_inbound(JOB, job, failing.ctx)
    assert failing.store.get_state(JOB, WATERMARK_STATE) is None
    world = World(http=http)
    assert run_inbound(JOB, job, world.ctx).written == 2
    assert world.store.get_state(JOB, WATERMARK_STATE) == "2026-11-05"


# -- replay -----------------------------------------------------------------------------------------------
def dead_world(verdict: Any = None, **kwargs: Any) -> World:
    world = World(refuse("C2"), **kwargs)
    world.store.upload(CONTAINER, "a.csv", csv(("C1", "One"), ("C2", "Two")))
    run_inbound(JOB, inbound(), world.ctx, run_id="r1")
    assert world.store.dead[f"{JOB}/r1.jsonl"]
    world.planner.verdict = verdict
    return world


def test_a_failed_replay_is_saved_failed_with_its_error_and_keeps_the_dead_letters() -> None:
    world = dead_world(lambda record: DataverseError(401, "0x80072560", "not a member of the organization"))
    with pytest.raises(DataverseError):
        replay_dead_letters(JOB, inbound(), world.ctx)
    (replay,) = [r for (job, run_id), r in world.store.reports.items() if run_id.startswith("replay-")]
    assert replay["status"] == "failed"  # not "running", as the hand-written copy left it
    assert "0x80072560" in replay["error"]
    assert f"{JOB}/r1.jsonl" in world.store.dead  # nothing is lost by a failed replay


def test_a_replay_rewrites_the_dead_letters_counts_its_requests_and_removes_what_it_replayed() -> None:
    world = dead_world(throttle_every=1)
    before = world.client.requests_sent
    report = replay_dead_letters(JOB, inbound(), world.ctx)
    assert (report.status, report.files, report.written) == ("succeeded", 1, 1)
    assert report.requests == world.client.requests_sent - before == 1
    assert report.throttles == 1
    assert f"{JOB}/r1.jsonl" not in world.store.dead
    assert world.report(report.run_id)["requests"] == 1


# -- fan-out chunks --------------------------------------------------------------------------------------
def fanned(world: World, rows: int = 25) -> list[dict[str, Any]]:
    world.store.upload(CONTAINER, "big.csv", csv(*((f"C{n}", f"N{n}") for n in range(rows))))
    report = run_inbound(JOB, inbound(fan_out_threshold=10), world.ctx, run_id="big")
    assert (report.status, report.chunks) == ("fanned_out", 1)
    return [message for queue, message in world.store.queued if queue == CHUNK_QUEUE]


def test_a_failed_chunk_saves_its_report_as_failed_and_the_file_stays_unprocessed() -> None:
    world = World()
    (item,) = fanned(world)
    world.planner.verdict = lambda record: DataverseError(500, "0x80040216", "unexpected")
    with pytest.raises(DataverseError):
        run_chunk(inbound(fan_out_threshold=10), world.ctx, item)
    (chunk,) = world.store.chunk_reports(JOB, "big")
    assert chunk["status"] == "failed"  # the hand-written copy saved a chunk's report only on success
    assert "0x80040216" in chunk["error"]
    assert world.store.processed(JOB) == {}
    world.planner.verdict = None  # the queue's retry succeeds: the run is aggregated and the file marked
    run_chunk(inbound(fan_out_threshold=10), world.ctx, item)
    total = world.report("big")
    assert (total["status"], total["written"], total["rows_read"]) == ("succeeded", 25, 25)
    assert "big.csv" in world.store.processed(JOB)


def test_chunks_count_requests_and_the_last_one_aggregates_them() -> None:
    world = World(throttle_every=5)
    world.store.upload(CONTAINER, "big.csv", csv(*((f"C{n}", f"N{n}") for n in range(25_000))))
    items = [m for q, m in world.store.queued if q == CHUNK_QUEUE] or fanned_items(world)
    assert len(items) == 3
    for item in items:
        run_chunk(inbound(fan_out_threshold=10), world.ctx, item)
    total = world.report("big")
    assert (total["status"], total["chunks"], total["written"], total["requests"]) == ("succeeded", 3, 25_000, 25_000)
    assert total["throttles"] == 5_000


def fanned_items(world: World) -> list[dict[str, Any]]:
    run_inbound(JOB, inbound(fan_out_threshold=10), world.ctx, run_id="big")
    return [m for q, m in world.store.queued if q == CHUNK_QUEUE]


# -- outbound ---------------------------------------------------------------------------------------------
def test_an_outbound_run_counts_its_requests_and_saves_the_delta_link_after_the_sink() -> None:
    world = World()
    world.client.changed = [{"accountid": "1", "name": "One", "@odata.etag": 'W/"1"'}]
    world.client.deleted = ["2"]
    report = run_outbound(JOB, outbound({"kind": "blob_jsonl", "container": "out"}), world.ctx)
    assert (report.status, report.rows_read, report.written, report.requests) == ("succeeded", 2, 2, 1)
    (blob,) = [name for container, name in world.store.blobs if container == "out"]
    lines = world.store.blobs[("out", blob)].decode().splitlines()
    assert lines == ['{"op": "upsert", "record": {"accountid": "1", "name": "One"}}', '{"op": "delete", "id": "2"}']
    assert world.store.get_state(JOB, DELTA_LINK_STATE) == "https://org.example/accounts?token=1"


def test_an_http_sink_answering_400_is_asked_once_and_the_run_fails_keeping_the_delta_link() -> None:
    http = FakeHttp()
    http.route("https://sink.example.test/in", lambda request: answer(400, {"error": "schema mismatch"}))
    world = World(http=http)
    world.store.set_state(JOB, DELTA_LINK_STATE, "https://org.example/accounts?token=0")
    world.client.changed = [{"accountid": str(n)} for n in range(3)]
    with pytest.raises(DownstreamError) as refused:
        run_outbound(
            JOB, outbound({"kind": "http_post", "url": "https://sink.example.test/in"}), world.ctx, run_id="o1"
        )
    assert len(http.requests) == 1  # a 400 is not retried: the same batch would be refused again
    assert refused.value.status == 400
    saved = world.report("o1")
    assert saved["status"] == "failed"
    assert "400" in saved["error"]
    assert world.store.get_state(JOB, DELTA_LINK_STATE) == "https://org.example/accounts?token=0"


def test_a_report_that_cannot_be_saved_does_not_hide_the_run_error() -> None:
    world = World(lambda record: DataverseError(403, "0x80040220", "no privilege"))
    world.store.upload(CONTAINER, "a.csv", csv(("C1", "One")))
    world.store.fail_reports = True
    with pytest.raises((DataverseError, ConnectionError)):
        run_inbound(JOB, inbound(), world.ctx)
    assert world.store.leases == set()  # the lease is released whatever else failed


def test_an_api_answering_html_or_linking_elsewhere_fails_the_run_as_a_downstream_refusal() -> None:
    http = FakeHttp()
    http.route("https://erp.example.test/html", lambda request: answer(200, "<html>maintenance</html>"))
    http.route(
        "https://erp.example.test/away", lambda request: answer(200, {"items": [], "next": "https://evil.test/"})
    )
    for path, reason in (("html", "not JSON"), ("away", "leaves https://erp.example.test")):
        world = World(http=http)
        job = inbound(source={"kind": "http_json", "url": f"https://erp.example.test/{path}"})
        with pytest.raises(DownstreamError, match=reason) as refused:
            run_inbound(JOB, job, world.ctx, run_id=path)
        assert refused.value.retryable is False  # answered 502 by the doors: the same call fails the same way
        assert world.report(path)["status"] == "failed"
    assert all(request.origin == "https://erp.example.test" for request in http.requests)  # evil.test never asked
