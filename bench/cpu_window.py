"""CPU over a benchmark's measurement window: the client's, devstack's and the whole machine's, and whether
the machine (not the code under test) was the limit.

A rate measured against the emulator is only a property of the client when neither the client nor the
emulator waited for a core. :class:`CpuSampler` reads Linux's ``/proc`` while a benchmark runs:

* the client: this process and any children it starts (``utime + stime`` covers every thread);
* devstack: the ``python -m devstack up`` process and everything under it (Azurite, the local host's
  worker), including children that have already exited and been waited for (``cutime + cstime``);
* the machine: busy time over all cores from ``/proc/stat``, so tests other people run at the same time
  count too.

:meth:`CpuSampler.window` turns two samples into a :class:`CpuWindow`: cores used by each side, the machine's
busy fraction, the busiest single process and ``saturated`` with its reason (see :func:`classify`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any

# Saturated when the machine's busy time over all cores reaches this fraction of its capacity. Not 1.0:
# a runnable thread's wait for a core grows steeply well before every core is busy all the time, and the
# emulator models server time by sleeping, so any such wait stretches its modelled latencies; the samples
# are also coarse (clock ticks), which blurs the last few percent.
MACHINE_SATURATED_FRACTION = 0.85
# Saturated when one process uses this many cores. Python runs one thread at a time per process (the GIL)
# and Node runs its JavaScript on one thread, so a single process of either is a one-core ceiling whatever
# the machine has; near it, requests queue for the interpreter rather than for the modelled server. Below
# the machine's threshold because a process bound by the GIL shows less than a whole core: while the GIL
# passes from one thread to the next (a wake-up through the scheduler) none of its threads runs.
PROCESS_SATURATED_CORES = 0.8
# Background sampling period in seconds: a window is read between the samples nearest its ends, so this is
# how far (at most half of it) a window's CPU can stray from the window's true bounds.
SAMPLE_PERIOD_S = 1.0
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PROC = Path("/proc")
# /proc/<pid>/stat fields after the ")" that closes the command name (field 3, the state, is index 0).
_PPID, _UTIME, _STIME, _CUTIME, _CSTIME, _STARTTIME = 1, 11, 12, 13, 14, 19
# /proc/stat's "cpu" line: user nice system idle iowait irq softirq steal (guest time is already in user).
_IDLE, _IOWAIT, _COUNTED_FIELDS = 3, 4, 8


@dataclass(frozen=True)
class ProcessTicks:
    pid: int
    ppid: int
    name: str
    started: int  # clock ticks after boot: tells a reused pid from the process seen before
    own: int  # utime + stime, clock ticks, every thread of the process
    reaped: int  # cutime + cstime: children that exited and were waited for


@dataclass(frozen=True)
class Snapshot:
    at_s: float  # monotonic seconds
    busy_ticks: int  # the machine, all cores
    total_ticks: int
    cpus: int
    client_pid: int
    devstack_pid: int | None
    client: dict[int, ProcessTicks]  # the client's process tree (devstack's left out)
    devstack: dict[int, ProcessTicks]  # devstack's process tree


@dataclass(frozen=True)
class CpuWindow:
    """CPU over one measurement window; cores are CPU-seconds per second of the window."""

    seconds: float
    cpus: int
    client_cores: float
    devstack_cores: float
    other_cores: float  # busy on the machine but neither the client's nor devstack's: other people's work
    machine_busy: float  # fraction of all cores
    busiest: str  # the single process that used the most CPU
    busiest_cores: float
    saturated: bool
    reason: str  # why it was saturated; empty when it was not

    def mark(self) -> str:
        """The visible mark for a table cell: empty, or ``⚠ saturated: <reason>``."""
        return f"⚠ saturated: {self.reason}" if self.saturated else ""

    def summary(self) -> str:
        return (
            f"CPU: client {self.client_cores:.2f}, devstack {self.devstack_cores:.2f}, other {self.other_cores:.2f}"
            f" cores; machine {self.machine_busy:.0%} of {self.cpus}" + (f"; {self.mark()}" if self.saturated else "")
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def cpu_cell(cpu: Mapping[str, Any] | None) -> str:
    """A Markdown cell from a :meth:`CpuWindow.as_dict`: cores of the client / devstack / everything else,
    then the machine's busy share; ``-`` for a result recorded before CPU was."""
    if not cpu:
        return "-"
    cores = f"{cpu['client_cores']:.2f} / {cpu['devstack_cores']:.2f} / {cpu['other_cores']:.2f}"
    return f"{cores} · {cpu['machine_busy']:.0%}"


