"""The cost ledger, read as a specification: what an interval costs, what the report says, what it rejects."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import agent
import agent.core.ledger as ledger_module
from agent.core.catalog import HOURS_PER_MONTH, TIERS, Catalog, Tier, load_catalog
from agent.core.ledger import CostLedger, CostReport

CATALOGS = Path(agent.__file__).parent / "catalogs"
SEED = load_catalog(CATALOGS / "seed.toml")
GCP = load_catalog(CATALOGS / "gcp-2026-07.toml")
SHIPPED = (SEED, GCP)

H100_OD, H100_RES, H100_SPOT = 32.77, 19.06, 9.83
A100_OD, A100_RES, A100_SPOT = 22.03, 13.22, 6.61


def approx(x: float) -> object:
    return pytest.approx(x, rel=1e-12, abs=1e-9)


# --- pricing -----------------------------------------------------------------------------------------


def test_mixed_fleet_is_priced_at_each_types_own_prices() -> None:
    ledger = CostLedger(SEED)

    cost = ledger.record(1.0, {("h100_8x", "reserved"): 2, ("a100_8x", "spot"): 1})

    assert cost == approx(2 * H100_RES + A100_SPOT)  # 44.73, not three H100s
    report = ledger.report()
    assert report.total_cost == approx(44.73)
    assert report.cost_by_type == {"h100_8x": approx(2 * H100_RES), "a100_8x": approx(A100_SPOT)}
    assert report.cost_by_tier == {"reserved": approx(38.12), "spot": approx(6.61), "ondemand": 0.0}
    assert report.instance_hours == {"reserved": 2.0, "spot": 1.0, "ondemand": 0.0}
    assert report.instance_hours_by_type == {
        "h100_8x": {"reserved": 2.0, "spot": 0.0, "ondemand": 0.0},
        "a100_8x": {"reserved": 0.0, "spot": 1.0, "ondemand": 0.0},
    }
    assert report.ondemand_equivalent_cost == approx(2 * H100_OD + A100_OD)


def test_gcp_catalog_prices_each_type_from_its_own_row() -> None:
    ledger = CostLedger(GCP)

    cost = ledger.record(
        2.0,
        {
            ("a3-highgpu-8g", "reserved"): 1,
            ("a3-highgpu-8g", "ondemand"): 1,
            ("a2-ultragpu-8g", "spot"): 3,
        },
    )

    assert cost == approx(2 * (61.38 + 88.49 + 3 * 22.08))


def test_seed_all_ondemand_headline_is_reproduced_within_two_percent() -> None:
    # The seed's table: all on-demand, 4 × h100_8x, $94,700 a month.
    ledger = CostLedger(SEED)

    cost = ledger.record(HOURS_PER_MONTH, {("h100_8x", "ondemand"): 4})

    assert cost == approx(4 * H100_OD * 730)  # 95,688.40
    assert cost == pytest.approx(95_688.40, abs=0.005)
    assert abs(cost - 94_700) / 94_700 < 0.02
    report = ledger.report()
    assert report.monthly_cost == approx(cost)
    assert report.avg_hourly_cost == approx(4 * H100_OD)
    assert report.savings == 0.0
    assert report.savings_fraction == 0.0


def test_fractional_counts_are_averages_over_the_interval() -> None:
    ledger = CostLedger(SEED)

    # 2.5 spot nodes on average over 4 h: 10 spot node-hours.
    cost = ledger.record(4.0, {("h100_8x", "spot"): 2.5})

    assert cost == approx(10 * H100_SPOT)
    assert ledger.report().instance_hours["spot"] == approx(10.0)


def test_intervals_accumulate_and_avg_hourly_cost_is_time_weighted() -> None:
    ledger = CostLedger(SEED)
    ledger.record(1.0, {("h100_8x", "ondemand"): 4})
    ledger.record(3.0, {("h100_8x", "ondemand"): 1})

    report = ledger.report()

    assert report.total_cost == approx(7 * H100_OD)
    assert report.hours == 4.0
    assert report.avg_hourly_cost == approx(7 * H100_OD / 4)  # not the mean of 4·p and 1·p
    assert report.monthly_cost == approx(7 * H100_OD / 4 * HOURS_PER_MONTH)
    assert report.intervals == 2


def test_count_order_does_not_change_the_cost() -> None:
    pairs: list[tuple[tuple[str, Tier], float]] = [
        (("a100_8x", "ondemand"), 0.3),
        (("h100_8x", "spot"), 1.7),
        (("h100_8x", "reserved"), 2.0),
        (("a100_8x", "spot"), 0.1),
    ]
    forward = CostLedger(SEED).record(0.7, dict(pairs))
    backward = CostLedger(SEED).record(0.7, dict(reversed(pairs)))

    assert forward == backward  # exactly: the ledger sums in catalog order


def test_numpy_numbers_are_accepted() -> None:
    ledger = CostLedger(SEED)

    # Counts straight from a MILP solution or a numpy array; not floats to the type checker.
    counts: dict[tuple[str, Tier], Any] = {("h100_8x", "spot"): np.int64(3)}
    cost = ledger.record(np.float64(1.0), counts, tokens=cast(float, np.float32(1e6)))

    assert cost == approx(3 * H100_SPOT)
    assert ledger.report().tokens == 1e6


# --- unit costs, spot share, savings -----------------------------------------------------------------


def test_cost_per_million_tokens_and_per_request() -> None:
    ledger = CostLedger(SEED)
    ledger.record(1.0, {("h100_8x", "ondemand"): 2}, tokens=4_000_000, requests=1_000)
    ledger.record(1.0, {("h100_8x", "ondemand"): 2}, tokens=6_000_000, requests=3_000)

    report = ledger.report()

    total = 4 * H100_OD
    assert report.tokens == 10_000_000
    assert report.requests == 4_000
    assert report.cost_per_mtok == approx(total / 10)
    assert report.cost_per_request == approx(total / 4_000)


def test_unit_costs_are_none_without_tokens_or_requests() -> None:
    ledger = CostLedger(SEED)
    ledger.record(1.0, {("h100_8x", "ondemand"): 1})

    report = ledger.report()

    assert report.cost_per_mtok is None
    assert report.cost_per_request is None


def test_spot_fraction_is_spot_instance_hours_over_all_instance_hours() -> None:
    ledger = CostLedger(SEED)
    ledger.record(1.0, {("h100_8x", "reserved"): 2, ("h100_8x", "spot"): 1, ("a100_8x", "spot"): 1})
    ledger.record(2.0, {("h100_8x", "reserved"): 2, ("a100_8x", "ondemand"): 1})

    # Node-hours: reserved 2·1 + 2·2 = 6, spot 1 + 1 = 2, on-demand 1·2 = 2, so spot is 2 of 10.
    assert ledger.report().spot_fraction == approx(0.2)


def test_savings_against_the_same_nodes_all_on_demand() -> None:
    ledger = CostLedger(SEED)
    ledger.record(10.0, {("h100_8x", "reserved"): 2, ("h100_8x", "spot"): 1, ("a100_8x", "ondemand"): 1})

    report = ledger.report()

    actual = 10 * (2 * H100_RES + H100_SPOT + A100_OD)
    all_ondemand = 10 * (3 * H100_OD + A100_OD)  # each node at its own type's on-demand price
    assert report.total_cost == approx(actual)
    assert report.ondemand_equivalent_cost == approx(all_ondemand)
    assert report.savings == approx(all_ondemand - actual)
    assert report.savings_fraction == approx((all_ondemand - actual) / all_ondemand)


def test_empty_ledger_reports_zeros_not_division_errors() -> None:
    report = CostLedger(SEED).report()

    assert report.total_cost == report.hours == report.avg_hourly_cost == report.monthly_cost == 0.0
    assert report.spot_fraction == report.savings == report.savings_fraction == 0.0
    assert report.cost_per_mtok is None
    assert report.cost_per_request is None
    assert report.instance_hours == dict.fromkeys(TIERS, 0.0)
    assert report.cost_by_tier == dict.fromkeys(TIERS, 0.0)
    assert report.instance_hours_by_type == {}
    assert report.intervals == 0
    assert report.period_start_h is None
    assert report.period_end_h is None


def test_zero_duration_interval_is_allowed_and_costs_nothing() -> None:
    ledger = CostLedger(SEED)

    cost = ledger.record(0.0, {("h100_8x", "ondemand"): 4}, tokens=10, requests=1)

    assert cost == 0.0
    report = ledger.report()
    assert report.total_cost == 0.0
    assert report.hours == 0.0
    assert report.avg_hourly_cost == 0.0
    assert report.instance_hours == dict.fromkeys(TIERS, 0.0)
    assert report.tokens == 10  # what was served is still counted
    assert report.intervals == 1


def test_idle_interval_with_no_nodes_adds_hours_but_no_cost() -> None:
    ledger = CostLedger(SEED)
    ledger.record(1.0, {("h100_8x", "ondemand"): 1})
    ledger.record(1.0, {})

    report = ledger.report()

    assert report.hours == 2.0
    assert report.avg_hourly_cost == approx(H100_OD / 2)


# --- live spot prices --------------------------------------------------------------------------------


def test_spot_price_override_applies_to_spot_nodes_of_that_type_for_that_interval_only() -> None:
    ledger = CostLedger(SEED)
    counts: dict[tuple[str, Tier], float] = {
        ("h100_8x", "spot"): 2,
        ("h100_8x", "reserved"): 1,
        ("a100_8x", "spot"): 1,
    }

    live = ledger.record(1.0, counts, spot_prices={"h100_8x": 12.5})
    listed = ledger.record(1.0, counts)

    assert live == approx(2 * 12.5 + H100_RES + A100_SPOT)  # reserved and the A100 keep catalog prices
    assert listed == approx(2 * H100_SPOT + H100_RES + A100_SPOT)
    report = ledger.report()
    assert report.cost_by_tier["spot"] == approx(2 * 12.5 + 2 * H100_SPOT + 2 * A100_SPOT)
    # The on-demand comparison is against on-demand list prices, whatever spot cost.
    assert report.ondemand_equivalent_cost == approx(2 * (3 * H100_OD + A100_OD))


def test_override_for_a_type_not_held_changes_nothing() -> None:
    ledger = CostLedger(SEED)

    cost = ledger.record(1.0, {("h100_8x", "spot"): 1}, spot_prices={"a100_8x": 1.0})

    assert cost == approx(H100_SPOT)


def test_spot_dearer_than_on_demand_is_recorded_as_paid() -> None:
    # Spot markets can spike above on-demand; the ledger records the truth, so savings go negative.
    ledger = CostLedger(SEED)
    ledger.record(1.0, {("h100_8x", "spot"): 1}, spot_prices={"h100_8x": 40.0})

    report = ledger.report()

    assert report.total_cost == approx(40.0)
    assert report.savings == approx(H100_OD - 40.0)
    assert report.savings_fraction < 0


# --- time span ---------------------------------------------------------------------------------------


def test_start_h_tracks_the_period_covered_and_allows_gaps() -> None:
    ledger = CostLedger(SEED)
    ledger.record(1.0, {("h100_8x", "ondemand"): 1}, start_h=100.0)
    ledger.record(0.5, {("h100_8x", "ondemand"): 1}, start_h=101.0)
    ledger.record(1.0, {("h100_8x", "ondemand"): 1}, start_h=110.0)  # a gap: nothing held, nothing paid

    report = ledger.report()

    assert report.period_start_h == 100.0
    assert report.period_end_h == 111.0
    assert report.hours == 2.5


def test_start_h_rounding_at_the_boundary_is_not_an_overlap() -> None:
    ledger = CostLedger(SEED)
    start = 0.0
    for _ in range(12 * 24):  # a day of 5-minute ticks, the start accumulated as a float
        ledger.record(5 / 60, {("h100_8x", "reserved"): 1}, start_h=start)
        start += 5 / 60

    assert ledger.report().period_end_h == pytest.approx(24.0)


# --- bad input ---------------------------------------------------------------------------------------

GOOD: dict[tuple[str, Tier], float] = {("h100_8x", "reserved"): 1}

BAD_RECORDS = [
    pytest.param({"counts": {("b200_8x", "spot"): 1}}, "b200_8x", id="unknown-type"),
    pytest.param({"counts": {("h100_8x", "preemptible"): 1}}, "preemptible", id="unknown-tier"),
    pytest.param({"counts": {"h100_8x": 1}}, "counts", id="key-not-a-pair"),
    pytest.param({"counts": {("h100_8x", "spot"): -1}}, "counts", id="negative-count"),
    pytest.param({"counts": {("h100_8x", "spot"): math.nan}}, "counts", id="nan-count"),
    pytest.param({"counts": {("h100_8x", "spot"): math.inf}}, "counts", id="infinite-count"),
    pytest.param({"counts": {("h100_8x", "spot"): "2"}}, "counts", id="string-count"),
    pytest.param({"counts": {("h100_8x", "spot"): True}}, "counts", id="bool-count"),
    pytest.param(
        {"counts": {("h100_8x", "reserved"): 1, ("h100_8x", "spot"): -0.5}}, "counts", id="one-bad-of-two"
    ),
    pytest.param({"duration_h": -1.0}, "duration_h", id="negative-duration"),
    pytest.param({"duration_h": math.nan}, "duration_h", id="nan-duration"),
    pytest.param({"tokens": -5.0}, "tokens", id="negative-tokens"),
    pytest.param({"tokens": math.nan}, "tokens", id="nan-tokens"),
    pytest.param({"requests": -1.0}, "requests", id="negative-requests"),
    pytest.param({"requests": math.nan}, "requests", id="nan-requests"),
    pytest.param({"spot_prices": {"b200_8x": 5.0}}, "spot_prices", id="spot-price-unknown-type"),
    pytest.param({"spot_prices": {"h100_8x": -5.0}}, "spot_prices", id="negative-spot-price"),
    pytest.param({"spot_prices": {"h100_8x": math.nan}}, "spot_prices", id="nan-spot-price"),
    pytest.param({"spot_prices": {"h100_8x": 0.0}}, "spot_prices", id="zero-spot-price"),
    pytest.param({"start_h": math.nan}, "start_h", id="nan-start"),
    pytest.param({"start_h": 0.5}, "start_h", id="overlapping-start"),
]


@pytest.mark.parametrize(("overrides", "named"), BAD_RECORDS)
def test_bad_input_raises_value_error_naming_the_field_and_leaves_the_ledger_unchanged(
    overrides: dict[str, object], named: str
) -> None:
    ledger = CostLedger(SEED)
    ledger.record(1.0, GOOD, tokens=100, requests=2, start_h=0.0)
    before = ledger.report()
    kwargs: dict[str, object] = {"duration_h": 1.0, "counts": GOOD, "start_h": 1.0} | overrides

    with pytest.raises(ValueError, match=named):
        ledger.record(**kwargs)  # type: ignore[arg-type]

    assert ledger.report() == before
    # Still usable afterwards.
    assert ledger.record(1.0, GOOD, start_h=1.0) == approx(H100_RES)


# --- reports -----------------------------------------------------------------------------------------


def test_to_dict_is_plain_json() -> None:
    ledger = CostLedger(SEED)
    ledger.record(1.0, {("h100_8x", "reserved"): 2, ("a100_8x", "spot"): 1}, tokens=1e6, requests=10)
    report = ledger.report()

    data = report.to_dict()
    decoded = json.loads(json.dumps(data, allow_nan=False))

    assert decoded == data
    assert decoded["total_cost"] == approx(44.73)
    assert decoded["instance_hours"] == {"reserved": 2.0, "spot": 1.0, "ondemand": 0.0}
    assert decoded["instance_hours_by_type"]["a100_8x"]["spot"] == 1.0
    assert set(decoded) >= {
        "total_cost",
        "hours",
        "avg_hourly_cost",
        "tokens",
        "requests",
        "cost_per_mtok",
        "cost_per_request",
        "instance_hours",
        "instance_hours_by_type",
        "cost_by_tier",
        "spot_fraction",
        "ondemand_equivalent_cost",
        "savings",
        "savings_fraction",
        "monthly_cost",
    }


def test_empty_report_to_dict_is_plain_json() -> None:
    data = CostLedger(SEED).report().to_dict()

    assert json.loads(json.dumps(data, allow_nan=False)) == data
    assert data["cost_per_mtok"] is None


def test_report_is_a_frozen_snapshot() -> None:
    ledger = CostLedger(SEED)
    ledger.record(1.0, {("h100_8x", "spot"): 1})
    report = ledger.report()

    report.instance_hours["spot"] = 99.0  # the dicts are the caller's copies
    ledger.record(1.0, {("h100_8x", "spot"): 1})

    assert ledger.report().instance_hours["spot"] == 2.0
    assert report.total_cost == approx(H100_SPOT)
    with pytest.raises(AttributeError):
        report.total_cost = 0.0  # type: ignore[misc]


# --- memory ------------------------------------------------------------------------------------------


def _state_size(ledger: CostLedger) -> int:
    """Number of stored entries across the ledger's containers; scalars count as one."""
    size = 0
    for slot in CostLedger.__slots__:
        value = getattr(ledger, slot)
        assert not isinstance(value, list | tuple | set), f"{slot} is a sequence that could grow"
        if isinstance(value, dict):
            size += len(value)
        else:
            size += 1
    return size


