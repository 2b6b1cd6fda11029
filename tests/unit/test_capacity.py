"""The capacity planner: whole nodes of a type for a demand at the SLO's utilization target."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config import resolve_catalog
from agent.core.capacity import SloConfig, estimate, instances_needed, prefill_overhead, rps_per_instance
from agent.core.demand import Demand

SEED = resolve_catalog("seed")
H100 = SEED.type("h100_8x")
A100 = SEED.type("a100_8x")


def test_one_node_serves_the_rate_its_busy_time_allows_at_the_utilization_target() -> None:
    # 1500 prompt tokens at 50k/s + 500 output tokens at 8k/s = 0.0925 node-seconds per request.
    assert rps_per_instance(H100, 1500, 500, SloConfig(0.70)) == pytest.approx(0.70 / 0.0925)


def test_the_seed_example_peak_needs_four_h100_nodes() -> None:
    peak = Demand(rps=4 * 0.70 / 0.0925, prompt_tokens=1500, output_tokens=500)
    assert instances_needed(H100, peak, SloConfig()) == 4
    assert instances_needed(H100, peak.scaled(1.01), SloConfig()) == 5


def test_prefill_overhead_is_a_share_of_busy_time_and_never_exceeds_one() -> None:
    # The seed multiplied the fleet's request rate into this fraction; at 100 rps of 1500-token prompts
    # it would claim 300% of a node. Ours depends only on the token mix.
    assert prefill_overhead(H100, 1500, 500) == pytest.approx(0.03 / 0.0925)
    assert prefill_overhead(H100, 10**7, 1) <= 1.0
    assert prefill_overhead(H100, 0, 500) == 0.0
    assert estimate(H100, Demand(100, 1500, 500), SloConfig()).prefill_overhead < 1.0


def test_no_traffic_needs_no_node_and_any_traffic_needs_at_least_one() -> None:
    assert instances_needed(H100, Demand(0, 1500, 500), SloConfig()) == 0
    assert instances_needed(H100, Demand(1e-6, 1500, 500), SloConfig()) == 1


def test_a_stricter_slo_needs_more_nodes() -> None:
    demand = Demand(60, 1500, 500)
    assert instances_needed(H100, demand, SloConfig(0.5)) > instances_needed(H100, demand, SloConfig(0.9))


def test_the_slower_type_needs_more_nodes_for_the_same_demand() -> None:
    demand = Demand(60, 1500, 500)
    assert instances_needed(A100, demand, SloConfig()) > instances_needed(H100, demand, SloConfig())


def test_concurrency_never_asks_for_more_nodes_than_throughput_when_decode_is_quoted_at_full_batch() -> None:
    e = estimate(H100, Demand(50, 3000, 800), SloConfig())
    assert e.for_concurrency <= e.for_throughput
    assert e.instances == math.ceil(e.for_throughput)


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_a_utilization_target_outside_zero_to_one_is_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match="utilization_target"):
        SloConfig(bad)


def test_demand_rejects_negative_and_nan_fields_by_name() -> None:
    with pytest.raises(ValueError, match="rps"):
        Demand(-1, 10, 10)
    with pytest.raises(ValueError, match="output_tokens"):
        Demand(1, 10, math.nan)


@given(
    rps=st.floats(0, 1e4),
    more=st.floats(0, 1e4),
    prompt=st.floats(1, 32_000),
    output=st.floats(1, 8_000),
)
def test_nodes_needed_never_fall_when_demand_rises(
    rps: float, more: float, prompt: float, output: float
) -> None:
    low = instances_needed(H100, Demand(rps, prompt, output), SloConfig())
    high = instances_needed(H100, Demand(rps + more, prompt, output), SloConfig())
    assert high >= low
