"""bench.throughput's choice of time scale: each configuration starts slow enough that its real record and
request rates stay modest, the window shrinks with the scale but keeps the per-second limits (so the
ceiling is the same) and enough requests to measure, and a saturated window is run again one step slower."""

from __future__ import annotations

from typing import Any

import pytest

import bench.throughput as tp
from bench.cpu_window import CpuWindow

pytestmark = pytest.mark.unit

LADDER = tp.ladder(0.05, 0.4)


def cpu(saturated: bool) -> CpuWindow:
    return CpuWindow(30.0, 2, 0.9, 1.0, 0.0, 0.95 if saturated else 0.5, "devstack", 1.0 if saturated else 0.5,
                     saturated, "machine 95% busy" if saturated else "")  # fmt: skip


def test_the_ladder_doubles_up_to_the_top() -> None:
    assert pytest.approx([0.05, 0.1, 0.2, 0.4]) == LADDER


@pytest.mark.parametrize("config", tp.CONFIGS, ids=lambda c: c.name)
def test_every_configuration_starts_within_the_real_load_budgets(config: tp.Config) -> None:
    scale = tp.first_time_scale(config, LADDER)
    records_per_s = config.ceiling() / scale
    assert records_per_s <= tp.REAL_RECORDS_PER_S_BUDGET
    assert records_per_s / config.batch <= tp.REAL_REQUESTS_PER_S_BUDGET
    if scale > LADDER[0]:  # the rung below would have broken a budget or made requests too short
        lower = LADDER[LADDER.index(scale) - 1]
        records, requests = config.ceiling() / lower, config.ceiling() / config.batch / lower
        too_fast = records > tp.REAL_RECORDS_PER_S_BUDGET or requests > tp.REAL_REQUESTS_PER_S_BUDGET
        too_short = (tp.LATENCY_MS + config.server_ms) / 1000 * lower < (
            tp.MIN_REAL_S_PER_REQUEST + tp.MIN_REAL_S_PER_RECORD * config.batch
        )
        assert too_fast or too_short


def test_bulk_at_the_dop_hint_no_longer_runs_at_the_fastest_scale() -> None:
    """Its ceiling is ~12,000 real records/s at 0.05: what two cores could not serve."""
    bulk = next(c for c in tp.CONFIGS if c.name == "bulk:4")
    assert bulk.ceiling() / 0.05 > 10_000
    assert tp.first_time_scale(bulk, LADDER) >= 0.2


@pytest.mark.parametrize("config", tp.CONFIGS, ids=lambda c: c.name)
@pytest.mark.parametrize("scale", LADDER)
@pytest.mark.parametrize("seconds", [30.0, 0.5])
def test_a_shorter_window_keeps_the_per_second_limits_and_enough_requests(
    config: tp.Config, scale: float, seconds: float
) -> None:
    window = tp.window_for(config, scale, seconds)
    limits = tp.limits(scale, window)
    assert limits["requests_per_window"] / window == pytest.approx(tp.REQUESTS_PER_WINDOW / tp.WINDOW_S, rel=0.01)
    assert limits["execution_ms_per_window"] / window == pytest.approx(tp.EXECUTION_MS_PER_WINDOW / tp.WINDOW_S)
    if window < tp.WINDOW_S:
        assert window * config.ceiling() / config.batch >= tp.MIN_REQUESTS_PER_WINDOW
    assert tp.run_seconds(config, scale, seconds) >= tp.WINDOWS_PER_RUN * window * scale


def test_a_saturated_window_is_run_again_one_step_slower_and_only_the_last_is_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = tp.Config("batch", 50, 4)
    scales: list[float] = []

    def run(_stack: Any, _api: Any, cfg: tp.Config, scale: float, window_s: float, real_s: float) -> tp.Row:
        scales.append(scale)
        return tp.Row(cfg, scale, window_s, real_s, 1.0, 0, 0, cpu(saturated=len(scales) < 3))

    monkeypatch.setattr(tp, "run", run)
    monkeypatch.setattr(tp, "api_for", lambda _stack: None)
    rows, retried = tp.measure(None, [config], 0.05, 0.4, 30.0)  # type: ignore[arg-type]
    first = tp.first_time_scale(config, LADDER)
    assert scales[0] == first
    assert scales == sorted(scales)  # each re-run one rung slower
    assert len(set(scales)) == len(scales)
    assert [r.time_scale for r in retried] == scales[:-1]
    assert [r.time_scale for r in rows] == [scales[-1]]
    assert not rows[0].cpu.saturated


def test_a_row_still_saturated_at_the_slowest_affordable_scale_is_reported_marked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = tp.Config("bulk", 1000, 4)

    def run(_stack: Any, _api: Any, cfg: tp.Config, scale: float, window_s: float, real_s: float) -> tp.Row:
        return tp.Row(cfg, scale, window_s, real_s, 1.0, 0, 0, cpu(saturated=True))

    monkeypatch.setattr(tp, "run", run)
    monkeypatch.setattr(tp, "api_for", lambda _stack: None)
    rows, _ = tp.measure(None, [config], 0.05, 0.4, 30.0)  # type: ignore[arg-type]
    assert rows[0].cpu.saturated
    assert "⚠ saturated" in tp.table_line(rows[0].as_dict())
