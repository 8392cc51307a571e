"""bench.cpu_window's saturation verdicts from planted /proc readings: a window is saturated when the machine is
busy over all its cores (whoever keeps it busy) or when one process nears its one-core ceiling, and not
otherwise; the CPU of a child that exited during the window still counts for its tree."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bench.cpu_window import (
    MACHINE_SATURATED_FRACTION,
    PROCESS_SATURATED_CORES,
    CpuSampler,
    CpuWindow,
    ProcReader,
    between,
    classify,
)

pytestmark = pytest.mark.unit

TICKS_PER_S = 100
CLIENT, DEVSTACK, AZURITE, STRANGER = 100, 200, 201, 300


@dataclass
class Planted:
    """A /proc with the files cpu_window reads: stat (all cores) and <pid>/stat and <pid>/cmdline."""

    root: Path
    cpus: int = 2
    # pid -> (command name, ppid, own ticks, reaped ticks, start tick, command line)
    processes: dict[int, tuple[str, int, int, int, int, list[str]]] = field(default_factory=dict)
    busy: int = 0
    idle: int = 0

    def process(self, pid: int, name: str, ppid: int, own: int, reaped: int = 0, *, started: int = 7,
                cmdline: list[str] | None = None) -> None:  # fmt: skip
        self.processes[pid] = (name, ppid, own, reaped, started, cmdline or [name])

    def write(self) -> None:
        for entry in self.root.glob("[0-9]*"):
            for file in entry.iterdir():
                file.unlink()
            entry.rmdir()
        # user nice system idle iowait irq softirq steal: busy split over user and system; iowait is idle too
        user, system = self.busy * 3 // 4, self.busy - self.busy * 3 // 4
        total = f"cpu  {user} 0 {system} {self.idle - 10} 10 0 0 0 0 0"
        per_cpu = [f"cpu{i} 0 0 0 0 0 0 0 0 0 0" for i in range(self.cpus)]
        (self.root / "stat").write_text("\n".join([total, *per_cpu, "intr 0", "ctxt 0"]) + "\n")
        for pid, (name, ppid, own, reaped, started, cmdline) in self.processes.items():
            directory = self.root / str(pid)
            directory.mkdir()
            utime, stime = own - own // 3, own // 3
            cutime, cstime = reaped - reaped // 2, reaped // 2
            fields = ["S", ppid, pid, pid, 0, -1, 0, 0, 0, 0, 0, utime, stime, cutime, cstime, 20, 0, 4, 0, started]
            (directory / "stat").write_text(f"{pid} ({name}) " + " ".join(map(str, fields)) + " 0 0 0\n")
            (directory / "cmdline").write_bytes(b"\0".join(a.encode() for a in cmdline) + b"\0")

    def advance(self, seconds: float, busy_cores: float) -> None:
        """Move the machine's counters on by ``seconds`` with ``busy_cores`` of its cores busy."""
        self.busy += round(busy_cores * seconds * TICKS_PER_S)
        self.idle += round((self.cpus - busy_cores) * seconds * TICKS_PER_S)


@pytest.fixture
def proc(tmp_path: Path) -> Planted:
    planted = Planted(tmp_path)
    planted.busy, planted.idle = 50_000, 150_000
    planted.process(1, "init", 0, 900)
    planted.process(CLIENT, "python3.13", 1, 1_000)
    planted.process(DEVSTACK, "python3.13", CLIENT, 5_000, cmdline=["python", "-m", "devstack", "up"])
    planted.process(AZURITE, "node", DEVSTACK, 2_000, cmdline=["node", "/x/node_modules/.bin/azurite", "--silent"])
    planted.process(STRANGER, "Web Content", 1, 8_000)  # someone else's work, with a space in its name
    planted.write()
    return planted


def window(proc: Planted, seconds: float, busy_cores: float, **ticks: int) -> CpuWindow:
    """Snapshot, let each named process (client, devstack, azurite, stranger) use ``ticks``, snapshot again."""
    reader = ProcReader(proc.root)
    start = reader.snapshot(CLIENT, DEVSTACK, 0.0)
    pids = {"client": CLIENT, "devstack": DEVSTACK, "azurite": AZURITE, "stranger": STRANGER}
    for name, used in ticks.items():
        command, ppid, own, reaped, started, cmdline = proc.processes[pids[name]]
        proc.processes[pids[name]] = (command, ppid, own + used, reaped, started, cmdline)
    proc.advance(seconds, busy_cores)
    proc.write()
    return between(start, reader.snapshot(CLIENT, DEVSTACK, seconds), ticks_per_s=TICKS_PER_S)


def test_a_quiet_window_is_not_saturated_and_says_what_each_side_used(proc: Planted) -> None:
    used = window(proc, 10, 0.9, client=200, devstack=400, azurite=100)
    assert not used.saturated
    assert used.reason == ""
    assert used.mark() == ""
    assert used.cpus == 2
    assert used.client_cores == pytest.approx(0.2)
    assert used.devstack_cores == pytest.approx(0.5)  # devstack and Azurite, its child
    assert used.machine_busy == pytest.approx(0.45)
    assert used.other_cores == pytest.approx(0.2)
    assert used.busiest == "devstack"
    assert used.busiest_cores == pytest.approx(0.4)


