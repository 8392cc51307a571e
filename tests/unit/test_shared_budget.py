"""The Dataverse budget every instance shares (shared.dataverse.budget) over its Table row
(shared.storage.budget), on the in-memory Table fake: claims never add up to more than the budget, every
instance stays within its claim, a dead instance's share comes back within a lease, a 429 pauses everyone,
and an idle instance costs no storage calls."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.dataverse.budget import (
    RENEW_FRACTION,
    THROTTLE_POLL_S,
    URGENT_RENEW_FRACTION,
    SharedBudget,
    fair_shares,
)
from shared.dataverse.governor import ThrottleGovernor
from shared.storage.budget import TableBudgetStore, budget_partition
from tests.fakes import FakeTableClient

BUDGET = 48
LEASE_S = 30.0
PARTITION = budget_partition("https://contoso.crm.dynamics.com", "11111111-2222-3333-4444-555555555555")


@dataclass
class Clock:
    now: float = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Instance:
    """One worker: its budget view and the requests it has in flight and waiting."""

    budget: SharedBudget
    in_flight: int = 0
    waiting: int = 0
    ceiling: int = 52
    alive: bool = True
    way: Any = None

    def demand(self) -> tuple[int, int, int]:
        return self.in_flight, self.waiting, self.ceiling

    def want(self, demand: int) -> None:
        """``demand`` requests want to run: start what the budget allows, the rest wait."""
        self.budget.touch()
        start = max(0, min(demand, self.budget.allowed()) - self.in_flight)
        self.in_flight += start
        self.waiting = max(0, demand - self.in_flight)

    def finish(self, count: int) -> None:
        self.in_flight = max(0, self.in_flight - count)


class Reachable:
    """One instance's way to the shared table: ``down`` makes every call fail as an outage would."""

    def __init__(self, table: FakeTableClient) -> None:
        self.table, self.down = table, False

    def __getattr__(self, name: str) -> Any:
        if self.down:
            raise ConnectionError("storage unreachable")
        return getattr(self.table, name)


def cluster(count: int, clock: Clock) -> tuple[list[Instance], FakeTableClient]:
    table = FakeTableClient("dvbridgebudget")
    instances = []
    for number in range(count):
        way = Reachable(table)
        store = TableBudgetStore(lambda way=way: way, PARTITION)  # type: ignore[misc]
        budget = SharedBudget(store, BUDGET, LEASE_S, instance=f"i{number}", wall=clock, clock=clock)
        instance = Instance(budget, way=way)
        budget.attach(instance.demand, lambda: None)
        instances.append(instance)
    return instances, table


def live_claims(instances: list[Instance], clock: Clock) -> dict[str, int]:
    """The claims in the shared row that have not expired, read past any instance's outage."""
    shares, _ = TableBudgetStore(lambda: instances[0].way.table, PARTITION).read_shares()
    return {key: share.claim for key, share in shares.items() if share.expires > clock.now}


def settle(instances: list[Instance], clock: Clock, *, rounds: int = 12, demand: dict[int, int] | None = None) -> None:
    """Let every live instance renew a few times while its demand stays as given."""
    for _ in range(rounds):
        clock.now += LEASE_S * URGENT_RENEW_FRACTION
        for number, instance in enumerate(instances):
            if instance.alive:
                if demand is not None:
                    instance.finish(instance.in_flight)  # requests are short next to a lease
                    instance.want(demand.get(number, 0))
                instance.budget.step()


# -- the split ------------------------------------------------------------------------------------------------
@given(st.integers(0, 60), st.dictionaries(st.text(min_size=1, max_size=4), st.integers(0, 80), max_size=12))
def test_the_fair_split_never_exceeds_the_budget_or_a_want_and_leaves_nothing_unused_that_someone_wants(
    budget: int, wants: dict[str, int]
) -> None:
    shares = fair_shares(budget, wants)
    assert sum(shares.values()) <= budget
    assert all(0 <= shares[k] <= wants[k] for k in wants)
    assert sum(shares.values()) == min(budget, sum(wants.values()))
    starved = [k for k in wants if shares[k] < wants[k]]
    # max-min fair: whoever got less than they wanted got at least as much as anyone else, less one
    assert all(shares[k] >= max(shares.values()) - 1 for k in starved)


