"""The fleet against the plan, read as a specification: what each costs per hour at the same prices, the
gap between them, the node counts by tier, and what bad input does (nothing, loudly)."""

from __future__ import annotations

import json
import math
import re

import msgspec
import pytest

from agent.core.catalog import Catalog, InstanceType
from agent.core.fleet_state import FleetState
from agent.core.plan_gap import PlanGap, paid_slots, plan_gap, slots_hourly_cost
from agent.core.reconcile import Slot
from schemas import CostReport


def instance_type(name: str, ondemand: float, reserved: float, spot: float) -> InstanceType:
    return InstanceType(
        name=name,
        gpus=8,
        gpu_type=name.upper(),
        ondemand_hourly=ondemand,
        reserved_hourly=reserved,
        spot_hourly=spot,
        spot_reclaim_per_hour=0.05,
        max_batch=256,
        prefill_tokens_per_s=50_000.0,
        decode_tokens_per_s=8_000.0,
        pools=("zone-a", "zone-b"),
    )


# Round prices, each different, so that every expected figure below can be checked by hand.
CATALOG = Catalog(
    name="test",
    types={
        "h100": instance_type("h100", ondemand=30.0, reserved=20.0, spot=10.0),
        "a100": instance_type("a100", ondemand=16.0, reserved=12.0, spot=4.0),
    },
)
NO_QUOTES: dict[tuple[str, str], float] = {}


# --- pricing -----------------------------------------------------------------------------------------


def test_each_node_is_priced_at_its_own_types_price_for_its_tier() -> None:
    fleet: dict[Slot, int] = {
        ("h100", "zone-a", "reserved"): 1,
        ("h100", "zone-a", "ondemand"): 2,
        ("a100", "zone-b", "spot"): 3,
    }

    gap = plan_gap(CATALOG, fleet, None, NO_QUOTES)

    assert gap.fleet_hourly_cost == 20.0 + 2 * 30.0 + 3 * 4.0
    assert gap.fleet_nodes == {"reserved": 1, "spot": 3, "ondemand": 2}


def test_spot_is_priced_at_the_fresh_quote_for_its_pool_and_at_the_catalogs_price_without_one() -> None:
    fleet: dict[Slot, int] = {("h100", "zone-a", "spot"): 2, ("h100", "zone-b", "spot"): 1}

    gap = plan_gap(CATALOG, fleet, None, {("h100", "zone-a"): 12.5})

    assert gap.fleet_hourly_cost == 2 * 12.5 + 1 * 10.0  # zone-b has no quote: the catalog's 10.0


def test_a_quote_for_a_pool_prices_only_spot_nodes_of_that_type_and_pool() -> None:
    fleet: dict[Slot, int] = {
        ("h100", "zone-a", "ondemand"): 1,
        ("h100", "zone-a", "reserved"): 1,
        ("a100", "zone-a", "spot"): 1,
    }

    gap = plan_gap(CATALOG, fleet, None, {("h100", "zone-a"): 99.0})

    assert gap.fleet_hourly_cost == 30.0 + 20.0 + 4.0


def test_the_plan_is_priced_at_the_same_quotes_so_the_gap_comes_only_from_the_nodes() -> None:
    same: dict[Slot, int] = {("h100", "zone-a", "spot"): 4, ("a100", "zone-b", "ondemand"): 1}

    for quote in (1.0, 10.0, 55.0):
        gap = plan_gap(CATALOG, same, same, {("h100", "zone-a"): quote})
        assert gap.plan_hourly_cost == gap.fleet_hourly_cost == 4 * quote + 16.0
        assert gap.plan_gap_hourly == 0.0


def test_reserved_nodes_count_on_both_sides_as_the_plan_lists_them() -> None:
    fleet: dict[Slot, int] = {("h100", "zone-a", "reserved"): 2, ("h100", "zone-a", "ondemand"): 1}
    plan: dict[Slot, int] = {("h100", "zone-a", "reserved"): 2, ("h100", "zone-a", "spot"): 1}

    gap = plan_gap(CATALOG, fleet, plan, NO_QUOTES)

    assert gap.fleet_hourly_cost == 2 * 20.0 + 30.0
    assert gap.plan_hourly_cost == 2 * 20.0 + 10.0
    assert gap.plan_gap_hourly == 30.0 - 10.0  # on-demand where the plan has spot
    assert gap.plan_nodes == {"reserved": 2, "spot": 1, "ondemand": 0}


# --- the gap -----------------------------------------------------------------------------------------


def test_a_fleet_dearer_than_the_plan_has_a_positive_gap() -> None:
    fleet: dict[Slot, int] = {("h100", "zone-a", "ondemand"): 3}
    plan: dict[Slot, int] = {("h100", "zone-a", "ondemand"): 1, ("h100", "zone-b", "spot"): 1}

    gap = plan_gap(CATALOG, fleet, plan, NO_QUOTES)

    assert gap == PlanGap(
        fleet_hourly_cost=90.0,
        fleet_nodes={"reserved": 0, "spot": 0, "ondemand": 3},
        plan_hourly_cost=40.0,
        plan_nodes={"reserved": 0, "spot": 1, "ondemand": 1},
        plan_gap_hourly=50.0,
    )


def test_an_empty_fleet_costs_nothing_and_falls_short_of_the_plan_by_the_plans_cost() -> None:
    plan: dict[Slot, int] = {("a100", "zone-a", "spot"): 2, ("a100", "zone-a", "ondemand"): 0}

    gap = plan_gap(CATALOG, {}, plan, NO_QUOTES)

    assert gap.fleet_hourly_cost == 0.0
    assert gap.fleet_nodes == {"reserved": 0, "spot": 0, "ondemand": 0}
    assert gap.plan_hourly_cost == 8.0
    assert gap.plan_gap_hourly == -8.0


