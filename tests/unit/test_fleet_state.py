"""The fleet as lifecycle events build it: the order of states, events that come late or twice, what is paid
for, what the optimizer may keep, and what a bad event does (nothing, loudly)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.core.catalog import Catalog, InstanceType, Tier
from agent.core.fleet_state import FleetState, Instance, InstanceState
from agent.core.optimizer import Fleet


def instance_type(name: str, pools: tuple[str, ...]) -> InstanceType:
    return InstanceType(
        name=name,
        gpus=8,
        gpu_type="H100",
        ondemand_hourly=30.0,
        reserved_hourly=20.0,
        spot_hourly=10.0,
        spot_reclaim_per_hour=0.05,
        max_batch=256,
        prefill_tokens_per_s=50_000.0,
        decode_tokens_per_s=8_000.0,
        pools=pools,
    )


CATALOG = Catalog(
    name="test",
    types={
        "h100": instance_type("h100", ("zone-a", "zone-b")),
        "a100": instance_type("a100", ("zone-a",)),
    },
)
STATES: tuple[InstanceState, ...] = ("launched", "ready", "draining", "terminated")
ORDER = {state: position for position, state in enumerate(STATES)}


def snapshot(fleet: FleetState) -> tuple[list[Instance], dict[tuple[str, Tier], int], Fleet]:
    return fleet.instances(), fleet.paid_counts(), fleet.fleet()


# --- lifecycle ---------------------------------------------------------------------------------------


def test_an_instance_goes_launched_ready_draining_terminated() -> None:
    fleet = FleetState(CATALOG)
    seen = []
    for at, state in enumerate(STATES[:-1]):
        assert fleet.apply("i-1", "h100", "zone-a", "spot", state, float(at)) is True
        [inst] = fleet.instances()
        seen.append((inst.state, inst.since))

    assert seen == [("launched", 0.0), ("ready", 1.0), ("draining", 2.0)]
    assert fleet.apply("i-1", "h100", "zone-a", "spot", "terminated", 3.0) is True
    assert len(fleet) == 0
    assert fleet.instances() == []


def test_a_state_may_be_skipped_when_its_event_was_missed() -> None:
    fleet = FleetState(CATALOG)

    assert fleet.apply("i-1", "h100", "zone-a", "spot", "ready", 1.0) is True  # its launch never arrived
    assert fleet.apply("i-2", "h100", "zone-a", "spot", "draining", 1.0) is True

    assert {i.instance_id: i.state for i in fleet.instances()} == {"i-1": "ready", "i-2": "draining"}


def test_a_duplicate_event_changes_nothing() -> None:
    fleet = FleetState(CATALOG)
    fleet.apply("i-1", "h100", "zone-a", "spot", "ready", 1.0)

    # An actuator retry: same event, later delivery. The instance keeps the time it first became ready.
    assert fleet.apply("i-1", "h100", "zone-a", "spot", "ready", 5.0) is False
    [inst] = fleet.instances()
    assert (inst.state, inst.since) == ("ready", 1.0)


@pytest.mark.parametrize("late", ["launched", "ready"])
def test_an_event_that_would_move_an_instance_backwards_is_ignored(late: InstanceState) -> None:
    fleet = FleetState(CATALOG)
    fleet.apply("i-1", "h100", "zone-a", "spot", "draining", 2.0)

    assert fleet.apply("i-1", "h100", "zone-a", "spot", late, 3.0) is False
    assert [i.state for i in fleet.instances()] == ["draining"]


@pytest.mark.parametrize("late", STATES)
def test_terminated_is_final(late: InstanceState) -> None:
    fleet = FleetState(CATALOG)
    fleet.apply("i-1", "h100", "zone-a", "ondemand", "ready", 1.0)
    fleet.apply("i-1", "h100", "zone-a", "ondemand", "terminated", 2.0)

    assert fleet.apply("i-1", "h100", "zone-a", "ondemand", late, 3.0) is False
    assert fleet.instances() == []
    assert fleet.paid_counts() == {}


def test_news_of_a_termination_before_its_launch_keeps_the_late_launch_out() -> None:
    fleet = FleetState(CATALOG)

    assert fleet.apply("i-1", "h100", "zone-a", "spot", "terminated", 2.0) is True
    assert fleet.apply("i-1", "h100", "zone-a", "spot", "launched", 1.0) is False
    assert len(fleet) == 0


def test_terminated_instances_are_remembered_only_up_to_the_bound() -> None:
    fleet = FleetState(CATALOG, remember_terminated=2)
    for instance_id in ("i-1", "i-2", "i-3"):
        fleet.apply(instance_id, "h100", "zone-a", "spot", "launched", 0.0)
        fleet.apply(instance_id, "h100", "zone-a", "spot", "terminated", 1.0)

    # The two most recent are still known to be gone; the oldest has been forgotten, so memory stays bounded
    # (and a very late event about it would bring it back).
    assert fleet.apply("i-2", "h100", "zone-a", "spot", "ready", 2.0) is False
    assert fleet.apply("i-3", "h100", "zone-a", "spot", "ready", 2.0) is False
    assert fleet.apply("i-1", "h100", "zone-a", "spot", "ready", 2.0) is True


def test_beyond_its_bound_the_longest_draining_instance_is_forgotten_first() -> None:
    fleet = FleetState(CATALOG, max_live=3)
    fleet.apply("i-1", "h100", "zone-a", "spot", "draining", 0.0)  # a lost node nobody terminates
    fleet.apply("i-2", "h100", "zone-a", "spot", "ready", 0.0)
    fleet.apply("i-3", "h100", "zone-a", "spot", "launched", 0.0)
    fleet.apply("i-3", "h100", "zone-a", "spot", "draining", 1.0)

    assert fleet.apply("i-4", "h100", "zone-b", "spot", "ready", 2.0) is True
    assert {i.instance_id for i in fleet.instances()} == {"i-2", "i-3", "i-4"}
    assert fleet.evicted == 1
    assert fleet.get("i-1") is None


def test_beyond_its_bound_with_none_draining_a_new_instance_is_refused_and_the_known_ones_stay() -> None:
    fleet = FleetState(CATALOG, max_live=2)
    fleet.apply("i-1", "h100", "zone-a", "spot", "ready", 0.0)
    fleet.apply("i-2", "a100", "zone-a", "ondemand", "ready", 0.0)

    with pytest.raises(ValueError, match=r"^instance_id: 'made-up' refused: 2 instances are live"):
        fleet.apply("made-up", "h100", "zone-a", "spot", "launched", 1.0)
    assert fleet.paid_counts() == {("h100", "spot"): 1, ("a100", "ondemand"): 1}
    # Known instances still move on; a termination frees room.
    assert fleet.apply("i-1", "h100", "zone-a", "spot", "terminated", 2.0) is True
    assert fleet.apply("i-3", "h100", "zone-a", "spot", "launched", 3.0) is True
    assert fleet.evicted == 0


def test_ten_thousand_made_up_draining_ids_keep_the_fleet_view_bounded() -> None:
    fleet = FleetState(CATALOG)
    fleet.apply("real", "h100", "zone-a", "reserved", "ready", 0.0)
    for n in range(25_000):
        fleet.apply(f"made-up-{n}", "h100", "zone-a", "spot", "draining", float(n))

    assert len(fleet) == 10_000
    assert fleet.get("real") is not None
    assert fleet.evicted == 15_001


# --- what is paid for, what may be kept -------------------------------------------------------------


def test_paid_counts_count_launched_ready_and_draining_per_type_and_tier() -> None:
    fleet = FleetState(CATALOG)
    fleet.apply("r-1", "h100", "zone-a", "reserved", "ready", 0.0)
    fleet.apply("r-2", "h100", "zone-b", "reserved", "launched", 0.0)
    fleet.apply("s-1", "h100", "zone-a", "spot", "draining", 0.0)
    fleet.apply("s-2", "a100", "zone-a", "spot", "ready", 0.0)
    fleet.apply("o-1", "a100", "zone-a", "ondemand", "launched", 0.0)
    fleet.apply("o-2", "a100", "zone-a", "ondemand", "terminated", 0.0)

    assert fleet.paid_counts() == {
        ("h100", "reserved"): 2,
        ("h100", "spot"): 1,  # a draining node is still billed
        ("a100", "spot"): 1,
        ("a100", "ondemand"): 1,
    }


def test_the_fleet_to_keep_excludes_draining_and_groups_reserved_by_type_and_the_rest_by_pool() -> None:
    fleet = FleetState(CATALOG)
    fleet.apply("r-1", "h100", "zone-a", "reserved", "ready", 0.0)
    fleet.apply("r-2", "h100", "zone-b", "reserved", "launched", 0.0)
    fleet.apply("r-3", "a100", "zone-a", "reserved", "draining", 0.0)
    fleet.apply("s-1", "h100", "zone-a", "spot", "ready", 0.0)
    fleet.apply("s-2", "h100", "zone-b", "spot", "ready", 0.0)
    fleet.apply("s-3", "h100", "zone-b", "spot", "launched", 0.0)
    fleet.apply("s-4", "h100", "zone-b", "spot", "draining", 0.0)
    fleet.apply("o-1", "a100", "zone-a", "ondemand", "ready", 0.0)

    assert fleet.fleet() == Fleet(
        reserved={"h100": 2},  # reserved capacity is per type, whatever zone it runs in
        spot={("h100", "zone-a"): 1, ("h100", "zone-b"): 2},
        ondemand={("a100", "zone-a"): 1},
    )


def test_an_empty_fleet_holds_nothing() -> None:
    fleet = FleetState(CATALOG)

    assert fleet.fleet() == Fleet()
    assert fleet.paid_counts() == {}
    assert fleet.spot_pools_held() == {}
    assert len(fleet) == 0


def test_spot_pools_held_count_every_paid_spot_node_per_pool() -> None:
    fleet = FleetState(CATALOG)
    fleet.apply("s-1", "h100", "zone-a", "spot", "ready", 0.0)
    fleet.apply("s-2", "h100", "zone-a", "spot", "draining", 0.0)
    fleet.apply("s-3", "h100", "zone-b", "spot", "launched", 0.0)
    fleet.apply("o-1", "h100", "zone-b", "ondemand", "ready", 0.0)

    assert fleet.spot_pools_held() == {("h100", "zone-a"): 2, ("h100", "zone-b"): 1}


# --- bad events --------------------------------------------------------------------------------------


def held_fleet() -> FleetState:
    fleet = FleetState(CATALOG)
    fleet.apply("i-1", "h100", "zone-a", "spot", "launched", 0.0)
    return fleet


@pytest.mark.parametrize("state", STATES)
def test_an_unknown_instance_type_raises_naming_the_field_and_changes_nothing(state: InstanceState) -> None:
    fleet = held_fleet()
    before = snapshot(fleet)

    with pytest.raises(ValueError, match=r"^instance_type: 'b200'"):
        fleet.apply("i-1", "b200", "zone-a", "spot", state, 1.0)
    with pytest.raises(ValueError, match=r"^instance_type: 'b200'"):
        fleet.apply("i-2", "b200", "zone-a", "reserved", state, 1.0)

    assert snapshot(fleet) == before


@pytest.mark.parametrize("tier", ["spot", "ondemand"])
@pytest.mark.parametrize("state", STATES)
def test_a_spot_or_ondemand_pool_the_type_does_not_run_in_raises_naming_the_field_and_changes_nothing(
    tier: Tier, state: InstanceState
) -> None:
    fleet = held_fleet()
    before = snapshot(fleet)

    # a100 runs in zone-a only; zone-b exists, but not for it.
    with pytest.raises(ValueError, match=r"^pool: 'zone-b'"):
        fleet.apply("i-1", "a100", "zone-b", tier, state, 1.0)
    with pytest.raises(ValueError, match=r"^pool: 'mars-1'"):
        fleet.apply("i-9", "h100", "mars-1", tier, state, 1.0)

    assert snapshot(fleet) == before


def test_the_error_lists_what_the_catalog_knows() -> None:
    fleet = FleetState(CATALOG)

    with pytest.raises(ValueError, match="known: h100, a100"):
        fleet.apply("i-1", "b200", "zone-a", "spot", "launched", 0.0)
    with pytest.raises(ValueError, match="known: zone-a, zone-b"):
        fleet.apply("i-1", "h100", "zone-c", "spot", "launched", 0.0)


def test_a_reserved_node_may_run_in_any_pool() -> None:
    fleet = FleetState(CATALOG)

    assert fleet.apply("r-1", "a100", "on-prem-rack-7", "reserved", "ready", 0.0) is True
    assert fleet.fleet().reserved == {"a100": 1}


# --- properties --------------------------------------------------------------------------------------

EVENTS = st.lists(
    st.tuples(st.sampled_from(["i-1", "i-2", "i-3", "i-4"]), st.sampled_from(STATES)),
    max_size=40,
)


@given(events=EVENTS)
def test_whatever_the_order_each_instance_ends_in_the_furthest_state_it_was_reported_in(
    events: list[tuple[str, InstanceState]],
) -> None:
    fleet = FleetState(CATALOG)
    furthest: dict[str, InstanceState] = {}
    for at, (instance_id, state) in enumerate(events):
        changed = fleet.apply(instance_id, "h100", "zone-a", "spot", state, float(at))
        previous = furthest.get(instance_id)
        # An event changes something exactly when it moves its instance forward.
        assert changed == (previous is None or ORDER[state] > ORDER[previous])
        if changed:
            furthest[instance_id] = state

    live = {i: s for i, s in furthest.items() if s != "terminated"}
    assert {inst.instance_id: inst.state for inst in fleet.instances()} == live
    assert sum(fleet.paid_counts().values()) == len(live)
    assert fleet.fleet().total("spot") == sum(s in ("launched", "ready") for s in live.values())
