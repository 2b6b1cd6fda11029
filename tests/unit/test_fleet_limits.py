"""The team's guardrails (``[limits]``) in the tick optimizer: a plan never goes above them, says which
clamped it and what it would have been without them, and with no limits nothing changes."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import msgspec
import pytest

from agent.config import ConfigError, load_settings, resolve_catalog
from agent.core.capacity import SloConfig, rps_per_instance
from agent.core.demand import Demand
from agent.core.optimizer import (
    Fleet,
    FleetLimits,
    OptimizerConfig,
    TickInput,
    optimize_tick,
    violations,
)

SEED = resolve_catalog("seed")
H100_RPS = rps_per_instance(SEED.type("h100_8x"), 1500, 500, SloConfig())


def demand(nodes: float) -> Demand:
    return Demand(nodes * H100_RPS, 1500, 500)


def tick(nodes: float, reserved: int = 0) -> TickInput:
    return TickInput(demand(nodes), demand(nodes), Fleet(reserved={"h100_8x": reserved} if reserved else {}))


def test_without_limits_the_plan_is_the_same_as_before() -> None:
    inp = tick(12, reserved=1)
    before = optimize_tick(SEED, inp)
    after = optimize_tick(SEED, inp, limits=FleetLimits())
    assert dataclasses.replace(after, solve_seconds=0) == dataclasses.replace(before, solve_seconds=0)
    assert after.limited == ()
    assert after.unlimited is None


def test_a_plan_above_the_total_and_cost_limits_is_clamped_and_says_what_it_would_have_been() -> None:
    inp = tick(120)  # made-up demand: a hundred-odd nodes
    free = optimize_tick(SEED, inp)
    limits = FleetLimits(max_total_instances=6, max_hourly_cost=400.0)
    alloc = optimize_tick(SEED, inp, limits=limits)
    nodes = alloc.total("spot") + alloc.total("ondemand")
    assert nodes <= 6
    assert alloc.hourly_cost <= 400.0
    broken = violations(SEED, inp, alloc, limits=limits, step_limits=False)
    assert not [name for name in broken if name.startswith("limit:")]
    assert "cover_now" in broken  # far short of the demand the reports claim: said below
    assert alloc.limited
    assert all(name.startswith("limit:") for name in alloc.limited)
    assert set(alloc.limited) <= set(alloc.binding)
    assert alloc.unlimited is not None
    assert alloc.unlimited.hourly_cost == pytest.approx(free.hourly_cost)
    assert alloc.unlimited.instances == free.total("spot") + free.total("ondemand")
    without = f"without them {alloc.unlimited.instances} nodes, ${free.hourly_cost:.2f}/h"
    assert without in alloc.reason
    # The SLO cannot be met within them: the best fleet within them, saying so.
    assert alloc.status == "fallback"
    assert alloc.reason.startswith("infeasible: ")
    assert "limit:" in alloc.reason


@pytest.mark.parametrize(
    ("limits", "name"),
    [
        (FleetLimits(max_spot_instances=2), "limit:spot"),
        (FleetLimits(max_ondemand_instances=1), "limit:ondemand"),
        (FleetLimits(max_total_instances=3), "limit:total"),
    ],
)
def test_each_node_limit_holds_and_is_named(limits: FleetLimits, name: str) -> None:
    inp = tick(8)
    alloc = optimize_tick(SEED, inp, limits=limits)
    assert name in alloc.limited
    assert alloc.total("spot") <= limits.max_spot_instances
    assert alloc.total("ondemand") <= limits.max_ondemand_instances
    assert alloc.total("spot") + alloc.total("ondemand") <= limits.max_total_instances


def test_a_spot_limit_that_still_covers_demand_moves_nodes_to_ondemand_and_keeps_the_slo() -> None:
    inp = tick(6)
    cfg = OptimizerConfig(min_non_spot_fraction=0.0, max_step_up=None, max_step_down=None)
    alloc = optimize_tick(SEED, inp, cfg=cfg, limits=FleetLimits(max_spot_instances=1))
    assert alloc.total("spot") <= 1
    assert alloc.status == "optimal"
    assert alloc.capacity_now_rps >= inp.demand_now.rps
    assert alloc.limited == ("limit:spot",)
    assert "clamped by [limits] (limit:spot)" in alloc.reason


def test_a_limit_the_plan_merely_touches_is_not_reported_as_clamping() -> None:
    inp = tick(3)
    free = optimize_tick(SEED, inp)
    exact = free.total("spot") + free.total("ondemand")
    alloc = optimize_tick(SEED, inp, limits=FleetLimits(max_total_instances=exact))
    assert "limit:total" in alloc.binding  # tight ...
    assert alloc.limited == ()
    assert alloc.unlimited is None


def test_reserved_nodes_above_their_limit_are_reported_and_count_towards_the_total() -> None:
    inp = tick(4, reserved=3)
    alloc = optimize_tick(SEED, inp, limits=FleetLimits(max_reserved_instances=1, max_total_instances=3))
    assert alloc.reserved == {"h100_8x": 3}  # a commitment: the tick never changes it
    assert alloc.total("spot") + alloc.total("ondemand") == 0
    assert "limit:reserved" in alloc.limited
    assert "limit:total" in alloc.limited


def test_limits_beat_the_step_down_limit_even_when_step_limits_are_never_lifted() -> None:
    held = Fleet(ondemand={("h100_8x", "default"): 10})
    inp = TickInput(demand(10), demand(10), held)
    cfg = OptimizerConfig(relax_step_limits=False)
    alloc = optimize_tick(SEED, inp, cfg=cfg, limits=FleetLimits(max_ondemand_instances=4))
    assert alloc.total("ondemand") <= 4


def test_a_limit_outside_its_range_is_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match="max_hourly_cost"):
        FleetLimits(max_hourly_cost=math.nan)
    with pytest.raises(msgspec.ValidationError, match="max_total_instances"):
        msgspec.convert({"max_total_instances": 2**64 - 1}, FleetLimits)


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("max_spot_instances = -1", "max_spot_instances"),
        ("max_hourly_cost = inf", "max_hourly_cost"),
        ("max_total_instances = 18446744073709551615", "max_total_instances"),
        ("max_hourly_cost = 0", "max_hourly_cost"),
        ("max_nodes = 3", "max_nodes"),
    ],
)
def test_limits_settings_out_of_range_stop_start_up_in_one_line(
    tmp_path: Path, line: str, field: str
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(f"[limits]\n{line}\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path, env={})
    message = str(err.value)
    assert "\n" not in message
    assert field in message
    assert "limits" in message


def test_limits_settings_default_to_no_limit_and_read_from_the_environment() -> None:
    assert not load_settings(env={}).limits.any()
    settings = load_settings(env={"COST_AGENT_LIMITS__MAX_HOURLY_COST": "50"})
    assert settings.limits.max_hourly_cost == 50.0
