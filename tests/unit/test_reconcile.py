"""The fleet reconcile (``agent.core.reconcile``): what an actuator does to bring its fleet to a plan.

The fleet is at time 1000; a node boots in 100 s. Slots are (type, pool, tier) of two types, ``a`` and
``b``, in pool ``p`` (and ``q`` for spot). ``after`` applies the decisions the way every actuator does
(the backtest's replay and the simulated cloud do exactly this), so that the properties at the end can be
stated on the fleet that results.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.reconcile import (
    Decision,
    FleetNow,
    Launch,
    NodeNow,
    Refuse,
    Release,
    Slot,
    Standing,
    TakeBack,
    reconcile,
)

NOW = 1000.0
BOOT_S = 100.0
A_OD: Slot = ("a", "p", "ondemand")
B_OD: Slot = ("b", "p", "ondemand")
A_SPOT: Slot = ("a", "p", "spot")
A_RESERVED: Slot = ("a", "p", "reserved")

_ids = itertools.count(1)


def node(
    slot: Slot,
    *,
    booting_until: float | None = None,
    standing: Standing = "held",
    leave_at: float | None = None,
    order: int | None = None,
) -> NodeNow:
    n = next(_ids) if order is None else order
    return NodeNow(f"n{n}", slot, n, booting_until, standing, leave_at)


def running(slot: Slot, count: int) -> list[NodeNow]:
    return [node(slot) for _ in range(count)]


def fleet(*nodes: NodeNow, market: Mapping[tuple[str, str], int | None] | None = None) -> FleetNow:
    return FleetNow(NOW, nodes, dict(market or {}))


def decide(f: FleetNow, targets: Mapping[Slot, int], **kw: bool) -> tuple[Decision, ...]:
    return reconcile(f, targets, boot_s=BOOT_S, **kw)


def after(f: FleetNow, decisions: Sequence[Decision]) -> list[NodeNow]:
    """The fleet once the decisions are applied (launched nodes named ``new-…``)."""
    nodes = {n.node_id: n for n in f.nodes}
    fresh = itertools.count(1)
    top = max((n.launch_order for n in f.nodes), default=0)
    for d in decisions:
        if isinstance(d, TakeBack):
            nodes[d.node_id] = dataclasses.replace(nodes[d.node_id], standing="held", leave_at=None)
        elif isinstance(d, Launch):
            for _ in range(d.count):
                k = next(fresh)
                nodes[f"new-{k}"] = NodeNow(
                    f"new-{k}", d.slot, top + k, d.ready_at if d.ready_at > NOW else None
                )
        elif isinstance(d, Release) and d.leave_at is not None:
            nodes[d.node_id] = dataclasses.replace(nodes[d.node_id], standing="leaving", leave_at=d.leave_at)
        elif isinstance(d, Release):
            nodes[d.node_id] = dataclasses.replace(nodes[d.node_id], standing="released", leave_at=None)
    return list(nodes.values())


def held(nodes: Sequence[NodeNow], slot: Slot) -> int:
    return sum(1 for n in nodes if n.slot == slot and n.standing == "held")


def kinds(decisions: Sequence[Decision]) -> list[str]:
    return [type(d).__name__ for d in decisions]


# -- meeting a target -------------------------------------------------------------------------------


def test_a_fleet_at_its_targets_needs_no_decision() -> None:
    f = fleet(*running(A_OD, 2), node(A_SPOT, booting_until=NOW + 50))
    assert decide(f, {A_OD: 2, A_SPOT: 1}) == ()


def test_a_shortfall_is_launched_ready_after_the_boot_with_its_reason() -> None:
    (launch,) = decide(fleet(*running(A_OD, 1)), {A_OD: 3})
    assert launch == Launch(2, A_OD, NOW + BOOT_S, "target 3, 1 held")


def test_a_slot_the_plan_does_not_list_is_left_as_it_is() -> None:
    f = fleet(*running(A_OD, 2), *running(B_OD, 1))
    decisions = decide(f, {B_OD: 0})
    assert [d.slot for d in decisions] == [B_OD]


def test_reserved_targets_are_never_acted_on() -> None:
    f = fleet(*running(A_RESERVED, 2))
    assert decide(f, {A_RESERVED: 0}) == ()
    assert decide(f, {A_RESERVED: 5}) == ()


def test_a_negative_target_is_rejected() -> None:
    with pytest.raises(ValueError, match="must be ≥ 0"):
        decide(fleet(), {A_OD: -1})


def test_a_leave_time_goes_with_a_leaving_node_only() -> None:
    with pytest.raises(ValueError, match="leave_at goes with standing 'leaving'"):
        node(A_OD, standing="leaving")
    with pytest.raises(ValueError, match="leave_at goes with standing 'leaving'"):
        node(A_OD, leave_at=NOW + 10)


# -- take back before launching ---------------------------------------------------------------------


def test_a_leaving_node_is_taken_back_before_anything_is_launched() -> None:
    going = node(A_OD, standing="leaving", leave_at=NOW + 60)
    f = fleet(*running(A_OD, 1), going)
    decisions = decide(f, {A_OD: 3})
    assert kinds(decisions) == ["TakeBack", "Launch"]
    assert decisions[0] == TakeBack(going.node_id, A_OD, "target 3, 1 held: taken back before launching")
    assert isinstance(decisions[1], Launch)
    assert decisions[1].count == 1


def test_the_node_that_would_leave_last_is_taken_back_first_then_the_newest() -> None:
    soon = node(A_OD, standing="leaving", leave_at=NOW + 30, order=1)
    late_old = node(A_OD, standing="leaving", leave_at=NOW + 90, order=2)
    late_new = node(A_OD, standing="leaving", leave_at=NOW + 90, order=3)
    f = fleet(soon, late_old, late_new)
    assert [d.node_id for d in decide(f, {A_OD: 1}) if isinstance(d, TakeBack)] == [late_new.node_id]
    assert [d.node_id for d in decide(f, {A_OD: 2}) if isinstance(d, TakeBack)] == [
        late_new.node_id,
        late_old.node_id,
    ]


def test_a_lower_target_leaves_leaving_nodes_as_they_are() -> None:
    f = fleet(*running(A_OD, 1), node(A_OD, standing="leaving", leave_at=NOW + 60))
    assert decide(f, {A_OD: 1}) == ()


# -- release the surplus ----------------------------------------------------------------------------


def test_the_surplus_goes_newest_first_and_a_node_still_booting_at_once() -> None:
    old = node(A_OD, order=1)
    middle = node(A_OD, order=2)
    booting = node(A_OD, booting_until=NOW + 40, order=3)
    decisions = decide(fleet(old, middle, booting), {A_OD: 1})
    assert kinds(decisions) == ["Release", "Release"]
    first, second = decisions
    assert isinstance(first, Release)
    assert isinstance(second, Release)
    assert (first.node_id, first.leave_at) == (booting.node_id, None)
    assert "still booting" in first.reason
    # Nothing else boots once the booting node is released: the running one goes at once too.
    assert (second.node_id, second.leave_at) == (middle.node_id, None)
    assert "nothing booting" in second.reason


def test_a_running_node_released_serves_until_the_nodes_booting_now_are_ready() -> None:
    # Capacity moves from type a to type b: the a nodes stay until the b nodes are up.
    f = fleet(*running(A_OD, 2))
    decisions = decide(f, {A_OD: 0, B_OD: 2})
    assert kinds(decisions) == ["Launch", "Release", "Release"]
    assert all(d.leave_at == NOW + BOOT_S for d in decisions if isinstance(d, Release))


def test_the_leave_time_is_the_last_boot_of_any_slot_and_ignores_nodes_released_now() -> None:
    other = node(B_OD, booting_until=NOW + 250)
    cancelled = node(A_OD, booting_until=NOW + 400, order=99)
    f = fleet(*running(A_OD, 2), cancelled, other)
    releases = [d for d in decide(f, {A_OD: 1}) if isinstance(d, Release)]
    assert [(d.node_id, d.leave_at) for d in releases] == [
        (cancelled.node_id, None),
        (releases[1].node_id, NOW + 250),
    ]


def test_without_make_before_break_a_running_node_goes_at_once() -> None:
    f = fleet(*running(A_OD, 2))
    releases = [d for d in decide(f, {A_OD: 0, B_OD: 2}, make_before_break=False) if isinstance(d, Release)]
    assert [d.leave_at for d in releases] == [None, None]
    assert all("no make before break" in d.reason for d in releases)


def test_nodes_launched_ready_at_once_are_nothing_to_wait_for() -> None:
    # The backtest's scored start: what a policy first asks for is taken as already running.
    decisions = reconcile(fleet(*running(A_OD, 1)), {A_OD: 0, B_OD: 1}, boot_s=0.0)
    assert decisions[0] == Launch(1, B_OD, NOW, "target 1, 0 held")
    assert isinstance(decisions[1], Release)
    assert decisions[1].leave_at is None


# -- the spot market --------------------------------------------------------------------------------


def test_spot_launches_stop_at_the_pools_room_and_the_rest_is_refused() -> None:
    holders = [
        node(A_SPOT),
        node(A_SPOT, standing="leaving", leave_at=NOW + 60),
        node(A_SPOT, standing="released"),
        node(A_SPOT, standing="reclaimed"),  # under notice: no longer holds the market's capacity
    ]
    # 3 hold the pool; 5 allowed: room for 2. Target 5: 1 held, 1 taken back, 3 wanted, 2 launched.
    decisions = decide(fleet(*holders, market={("a", "p"): 5}), {A_SPOT: 5})
    assert kinds(decisions) == ["TakeBack", "Launch", "Refuse"]
    launch, refuse = decisions[1], decisions[2]
    assert isinstance(launch, Launch)
    assert launch.count == 2
    assert refuse == Refuse(1, A_SPOT, 5, 3, "the spot market allows 5 in the pool and 3 hold it")


def test_a_full_pool_launches_nothing_and_a_pool_without_a_limit_anything() -> None:
    full = fleet(*running(A_SPOT, 2), market={("a", "p"): 1})
    assert kinds(decide(full, {A_SPOT: 4})) == ["Refuse"]
    unlimited = fleet(*running(A_SPOT, 2), market={("a", "p"): None})
    assert decide(unlimited, {A_SPOT: 4}) == (Launch(2, A_SPOT, NOW + BOOT_S, "target 4, 2 held"),)
    assert decide(fleet(*running(A_SPOT, 2)), {A_SPOT: 4}) == decide(unlimited, {A_SPOT: 4})


def test_the_market_limits_spot_only() -> None:
    decisions = decide(fleet(market={("a", "p"): 0}), {A_OD: 2})
    assert decisions == (Launch(2, A_OD, NOW + BOOT_S, "target 2, 0 held"),)


# -- properties -------------------------------------------------------------------------------------

SLOTS: tuple[Slot, ...] = (
    ("a", "p", "spot"),
    ("a", "q", "spot"),
    ("b", "p", "spot"),
    ("a", "p", "ondemand"),
    ("b", "p", "ondemand"),
    ("a", "p", "reserved"),
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[FleetNow, dict[Slot, int]]:
    nodes: list[NodeNow] = []
    for order in range(draw(st.integers(0, 14))):
        slot = draw(st.sampled_from(SLOTS))
        standing: Standing = draw(st.sampled_from(["held", "held", "leaving", "released", "reclaimed"]))
        booting = standing in ("held", "reclaimed") and draw(st.booleans())
        nodes.append(
            NodeNow(
                f"n{order}",
                slot,
                order,
                NOW + draw(st.integers(1, 300)) if booting else None,
                standing,
                NOW + draw(st.integers(1, 300)) if standing == "leaving" else None,
            )
        )
    market = {
        (name, pool): draw(st.one_of(st.none(), st.integers(0, 6)))
        for name, pool, tier in SLOTS
        if tier == "spot" and draw(st.booleans())
    }
    targets = {slot: draw(st.integers(0, 5)) for slot in SLOTS if draw(st.booleans())}
    return FleetNow(NOW, nodes, market), targets


def serving(nodes: Sequence[NodeNow], slot: Slot) -> int:
    return sum(
        1 for n in nodes if n.slot == slot and n.ready_at is None and n.standing in ("held", "leaving")
    )


def spot_holders(nodes: Sequence[NodeNow], slot: Slot) -> int:
    return sum(1 for n in nodes if n.slot == slot and n.standing in ("held", "leaving", "released"))


@settings(deadline=None)
@given(scenarios(), st.booleans())
def test_each_listed_slot_meets_its_target_unless_the_spot_market_has_no_room(
    scenario: tuple[FleetNow, dict[Slot, int]], make_before_break: bool
) -> None:
    f, targets = scenario
    decisions = decide(f, targets, make_before_break=make_before_break)
    nodes = after(f, decisions)
    for slot in SLOTS:
        if slot not in targets or slot[2] == "reserved":
            assert all(d.slot != slot for d in decisions)
            continue
        target = targets[slot]
        refused = any(isinstance(d, Refuse) and d.slot == slot for d in decisions)
        if refused:
            available = f.spot_available[slot[:2]]
            assert available is not None
            assert held(nodes, slot) < target
            assert spot_holders(nodes, slot) == max(available, spot_holders(f.nodes, slot))
        else:
            assert held(nodes, slot) == target
        if slot[2] == "spot" and f.spot_available.get(slot[:2]) is not None:
            limit = max(f.spot_available[slot[:2]] or 0, spot_holders(f.nodes, slot))
            assert spot_holders(nodes, slot) <= limit


@settings(deadline=None)
@given(scenarios())
def test_take_backs_come_first_and_launches_never_exceed_the_shortfall(
    scenario: tuple[FleetNow, dict[Slot, int]],
) -> None:
    f, targets = scenario
    decisions = decide(f, targets)
    nodes = after(f, decisions)
    for slot, target in targets.items():
        mine = [d for d in decisions if d.slot == slot]
        launched = sum(d.count for d in mine if isinstance(d, Launch))
        taken_back = sum(1 for d in mine if isinstance(d, TakeBack))
        assert launched + taken_back <= max(0, target - held(f.nodes, slot))
        if launched:
            assert kinds(mine)[:taken_back] == ["TakeBack"] * taken_back
            assert not any(n.slot == slot and n.standing == "leaving" for n in nodes)


@settings(deadline=None)
@given(scenarios(), st.booleans())
def test_nothing_serving_stops_while_new_nodes_boot(
    scenario: tuple[FleetNow, dict[Slot, int]], make_before_break: bool
) -> None:
    f, targets = scenario
    decisions = decide(f, targets, make_before_break=make_before_break)
    nodes = after(f, decisions)
    booting = [n.ready_at for n in nodes if n.standing == "held" and n.ready_at is not None]
    was_running = {n.node_id for n in f.nodes if n.ready_at is None}
    for d in decisions:
        if isinstance(d, Release) and d.node_id in was_running and make_before_break and booting:
            assert d.leave_at is not None
            assert d.leave_at >= max(booting)
    if make_before_break:
        for slot, target in targets.items():
            if slot[2] != "reserved":
                assert serving(nodes, slot) >= min(target, serving(f.nodes, slot))
