"""The backtest engine (``agent.sim.replay.run_backtest``) on tiny hand-made inputs.

One node type, ``gpu``, with two spot pools ``a`` and ``b``. Its throughput is chosen so that one node
serves exactly 1 request/s of the standard token mix (350 prompt + 350 output tokens) at the SLO's 70%
utilization: capacity in requests/s is a count of nodes. Steps are 1 minute, the policy ticks every 5
minutes (steps 0, 5, 10, ...), a node boots in 3 steps and a notice lasts 2 steps. Prices are per hour,
so one node-step costs price ÷ 60.

The policies are scripts: from a given step on they ask for fixed targets, and they record every call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest

from agent.core.catalog import Catalog, InstanceType, Tier
from agent.core.demand import Demand
from agent.core.optimizer import PoolKey
from agent.sim.replay import BacktestResult, Market, SimConfig, Targets, View, run_backtest

STEP_S = 60.0
BOOT_STEPS = 3
NOTICE_STEPS = 2
SPOT_HOURLY = 6.0
ONDEMAND_HOURLY = 12.0
RESERVED_HOURLY = 3.0
STEP_H = STEP_S / 3600

GPU = InstanceType(
    name="gpu",
    gpus=8,
    gpu_type="H100",
    ondemand_hourly=ONDEMAND_HOURLY,
    reserved_hourly=RESERVED_HOURLY,
    spot_hourly=SPOT_HOURLY,
    spot_reclaim_per_hour=0.05,
    max_batch=1,
    prefill_tokens_per_s=1000.0,
    decode_tokens_per_s=1000.0,
    pools=("a", "b"),
)
CATALOG = Catalog(name="tiny", types={"gpu": GPU})
A: PoolKey = ("gpu", "a")
B: PoolKey = ("gpu", "b")
CFG = SimConfig(
    step_s=STEP_S,
    policy_interval_s=300.0,
    notice_s=NOTICE_STEPS * STEP_S,
    boot_s=BOOT_STEPS * STEP_S,
    warmup_days=0,
)
PLENTY = 100


def flat(rps: float, steps: int, prompt: float = 350.0, output: float = 350.0) -> list[Demand]:
    return [Demand(rps, prompt, output)] * steps


def market(a: Sequence[int], b: Sequence[int] | None = None) -> Market:
    """Spot availability per step in pools a and b (b: none unless given)."""
    b = [0] * len(a) if b is None else b
    return Market(pools=(A, B), available=np.array([a, b], dtype=np.int64).T)


def ask(spot: int = 0, ondemand: int = 0, pool: PoolKey = A) -> Targets:
    return Targets(spot={pool: spot} if spot else {}, ondemand={A: ondemand} if ondemand else {})


@dataclass
class Scripted:
    """Asks for ``schedule[s]`` from step ``s`` on; commits to ``reserved``; records every call."""

    schedule: dict[int, Targets]
    reserved: dict[str, int] = field(default_factory=dict)
    name: str = "scripted"
    views: list[View] = field(default_factory=list)
    observed: list[float] = field(default_factory=list)
    commits: list[float] = field(default_factory=list)
    wake_above: float = math.inf

    def observe(self, t: float, demand: Demand) -> None:
        self.observed.append(t)

    def commit(self, t: float, market: Market) -> dict[str, int]:
        self.commits.append(t)
        return dict(self.reserved)

    def plan(self, view: View) -> Targets:
        self.views.append(view)
        return self.schedule[max(s for s in self.schedule if s <= view.step)]

    def wants_plan(self, t: float, demand: Demand) -> bool:
        return demand.rps > self.wake_above

    def calls(self) -> list[tuple[int, str]]:
        return [(v.step, v.reason) for v in self.views]


def run(policy: Scripted, demand: Sequence[Demand], mkt: Market, cfg: SimConfig = CFG) -> BacktestResult:
    return run_backtest(CATALOG, demand, mkt, policy, cfg, keep_records=True)


def serving(result: BacktestResult, tier: Tier) -> list[float]:
    """Nodes of ``tier`` serving at each scored step (one node serves 1 request/s)."""
    return [r.capacity_rps[tier] for r in result.records]


def node_cost(hourly: float, node_steps: int) -> float:
    return hourly * node_steps * STEP_H


# -- boot delay --------------------------------------------------------------------------------------


def test_a_spot_node_launched_mid_run_serves_only_after_its_boot_and_costs_from_its_launch() -> None:
    policy = Scripted({0: ask(ondemand=1), 5: ask(spot=1, ondemand=1)})
    result = run(policy, flat(1.0, 12), market([PLENTY] * 12))

    launched, ready = 5, 5 + BOOT_STEPS
    assert serving(result, "spot") == [0.0] * ready + [1.0] * (12 - ready)
    assert serving(result, "ondemand") == [1.0] * 12
    assert result.cost == pytest.approx(
        node_cost(ONDEMAND_HOURLY, 12) + node_cost(SPOT_HOURLY, 12 - launched)
    )
    assert result.node_hours["spot"] == pytest.approx((12 - launched) * STEP_H)


def test_the_first_plan_at_the_scored_start_is_already_running() -> None:
    policy = Scripted({0: ask(spot=2, ondemand=1)})
    result = run(policy, flat(3.0, 4), market([PLENTY] * 4))

    assert policy.calls()[0] == (0, "start")
    assert serving(result, "spot") == [2.0] * 4
    assert serving(result, "ondemand") == [1.0] * 4
    assert result.shortfall_minutes == 0
    assert result.slo_attainment == 1.0


# -- the spot market ---------------------------------------------------------------------------------


def test_spot_beyond_a_drop_in_availability_keeps_serving_for_the_notice_and_then_disappears() -> None:
    drop = 7  # not a tick step
    policy = Scripted({0: ask(spot=3)})
    result = run(policy, flat(1.0, 12), market([3] * drop + [1] * (12 - drop)))

    gone = drop + NOTICE_STEPS
    assert serving(result, "spot") == [3.0] * gone + [1.0] * (12 - gone)
    assert [r.preempted for r in result.records] == [0] * drop + [2] + [0] * (12 - drop - 1)
    assert result.preemptions == 2
    # Reclaimed nodes are paid until they disappear.
    assert result.cost == pytest.approx(node_cost(SPOT_HOURLY, 3 * gone + 1 * (12 - gone)))


def test_every_reclaim_wakes_the_policy_at_once_with_reason_notice() -> None:
    policy = Scripted({0: ask(spot=2)})
    run(policy, flat(1.0, 12), market([2] * 3 + [1] * 5 + [0] * 4))

    assert policy.calls() == [(0, "start"), (3, "notice"), (5, "tick"), (8, "notice"), (10, "tick")]


def test_a_policy_that_asks_after_a_step_acts_at_the_next_step_with_reason_demand() -> None:
    policy = Scripted({0: ask(ondemand=1)}, wake_above=2.0)
    run(
        policy,
        [Demand(1.0, 100, 100)] * 2 + [Demand(3.0, 100, 100)] + [Demand(1.0, 100, 100)] * 9,
        market([PLENTY] * 12),
    )

    # Step 2's demand (3 rps) is seen after step 2: the policy acts at step 3, off the 5-step tick.
    assert policy.calls() == [(0, "start"), (3, "demand"), (5, "tick"), (10, "tick")]


def test_each_reclaimed_node_counts_one_preemption() -> None:
    policy = Scripted({0: ask(spot=2, pool=A), 5: Targets({A: 2, B: 3}, {})})
    result = run(policy, flat(1.0, 15), market([2] * 12 + [0] * 3, [3] * 14 + [1]))

    assert result.preemptions == 2 + 2
    assert [r.preempted for r in result.records][12:] == [2, 0, 2]


def test_the_newest_spot_node_is_reclaimed_first() -> None:
    # One node runs from the start; a second launches at step 5 and boots for 5 steps. The pool drops
    # back to one node at step 6: the booting node is the one reclaimed (gone at step 8, before it would
    # serve) and the running one keeps serving. Were the older one reclaimed, nothing would serve at 8-9.
    cfg = SimConfig(step_s=STEP_S, notice_s=NOTICE_STEPS * STEP_S, boot_s=5 * STEP_S, warmup_days=0)
    policy = Scripted({0: ask(spot=1), 5: ask(spot=2)})
    result = run(policy, flat(1.0, 12), market([2] * 6 + [1] * 6), cfg)

    assert serving(result, "spot") == [1.0] * 12
    assert result.preemptions == 1
    assert result.cost == pytest.approx(node_cost(SPOT_HOURLY, 12 + 3))  # the reclaimed one: steps 5-7


def test_a_spot_node_reclaimed_while_booting_never_serves() -> None:
    # Launched at step 5 (ready at 8); the pool empties at step 7, so its deadline is step 9.
    policy = Scripted({0: ask(), 5: ask(spot=1)})
    result = run(policy, flat(1.0, 12), market([1] * 7 + [0] * 5))

    assert result.preemptions == 1
    assert serving(result, "spot") == [0.0] * 12


def test_spot_launches_never_exceed_the_pools_availability() -> None:
    policy = Scripted({0: ask(spot=5)})
    result = run(policy, flat(5.0, 16), market([2] * 7 + [4] * 9))

    # Two at the start; the pool offers four from step 7, the tick at step 10 launches the other two.
    assert serving(result, "spot") == [2.0] * (10 + BOOT_STEPS) + [4.0] * (16 - 10 - BOOT_STEPS)
    assert [v.spot.get(A, 0) for v in policy.views] == [0, 2, 2, 4]
    assert all(v.spot.get(A, 0) <= v.available[A] for v in policy.views)
    assert result.preemptions == 0


def test_a_pool_without_availability_launches_no_spot() -> None:
    policy = Scripted({0: ask(spot=3, pool=B)})
    result = run(policy, flat(1.0, 6), market([PLENTY] * 6, [0] * 6))

    assert serving(result, "spot") == [0.0] * 6
    assert result.cost == 0.0


# -- reserved nodes ----------------------------------------------------------------------------------


def test_reserved_nodes_cost_every_step_whether_used_or_not() -> None:
    policy = Scripted({0: ask()}, reserved={"gpu": 2})
    result = run(policy, flat(0.0, 10), market([PLENTY] * 10))

    assert policy.commits == [0.0]
    assert result.reserved == {"gpu": 2}
    assert serving(result, "reserved") == [2.0] * 10
    assert result.cost == pytest.approx(node_cost(RESERVED_HOURLY, 2 * 10))
    assert result.node_hours == pytest.approx({"reserved": 2 * 10 * STEP_H, "spot": 0.0, "ondemand": 0.0})
    assert all(v.reserved == {"gpu": 2} for v in policy.views)


# -- unserved demand ---------------------------------------------------------------------------------


def test_demand_above_capacity_counts_in_shortfall_minutes_and_slo_attainment() -> None:
    policy = Scripted({0: ask(ondemand=2)})
    result = run(policy, flat(2.0, 6) + flat(3.0, 4), market([PLENTY] * 10))

    assert result.shortfall_minutes == 4.0
    assert result.slo_attainment == pytest.approx((6 * 2 + 4 * 2) / (6 * 2 + 4 * 3))
    assert [r.served_rps for r in result.records] == [2.0] * 10


def test_slo_attainment_weighs_demand_by_tokens() -> None:
    # One node serves 1 request/s of 350 + 350 tokens but only 0.5 of 700 + 700 tokens.
    policy = Scripted({0: ask(ondemand=1)})
    light, heavy = flat(1.0, 5), flat(1.0, 5, prompt=700.0, output=700.0)
    result = run(policy, light + heavy, market([PLENTY] * 10))

    assert result.shortfall_minutes == 5.0
    served_tokens = 5 * 1.0 * 700 + 5 * 0.5 * 1400
    demand_tokens = 5 * 1.0 * 700 + 5 * 1.0 * 1400
    assert result.slo_attainment == pytest.approx(served_tokens / demand_tokens)  # 2/3, not 3/4 by requests
    assert result.demand_tokens == pytest.approx(demand_tokens * STEP_S)


def test_shortfall_minutes_count_steps_of_any_size() -> None:
    cfg = SimConfig(step_s=300.0, policy_interval_s=300.0, boot_s=300.0, warmup_days=0)
    policy = Scripted({0: ask(ondemand=1)})
    result = run(policy, flat(1.0, 2) + flat(1.5, 3), market([PLENTY] * 5), cfg)

    assert result.shortfall_minutes == 3 * 5.0
    assert result.hours == pytest.approx(5 * 300 / 3600)


# -- releases ----------------------------------------------------------------------------------------


def test_a_released_node_keeps_serving_and_costing_until_its_replacement_is_ready() -> None:
    # Two on-demand nodes run; at step 5 the policy swaps them for two spot nodes.
    policy = Scripted({0: ask(ondemand=2), 5: ask(spot=2)})
    result = run(policy, flat(2.0, 12), market([PLENTY] * 12))

    ready = 5 + BOOT_STEPS
    assert serving(result, "ondemand") == [2.0] * ready + [0.0] * (12 - ready)
    assert serving(result, "spot") == [0.0] * ready + [2.0] * (12 - ready)
    assert result.shortfall_minutes == 0
    assert result.cost == pytest.approx(node_cost(ONDEMAND_HOURLY, 2 * ready) + node_cost(SPOT_HOURLY, 2 * 7))


def test_a_released_node_goes_at_once_when_nothing_is_booting() -> None:
    policy = Scripted({0: ask(ondemand=3), 5: ask(ondemand=1)})
    result = run(policy, flat(1.0, 8), market([PLENTY] * 8))

    assert serving(result, "ondemand") == [3.0] * 5 + [1.0] * 3
    assert result.cost == pytest.approx(node_cost(ONDEMAND_HOURLY, 3 * 5 + 1 * 3))


def test_a_booting_node_that_is_released_goes_at_once_and_never_serves() -> None:
    policy = Scripted({0: ask(ondemand=1), 5: ask(ondemand=2), 10: ask(ondemand=1)})
    result = run(policy, flat(1.0, 16), market([PLENTY] * 16))

    # The second node boots from step 5 (ready at 8) and serves 8-9; released at 10, it goes at once.
    assert serving(result, "ondemand") == [1.0] * 8 + [2.0] * 2 + [1.0] * 6

    policy = Scripted({0: ask(ondemand=1), 5: ask(ondemand=2), 6: ask(ondemand=1)})
    cfg = SimConfig(step_s=STEP_S, policy_interval_s=STEP_S, boot_s=BOOT_STEPS * STEP_S, warmup_days=0)
    result = run(policy, flat(1.0, 10), market([PLENTY] * 10), cfg)
    assert serving(result, "ondemand") == [1.0] * 10
    assert result.cost == pytest.approx(node_cost(ONDEMAND_HOURLY, 10 + 1))


# -- warm-up -----------------------------------------------------------------------------------------


def test_warm_up_steps_are_observed_by_the_policy_but_not_scored() -> None:
    warm = 10
    cfg = SimConfig(
        step_s=STEP_S, policy_interval_s=300.0, boot_s=BOOT_STEPS * STEP_S, warmup_days=warm * STEP_S / 86400
    )
    policy = Scripted({0: ask(ondemand=1)})
    demand = flat(5.0, warm) + flat(1.0, 10)
    result = run_backtest(CATALOG, demand, market([PLENTY] * 20), policy, cfg, keep_records=True)

    assert policy.observed == [i * STEP_S for i in range(20)]
    assert policy.commits == [warm * STEP_S]
    assert policy.calls()[0] == (warm, "start")
    assert policy.views[0].demand_now == demand[warm - 1]  # the policy sees the last measured step
    assert len(result.records) == 10
    assert result.records[0].t == warm * STEP_S
    assert result.hours == pytest.approx(10 * STEP_H)
    assert result.cost == pytest.approx(node_cost(ONDEMAND_HOURLY, 10))
    # The warm-up's 5 requests/s would have been short of the one node; only scored steps count.
    assert result.shortfall_minutes == 0
    assert result.demand_tokens == pytest.approx(10 * 1.0 * 700 * STEP_S)


def test_a_market_that_does_not_match_the_demand_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"market\.available has shape"):
        run(Scripted({0: ask()}), flat(1.0, 5), market([1] * 4))


def test_a_released_node_stays_when_its_replacement_is_reclaimed_while_booting() -> None:
    # Two on-demand nodes are swapped for spot at step 5; at step 6 the pool empties and both booting
    # spot nodes are reclaimed. The policy, woken by the notice, takes the on-demand nodes back: no gap.
    policy = Scripted({0: ask(ondemand=2), 5: ask(spot=2), 6: ask(ondemand=2)})
    result = run(policy, flat(2.0, 12), market([PLENTY] * 6 + [0] * 6))
    assert serving(result, "ondemand") == [2.0] * 12
    assert result.shortfall_minutes == 0
    assert (6, "notice") in policy.calls()


def test_of_two_leaving_nodes_a_plan_takes_back_the_one_that_would_leave_last() -> None:
    # Two on-demand nodes are swapped for spot one at a time (steps 1 and 2), each serving on until the spot
    # nodes booting at its release are up (steps 4 and 5). At step 3 the policy wants one on-demand node
    # again: it keeps the one that would leave at 5, and the other leaves at 4 as it was to.
    schedule = {0: ask(ondemand=2), 1: ask(spot=1, ondemand=1), 2: ask(spot=2), 3: ask(spot=2, ondemand=1)}
    cfg = SimConfig(step_s=STEP_S, policy_interval_s=STEP_S, boot_s=BOOT_STEPS * STEP_S, warmup_days=0)
    result = run(Scripted(schedule), flat(1.0, 8), market([PLENTY] * 8), cfg)
    assert serving(result, "ondemand") == [2.0] * 4 + [1.0] * 4
    assert serving(result, "spot") == [0.0] * 4 + [1.0] + [2.0] * 3
