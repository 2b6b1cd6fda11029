"""Edge cases of the backtest's setup and baselines: no warm-up, warm-up longer than the trace, gaps,
and SkyServe's up/down delays."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agent.backtest import build_setup, fill_gaps, make_policy, run_strategies
from agent.config import load_settings, resolve_catalog
from agent.core.capacity import SloConfig
from agent.core.demand import Demand
from agent.sim.replay import Market, SimConfig, View
from agent.sim.strategies import SkyServePolicy
from agent.sim.traces import DemandStep, DemandTrace

SEED = resolve_catalog("seed")
MAIN = SEED.main_type.name
POOL = (MAIN, "default")


def write_inputs(tmp_path: Path, rows: list[tuple[float, float]]) -> tuple[str, str]:
    trace = tmp_path / "demand.csv"
    trace.write_text(
        "time_s,rps,prompt_tokens,output_tokens\n" + "".join(f"{t},{r},1500,500\n" for t, r in rows),
        encoding="utf-8",
    )
    spot = tmp_path / "spot.json"
    spot.write_text(json.dumps({"metadata": {"gap_seconds": 300}, "data": [4] * 2000}), encoding="utf-8")
    return f"csv:{trace}", f"file:{spot}"


def sim(warmup_days: float) -> SimConfig:
    return SimConfig(step_s=300, policy_interval_s=300, warmup_days=warmup_days, slo=SloConfig())


def test_without_warm_up_the_forecasting_strategies_commit_to_nothing_and_still_run(tmp_path: Path) -> None:
    demand, spot = write_inputs(tmp_path, [(i * 300.0, 10.0 + (i % 12)) for i in range(288)])
    setup = build_setup(SEED, demand, spot, sim(0))
    run = run_strategies(setup, ["rolling", "seed-hybrid", "reserved-spot"], load_settings(env={}))
    assert all(r.reserved == {} for r in run.reports)
    assert all(r.cost > 0 for r in run.reports)


def test_a_warm_up_as_long_as_the_trace_is_rejected_with_a_reason(tmp_path: Path) -> None:
    demand, spot = write_inputs(tmp_path, [(i * 300.0, 10.0) for i in range(288)])
    with pytest.raises(ValueError, match="warm-up"):
        build_setup(SEED, demand, spot, sim(1.0))


def test_gaps_in_a_trace_become_zero_traffic_steps_so_time_stays_aligned() -> None:
    # (A csv row lasts until the next one; a ServeGen file can miss windows: that is a gap.)
    mix = Demand(10.0, 1500, 500)
    steps = [DemandStep(i * 300.0, 300.0, mix) for i in [*range(100), *range(120, 300)]]
    filled = fill_gaps(DemandTrace("gappy", tuple(steps)), 300.0)
    assert len(filled.steps) == 300
    assert [s.time_s for s in filled.steps] == [i * 300.0 for i in range(300)]
    assert [s.demand.rps for s in filled.steps[100:120]] == [0.0] * 20


def view(t: float, rps: float, reason: str = "tick", ready: int = 0) -> View:
    return View(
        t=t,
        step=int(t // 60),
        reason=reason,  # type: ignore[arg-type]
        demand_now=Demand(rps, 1500, 500),
        reserved={},
        spot={POOL: ready},
        spot_ready={POOL: ready},
        ondemand={},
        available={POOL: 100},
    )


def replicas(policy: SkyServePolicy, v: View) -> int:
    return sum(policy.plan(v).spot.values())


def test_skyserve_changes_its_target_only_after_the_new_one_has_held_for_the_delay() -> None:
    policy = SkyServePolicy(SEED, SloConfig())
    per_replica = 0.7 / (1500 / 50000 + 500 / 8000)
    assert replicas(policy, view(0, 5 * per_replica, "start", ready=5)) == 5
    assert replicas(policy, view(60, 6 * per_replica, ready=5)) == 5  # up, pending
    assert replicas(policy, view(120, 5 * per_replica, ready=5)) == 5  # back: the change did not hold
    assert replicas(policy, view(400, 6 * per_replica, ready=5)) == 5  # up again: the delay restarts
    assert replicas(policy, view(700, 6 * per_replica, ready=5)) == 6  # held 300 s
    assert replicas(policy, view(760, 0.0, ready=6)) == 6  # a dip to zero waits the down delay


def test_skyserve_pays_no_fallback_for_spot_that_is_up_at_the_scored_start() -> None:
    policy = SkyServePolicy(SEED, SloConfig(), base_ondemand=1)
    targets = policy.plan(view(0, 4.0, "start"))
    assert sum(targets.ondemand.values()) == 1


def test_make_policy_scales_the_headroom_history_to_a_week_of_steps(tmp_path: Path) -> None:
    demand, spot = write_inputs(tmp_path, [(i * 300.0, 10.0) for i in range(600)])
    setup = build_setup(SEED, demand, spot, sim(1.0))
    policy = make_policy("rolling", setup, load_settings(env={}), load_settings(env={}).optimizer.to_core())
    assert policy.demand.history_steps == 7 * 288  # type: ignore[attr-defined]


def test_the_engine_rejects_an_empty_trace() -> None:
    from agent.sim.replay import run_backtest

    empty = Market(pools=(POOL,), available=np.zeros((0, 1), dtype=np.int64))
    with pytest.raises(ValueError, match="no demand"):
        run_backtest(SEED, [], empty, SkyServePolicy(SEED, SloConfig()), sim(0))