def test_before_any_plan_the_plan_figures_are_absent_and_its_counts_zero() -> None:
    gap = plan_gap(CATALOG, {("h100", "zone-a", "ondemand"): 1}, None, NO_QUOTES)

    assert gap.fleet_hourly_cost == 30.0
    assert gap.plan_hourly_cost is None
    assert gap.plan_gap_hourly is None
    assert gap.plan_nodes == {"reserved": 0, "spot": 0, "ondemand": 0}


def test_a_plan_of_zeros_is_a_plan_that_costs_nothing_not_no_plan() -> None:
    gap = plan_gap(CATALOG, {("h100", "zone-a", "spot"): 1}, {("h100", "zone-a", "spot"): 0}, NO_QUOTES)

    assert gap.plan_hourly_cost == 0.0
    assert gap.plan_gap_hourly == 10.0


# --- the fleet paid for ------------------------------------------------------------------------------


def test_every_live_node_is_paid_for_draining_included_terminated_not() -> None:
    fleet = FleetState(CATALOG)
    fleet.apply("i-1", "h100", "zone-a", "spot", "launched", 1.0)
    fleet.apply("i-2", "h100", "zone-a", "spot", "ready", 1.0)
    fleet.apply("i-3", "h100", "zone-a", "spot", "draining", 1.0)
    fleet.apply("i-4", "h100", "zone-a", "spot", "terminated", 1.0)
    fleet.apply("i-5", "a100", "zone-b", "reserved", "ready", 1.0)

    assert paid_slots(fleet.instances()) == {
        ("h100", "zone-a", "spot"): 3,
        ("a100", "zone-b", "reserved"): 1,
    }


# --- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("slots", "message"),
    [
        ({("b200", "zone-a", "spot"): 1}, "plan[('b200', 'zone-a', 'spot')]: unknown instance type 'b200'"),
        ({("h100", "zone-a", "cheap"): 1}, "plan[('h100', 'zone-a', 'cheap')]: unknown tier 'cheap'"),
        ({("h100", "zone-a", "spot"): -1}, "count must be an integer >= 0, got -1"),
        ({("h100", "zone-a", "spot"): 1.5}, "count must be an integer >= 0, got 1.5"),
        ({("h100", "zone-a", "spot"): True}, "count must be an integer >= 0, got True"),
    ],
)
def test_a_bad_slot_raises_naming_it(slots: dict[Slot, int], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        plan_gap(CATALOG, {}, slots, NO_QUOTES)


@pytest.mark.parametrize("price", [0.0, -1.0, math.nan, math.inf])
def test_a_spot_quote_that_is_not_a_positive_price_raises_naming_the_pool(price: float) -> None:
    with pytest.raises(ValueError, match=r"spot_prices\[\('h100', 'zone-a'\)\]: must be a finite number > 0"):
        slots_hourly_cost(CATALOG, "fleet", {("h100", "zone-a", "spot"): 1}, {("h100", "zone-a"): price})


def test_the_fleet_is_checked_like_the_plan() -> None:
    with pytest.raises(ValueError, match=r"^fleet\["):
        plan_gap(CATALOG, {("b200", "zone-a", "ondemand"): 1}, None, NO_QUOTES)


# --- the report's wire form --------------------------------------------------------------------------


# A report as an agent wrote it before the plan fields were added.
OLDER_REPORT = (
    b'{"type":"cost.report.v1","period_start":1767225600.0,"period_end":1767225600.0,"hours":0.0,'
    b'"total_cost":0.0,'
    b'"avg_hourly_cost":0.0,"monthly_cost":0.0,"tokens":0.0,"requests":0.0,"cost_per_mtok":null,'
    b'"cost_per_request":null,"instance_hours":{},"instance_hours_by_type":{},"cost_by_tier":{},'
    b'"cost_by_type":{},"spot_fraction":0.0,"ondemand_equivalent_cost":0.0,"savings":0.0,'
    b'"savings_fraction":0.0,"intervals":0,"msg_id":"r-1","sent_at":1767225600.0,"source":"agent"}'
)


def test_a_cost_report_from_before_the_plan_fields_reads_as_one_with_no_plan() -> None:
    report = msgspec.json.decode(OLDER_REPORT, type=CostReport)

    assert (report.plan_id, report.plan_hourly_cost, report.plan_gap_hourly) == (None, None, None)
    assert report.fleet_hourly_cost == 0.0
    assert report.fleet_nodes == report.plan_nodes == {"reserved": 0, "spot": 0, "ondemand": 0}


@pytest.mark.parametrize(
    ("field", "value", "path"),
    [
        ("plan_nodes", {"spot": -1}, re.escape("$.plan_nodes[...]")),
        ("fleet_hourly_cost", -0.5, "fleet_hourly_cost"),
        ("plan_hourly_cost", -0.5, "plan_hourly_cost"),
        ("plan_id", "", "plan_id"),
    ],
)
def test_a_cost_report_out_of_range_is_refused_naming_the_field(field: str, value: object, path: str) -> None:
    document = json.loads(OLDER_REPORT)
    document[field] = value

    with pytest.raises(msgspec.ValidationError, match=path):
        msgspec.json.decode(json.dumps(document).encode(), type=CostReport)