def test_a_lower_claim_is_published_only_once_the_requests_above_it_have_finished() -> None:
    clock = Clock()
    instances, _ = cluster(2, clock)
    settle(instances, clock, demand={0: 40})
    assert live_claims(instances, clock) == {"i0": 40}
    first, second = instances
    second.want(40)
    second.budget.step()  # asks for its fair share: nothing is free yet
    clock.now += LEASE_S * URGENT_RENEW_FRACTION
    first.want(40)  # still 40 in flight
    first.budget.step()
    assert first.budget.allowed() == 24  # starts no more than its fair share from now on
    assert live_claims(instances, clock)["i0"] == 40  # but claims what is still in flight
    first.finish(16)
    clock.now += LEASE_S * URGENT_RENEW_FRACTION
    first.budget.step()
    assert live_claims(instances, clock)["i0"] == 24
    second.budget.step()
    assert second.budget.allowed() == 24


# -- the shared row ---------------------------------------------------------------------------------------------
def test_three_busy_instances_converge_on_equal_shares_within_the_budget() -> None:
    clock = Clock()
    instances, _ = cluster(3, clock)
    settle(instances, clock, demand={0: 100, 1: 100, 2: 100})
    assert live_claims(instances, clock) == {"i0": 16, "i1": 16, "i2": 16}
    assert [i.budget.allowed() for i in instances] == [16, 16, 16]


def test_one_busy_instance_gets_the_whole_budget_and_gives_it_back_when_idle() -> None:
    clock = Clock()
    instances, _ = cluster(2, clock)
    settle(instances, clock, demand={0: 100})
    assert instances[0].budget.allowed() == BUDGET
    assert live_claims(instances, clock) == {"i0": BUDGET}
    settle(instances, clock, demand={1: 100})  # the first goes idle, the second gets busy
    assert live_claims(instances, clock) == {"i1": BUDGET}


def test_a_dead_instance_returns_its_share_within_one_lease() -> None:
    clock = Clock()
    instances, _ = cluster(2, clock)
    settle(instances, clock, demand={0: 100, 1: 100})
    assert live_claims(instances, clock) == {"i0": 24, "i1": 24}
    instances[1].alive = False  # killed: no renewal, no release
    died_at = clock.now
    while clock.now < died_at + LEASE_S + LEASE_S * URGENT_RENEW_FRACTION:
        settle(instances, clock, rounds=1, demand={0: 100})
    assert live_claims(instances, clock) == {"i0": BUDGET}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["demand", "tick", "kill", "outage"]), st.integers(0, 3), st.integers(0, 80)),
        min_size=1,
        max_size=60,
    )
)
def test_whatever_the_instances_do_the_requests_in_flight_never_exceed_the_budget(
    actions: list[tuple[str, int, int]],
) -> None:
    """Requests finish well within a renewal interval (a time step here); an instance that cannot reach the
    row and whose share has lapsed trickles one request at a time, which is the one overshoot allowed."""
    clock = Clock()
    instances, _ = cluster(4, clock)
    for kind, number, amount in actions:
        instance = instances[number]
        if kind == "kill":
            instance.alive = False
            instance.in_flight = instance.waiting = 0  # a killed process's requests die with it
        elif kind == "outage":
            instance.way.down = not instance.way.down
        elif kind == "demand" and instance.alive:
            instance.finish(amount % 7)
            instance.want(amount)
        if amount % 3:
            clock.now += LEASE_S * URGENT_RENEW_FRACTION * (amount % 3)
            for other in instances:
                other.finish(other.in_flight)
        for other in instances:
            if not other.alive:
                continue
            other.budget.step()
            trickling = sum(1 for i in instances if i.alive and i.way.down)
            assert sum(i.in_flight for i in instances if i.alive) <= BUDGET + trickling
            for one in instances:  # an instance that just got more starts it; it never starts beyond allowed
                if one.alive:
                    one.want(one.in_flight + one.waiting)
            assert sum(i.in_flight for i in instances if i.alive) <= BUDGET + trickling
        assert sum(live_claims(instances, clock).values()) <= BUDGET


def test_an_idle_instance_makes_no_storage_calls() -> None:
    clock = Clock()
    instances, _ = cluster(1, clock)
    settle(instances, clock, demand={0: 10})
    settle(instances, clock, rounds=4, demand={0: 0})  # gives the share back
    calls_before = instances[0].budget.renewals + instances[0].budget.pause_reads
    settle(instances, clock, rounds=20)
    assert instances[0].budget.renewals + instances[0].budget.pause_reads == calls_before
    assert live_claims(instances, clock) == {}