def test_memory_does_not_grow_with_the_number_of_records() -> None:
    ledger = CostLedger(SEED)
    assert not hasattr(ledger, "__dict__")  # all state is in the declared slots
    counts: dict[tuple[str, Tier], float] = {
        ("h100_8x", "reserved"): 2,
        ("h100_8x", "spot"): 1.5,
        ("a100_8x", "ondemand"): 0.5,
    }

    for i in range(1_000):
        ledger.record(1 / 12, counts, tokens=1e5, requests=50, start_h=i / 12)
    size_after_1k = _state_size(ledger)
    for i in range(1_000, 100_000):
        ledger.record(1 / 12, counts, tokens=1e5, requests=50, start_h=i / 12)

    assert _state_size(ledger) == size_after_1k
    assert size_after_1k <= len(CostLedger.__slots__) + 3 * 2 * len(SEED.types) * len(TIERS)
    report = ledger.report()
    assert report.intervals == 100_000
    assert report.hours == pytest.approx(100_000 / 12)
    assert report.total_cost == pytest.approx(100_000 / 12 * (2 * H100_RES + 1.5 * H100_SPOT + 0.5 * A100_OD))


def test_module_imports_no_asyncio_nats_or_structlog() -> None:
    tree = ast.parse(Path(ledger_module.__file__).read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])

    assert imported.isdisjoint({"asyncio", "nats", "structlog"})