def saturated_cell(cpu: Mapping[str, Any] | None) -> str:
    if not cpu:
        return "-"
    return f"⚠ saturated: {cpu['reason']}" if cpu["saturated"] else "no"


CPU_HEADER = "CPU cores: client / devstack / other · machine busy"


def classify(machine_busy: float, process_cores: Mapping[str, float]) -> tuple[bool, str]:
    """(saturated, reason) from the machine's busy fraction and the cores each named process used."""
    reasons = [f"{name} {cores:.2f} cores" for name, cores in process_cores.items() if cores >= PROCESS_SATURATED_CORES]
    if machine_busy >= MACHINE_SATURATED_FRACTION:
        reasons.insert(0, f"machine {machine_busy:.0%} busy")
    return bool(reasons), "; ".join(reasons)


class ProcReader:
    """Reads the CPU counters of ``/proc`` (or of a planted copy of its files, in tests)."""

    def __init__(self, root: Path = PROC) -> None:
        self.root = root

    def machine(self) -> tuple[int, int, int]:
        """(busy ticks, total ticks, cores) over all cores since boot. Steal time counts as busy: the
        hypervisor gave that time to someone else, so it was no more available than a busy core."""
        lines = (self.root / "stat").read_text().splitlines()
        ticks = [int(v) for v in lines[0].split()[1 : 1 + _COUNTED_FIELDS]]
        total = sum(ticks)
        cpus = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
        return total - ticks[_IDLE] - ticks[_IOWAIT], total, cpus or 1

    def process(self, pid: int) -> ProcessTicks | None:
        try:
            text = (self.root / str(pid) / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            return None  # exited between listing and reading
        name = text[text.index("(") + 1 : text.rindex(")")]
        rest = text[text.rindex(")") + 2 :].split()
        return ProcessTicks(
            pid,
            int(rest[_PPID]),
            name,
            int(rest[_STARTTIME]),
            int(rest[_UTIME]) + int(rest[_STIME]),
            int(rest[_CUTIME]) + int(rest[_CSTIME]),
        )

    def processes(self) -> dict[int, ProcessTicks]:
        found = (self.process(int(entry.name)) for entry in self.root.iterdir() if entry.name.isdigit())
        return {p.pid: p for p in found if p is not None}

    def command(self, pid: int) -> str:
        """A short name for a process: the module of ``python -m <module>``, the script a Node process runs,
        else the program; the command name from ``stat`` when the command line cannot be read."""
        try:
            args = (self.root / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            return ""
        args = [a for a in args if a]
        if "-m" in args[:-1]:
            return args[args.index("-m") + 1]
        if args and Path(args[0]).name.startswith("node") and len(args) > 1:
            return Path(args[1]).name
        return Path(args[0]).name if args else ""

    def snapshot(self, client_pid: int, devstack_pid: int | None, at_s: float) -> Snapshot:
        every = self.processes()
        devstack = _tree(every, devstack_pid, set()) if devstack_pid is not None else {}
        busy, total, cpus = self.machine()
        client = _tree(every, client_pid, set(devstack))
        for tree in (client, devstack):  # children are named by what they run: every Python one is "python"
            for pid, p in tree.items():
                if pid not in (client_pid, devstack_pid):
                    tree[pid] = replace(p, name=self.command(pid) or p.name)
        return Snapshot(at_s, busy, total, cpus, client_pid, devstack_pid, client, devstack)


def _tree(every: Mapping[int, ProcessTicks], root: int, leave_out: set[int]) -> dict[int, ProcessTicks]:
    """``root`` and its descendants, without the pids in ``leave_out`` (and what is under them)."""
    children: dict[int, list[int]] = {}
    for p in every.values():
        children.setdefault(p.ppid, []).append(p.pid)
    tree, todo = {}, [root] if root in every else []
    while todo:
        pid = todo.pop()
        if pid in leave_out:
            continue
        tree[pid] = every[pid]
        todo.extend(children.get(pid, []))
    return tree


def _cumulative(tree: Mapping[int, ProcessTicks]) -> int:
    """Every tick the tree has used: a child that exits moves its ticks (and its own reaped children's)
    into its parent's ``reaped``, so the sum stays whole as processes come and go."""
    return sum(p.own + p.reaped for p in tree.values())


def _per_process(start: Mapping[int, ProcessTicks], end: Mapping[int, ProcessTicks]) -> dict[int, int]:
    """Ticks each process alive at the end used since the start (all of them if it started since)."""
    used = {}
    for pid, last in end.items():
        first = start.get(pid)
        same = first is not None and first.started == last.started
        used[pid] = last.own - (first.own if same and first is not None else 0)
    return used


def between(start: Snapshot, end: Snapshot, ticks_per_s: float = CLOCK_TICKS_PER_S) -> CpuWindow:
    """The CPU used from ``start`` to ``end``, and whether the machine was saturated over it."""
    seconds = max(end.at_s - start.at_s, 1e-9)

    def cores(ticks: int) -> float:
        return max(ticks, 0) / ticks_per_s / seconds

    client = cores(_cumulative(end.client) - _cumulative(start.client))
    devstack = cores(_cumulative(end.devstack) - _cumulative(start.devstack))
    total = end.total_ticks - start.total_ticks
    machine_busy = (end.busy_ticks - start.busy_ticks) / total if total > 0 else 0.0
    # Busy cores from /proc/stat's share, scaled to the cores the machine has: the same clock as the rest.
    other = max(0.0, machine_busy * end.cpus - client - devstack)
    named: dict[str, float] = {}
    for label, root, first, last in (
        ("client", end.client_pid, start.client, end.client),
        ("devstack", end.devstack_pid, start.devstack, end.devstack),
    ):
        for pid, ticks in _per_process(first, last).items():
            named[label if pid == root else f"{label}'s {last[pid].name} (pid {pid})"] = cores(ticks)
    busiest = max(named, key=lambda name: named[name], default="")
    saturated, reason = classify(machine_busy, named)
    return CpuWindow(
        seconds=seconds,
        cpus=end.cpus,
        client_cores=client,
        devstack_cores=devstack,
        other_cores=other,
        machine_busy=machine_busy,
        busiest=busiest,
        busiest_cores=named.get(busiest, 0.0),
        saturated=saturated,
        reason=reason,
    )


@dataclass
class CpuSampler:
    """Samples the client's, devstack's and the machine's CPU while a benchmark runs.

    ``with CpuSampler(stack.proc.pid) as cpu: ...`` takes a sample on entry and on exit and, with
    ``period_s`` set, every ``period_s`` in between (a daemon thread), so that a window chosen afterwards
    (the last service-protection window, say) can be read with :meth:`window`.
    """

    devstack_pid: int | None
    period_s: float | None = SAMPLE_PERIOD_S
    reader: ProcReader = field(default_factory=ProcReader)
    clock: Callable[[], float] = time.monotonic
    client_pid: int = field(default_factory=os.getpid)
    ticks_per_s: float = CLOCK_TICKS_PER_S
    samples: list[Snapshot] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> Snapshot:
        snapshot = self.reader.snapshot(self.client_pid, self.devstack_pid, self.clock())
        self.samples.append(snapshot)
        return snapshot

    def __enter__(self) -> CpuSampler:
        self.sample()
        if self.period_s:
            self._thread = threading.Thread(target=self._run, daemon=True, name="cpu-sampler")
            self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    def _run(self) -> None:
        assert self.period_s is not None
        while not self._stop.wait(self.period_s):
            self.sample()

    def window(self, start_s: float | None = None, end_s: float | None = None) -> CpuWindow:
        """CPU between the samples nearest ``start_s`` and ``end_s`` (monotonic seconds; default: the first
        and the last sample)."""
        first = self.samples[0] if start_s is None else _nearest(self.samples, start_s)
        last = self.samples[-1] if end_s is None else _nearest(self.samples, end_s)
        if last.at_s <= first.at_s:  # a window shorter than the sampling period: take the enclosing pair
            later = [s for s in self.samples if s.at_s > first.at_s]
            last = later[0] if later else last
        return between(first, last, self.ticks_per_s)


def _nearest(samples: Iterable[Snapshot], at_s: float) -> Snapshot:
    return min(samples, key=lambda s: abs(s.at_s - at_s))