def test_steady_demand_costs_a_few_renewals_per_lease() -> None:
    clock = Clock()
    instances, _ = cluster(1, clock)
    settle(instances, clock, demand={0: 10})
    before = instances[0].budget.renewals
    for _ in range(30):  # five leases, steady demand, stepped every tenth of a second's poll
        clock.now += LEASE_S / 6
        instances[0].want(10)
        instances[0].budget.step()
    per_lease = (instances[0].budget.renewals - before) / 5
    assert per_lease <= 1 / RENEW_FRACTION


def test_a_storage_outage_keeps_the_share_until_it_lapses_then_trickles() -> None:
    clock = Clock()
    instances, _ = cluster(1, clock)
    settle(instances, clock, demand={0: 10})
    assert instances[0].budget.allowed() == 10
    instances[0].way.down = True
    clock.now += LEASE_S * RENEW_FRACTION
    instances[0].budget.step()  # fails: the share still holds
    assert instances[0].budget.allowed() == 10
    clock.now += LEASE_S  # the share has lapsed: others count it free
    instances[0].budget.step()
    assert instances[0].budget.allowed() == 1


# -- the shared pause -----------------------------------------------------------------------------------------------
def test_a_429_seen_by_one_instance_pauses_the_others_at_their_next_poll() -> None:
    clock = Clock()
    instances, _ = cluster(3, clock)
    settle(instances, clock, demand={0: 10, 1: 10, 2: 10})
    instances[0].budget.share_pause(2.0)
    clock.now += THROTTLE_POLL_S
    for instance in instances[1:]:
        assert instance.budget.pause_remaining() == 0  # not read yet
        instance.budget.step()
        assert 1.5 - 1e-9 <= instance.budget.pause_remaining() <= 1.5 * 1.2 + 1e-9  # until T plus jitter
    assert instances[0].budget.pause_writes == 1
    instances[1].budget.share_pause(1.0)  # ends before the shared one: no second write
    assert instances[1].budget.pause_writes == 0


def test_the_pause_marker_only_moves_later() -> None:
    table = FakeTableClient("dvbridgebudget")
    store = TableBudgetStore(lambda: table, "p")
    store.raise_pause(2000.0)
    store.raise_pause(1000.0)
    assert store.read_pause() == 2000.0


# -- the governor on it ---------------------------------------------------------------------------------------------
def test_the_governor_waits_for_its_share_and_then_sends() -> None:
    table = FakeTableClient("dvbridgebudget")
    budget = SharedBudget(TableBudgetStore(lambda: table, "p"), 2, 6.0, instance="solo")
    governor = ThrottleGovernor(8, budget=budget)
    entered = threading.Event()
    release = threading.Event()
    active: list[int] = []
    peak = 0

    def request() -> None:
        nonlocal peak
        with governor.slot():
            active.append(1)
            peak = max(peak, len(active))
            entered.set()
            release.wait(5)
            active.pop()

    threads = [threading.Thread(target=request) for _ in range(4)]
    for thread in threads:
        thread.start()
    assert entered.wait(5), "no request got a slot from the shared budget"
    deadline = time.monotonic() + 6.0 * URGENT_RENEW_FRACTION + 2
    while peak < 2 and time.monotonic() < deadline:  # the first renewal saw one waiter, the next one all four
        time.sleep(0.05)
    time.sleep(0.3)
    assert peak == 2  # the budget, not the governor's own 8
    release.set()
    for thread in threads:
        thread.join(5)
    budget.stop()
    assert not any(t.is_alive() for t in threads)


def test_the_governor_shares_a_429_through_the_budget() -> None:
    table = FakeTableClient("dvbridgebudget")
    store = TableBudgetStore(lambda: table, "p")
    budget = SharedBudget(store, 4, 6.0, instance="solo")
    governor = ThrottleGovernor(4, budget=budget, sleep=lambda _: None)
    before = time.time()
    governor.throttled(2.0)
    assert before + 2.0 <= store.read_pause() <= time.time() + 2.0
    budget.stop()


@pytest.mark.parametrize("url", ["https://a.crm.dynamics.com", "https://a.crm.dynamics.com/"])
def test_one_partition_per_application_user(url: str) -> None:
    user = budget_partition(url, "11111111-2222-3333-4444-555555555555")
    assert user == budget_partition("https://A.crm.dynamics.com", "11111111-2222-3333-4444-555555555555")
    assert user != budget_partition(url, "11111111-2222-3333-4444-555555555556")
    assert len(user) == 32
    assert user.isalnum()