def test_a_machine_kept_busy_by_someone_else_is_saturated(proc: Planted) -> None:
    used = window(proc, 10, 1.8, client=200, devstack=300, stranger=1_300)
    assert used.saturated
    assert used.machine_busy == pytest.approx(0.9)
    assert used.other_cores == pytest.approx(1.3)
    assert used.reason == "machine 90% busy"
    assert used.mark() == "⚠ saturated: machine 90% busy"


def test_one_process_at_its_one_core_ceiling_is_saturated_on_an_otherwise_idle_machine(proc: Planted) -> None:
    used = window(proc, 10, 1.05, client=100, devstack=950)
    assert used.machine_busy < MACHINE_SATURATED_FRACTION
    assert used.saturated
    assert used.reason == "devstack 0.95 cores"


def test_a_child_process_is_named_by_what_it_runs(proc: Planted) -> None:
    used = window(proc, 10, 1.2, devstack=100, azurite=900)
    assert used.saturated
    assert used.reason == "devstack's azurite (pid 201) 0.90 cores"


def test_just_below_both_thresholds_is_not_saturated(proc: Planted) -> None:
    below_one_core = round((PROCESS_SATURATED_CORES - 0.01) * 10 * TICKS_PER_S)
    used = window(proc, 10, 2 * (MACHINE_SATURATED_FRACTION - 0.01), client=below_one_core)
    assert not used.saturated, used.reason


def test_a_child_that_exited_and_was_waited_for_still_counts(proc: Planted) -> None:
    reader = ProcReader(proc.root)
    start = reader.snapshot(CLIENT, DEVSTACK, 0.0)
    # Azurite uses 500 more ticks, exits, and devstack waits for it: its 2,500 ticks move to devstack's reaped.
    del proc.processes[AZURITE]
    command, ppid, own, _, started, cmdline = proc.processes[DEVSTACK]
    proc.processes[DEVSTACK] = (command, ppid, own + 100, 2_500, started, cmdline)
    proc.advance(10, 0.7)
    proc.write()
    used = between(start, reader.snapshot(CLIENT, DEVSTACK, 10.0), ticks_per_s=TICKS_PER_S)
    assert used.devstack_cores == pytest.approx(0.6)


def test_a_reused_pid_is_a_new_process(proc: Planted) -> None:
    reader = ProcReader(proc.root)
    start = reader.snapshot(CLIENT, DEVSTACK, 0.0)
    proc.process(AZURITE, "node", DEVSTACK, 300, started=999)  # a new process under the old one's pid
    proc.advance(10, 0.5)
    proc.write()
    used = between(start, reader.snapshot(CLIENT, DEVSTACK, 10.0), ticks_per_s=TICKS_PER_S)
    assert used.busiest == "devstack's node (pid 201)"
    assert used.busiest_cores == pytest.approx(0.3)


def test_devstack_is_not_counted_as_the_client_although_the_client_started_it(proc: Planted) -> None:
    snapshot = ProcReader(proc.root).snapshot(CLIENT, DEVSTACK, 0.0)
    assert set(snapshot.client) == {CLIENT}
    assert set(snapshot.devstack) == {DEVSTACK, AZURITE}


def test_the_sampler_reads_a_window_between_the_samples_nearest_its_ends(proc: Planted) -> None:
    now = [0.0]
    sampler = CpuSampler(DEVSTACK, period_s=None, reader=ProcReader(proc.root), clock=lambda: now[0],
                         client_pid=CLIENT, ticks_per_s=TICKS_PER_S)  # fmt: skip
    for second, devstack_ticks in enumerate([0, 10, 10, 95, 95, 95, 10]):
        now[0] = float(second)
        command, ppid, own, reaped, started, cmdline = proc.processes[DEVSTACK]
        proc.processes[DEVSTACK] = (command, ppid, own + devstack_ticks, reaped, started, cmdline)
        proc.advance(1, 1.0)
        proc.write()
        sampler.sample()
    assert not sampler.window().saturated  # averaged over the whole run
    busy = sampler.window(2.9, 5.2)  # the samples at 3 s and 5 s: the busy stretch
    assert busy.seconds == pytest.approx(2.0)
    assert busy.saturated
    assert busy.reason == "devstack 0.95 cores"


@pytest.mark.parametrize(
    ("machine", "cores", "reason"),
    [
        (0.5, {"client": 0.3, "devstack": 0.4}, ""),
        (0.9, {"client": 0.3, "devstack": 0.4}, "machine 90% busy"),
        (0.6, {"client": 0.3, "devstack": 0.97}, "devstack 0.97 cores"),
        (0.95, {"client": 0.9, "devstack": 0.97}, "machine 95% busy; client 0.90 cores; devstack 0.97 cores"),
    ],
)
def test_classify(machine: float, cores: dict[str, float], reason: str) -> None:
    assert classify(machine, cores) == (bool(reason), reason)