# --- properties --------------------------------------------------------------------------------------

_count = st.one_of(st.integers(0, 64).map(float), st.floats(0, 1_000, allow_nan=False, allow_subnormal=False))
_duration = st.floats(0, 1_000, allow_nan=False, allow_subnormal=False)


def _pairs(catalog: Catalog) -> list[tuple[str, Tier]]:
    return [(name, tier) for name in catalog.types for tier in TIERS]


@st.composite
def _fleet(draw: st.DrawFn, catalog: Catalog) -> dict[tuple[str, Tier], float]:
    return {pair: draw(_count) for pair in _pairs(catalog)}


@settings(deadline=None)
@given(
    catalog=st.sampled_from(SHIPPED),
    data=st.data(),
    duration=_duration,
    bump=st.floats(0, 100, allow_nan=False, allow_subnormal=False),
)
def test_cost_is_monotone_in_every_count(
    catalog: Catalog, data: st.DataObject, duration: float, bump: float
) -> None:
    counts = data.draw(_fleet(catalog))
    pair = data.draw(st.sampled_from(_pairs(catalog)))
    more = dict(counts) | {pair: counts[pair] + bump}

    base = CostLedger(catalog).record(duration, counts)
    bumped = CostLedger(catalog).record(duration, more)

    assert bumped >= base


@settings(deadline=None)
@given(
    catalog=st.sampled_from(SHIPPED),
    data=st.data(),
    durations=st.lists(_duration, min_size=1, max_size=8),
)
def test_cost_never_exceeds_all_on_demand_and_savings_fraction_is_in_unit_interval(
    catalog: Catalog, data: st.DataObject, durations: list[float]
) -> None:
    # Every tier of the shipped catalogs is at most the on-demand price, so this holds exactly.
    assert all(t.reserved_hourly <= t.ondemand_hourly >= t.spot_hourly for t in catalog.types.values())
    ledger = CostLedger(catalog)
    for duration in durations:
        ledger.record(duration, data.draw(_fleet(catalog)))

    report: CostReport = ledger.report()

    assert 0 <= report.total_cost <= report.ondemand_equivalent_cost
    assert report.savings >= 0
    assert 0 <= report.savings_fraction < 1
    assert 0 <= report.spot_fraction <= 1
