"""The drain planner: every request in flight on a reclaimed node gets exactly one action, and under the
default ``deadline`` policy nothing that still needs the source is left unfinished at the deadline.

Rates are the seed catalog's h100_8x (8,000 decode tokens/s over a batch of 256: 31.25 tokens/s per
sequence; 50,000 prefill tokens/s) and a 70B model with GQA in fp16 (327,680 KV bytes per token).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.core.drain import (
    POLICIES,
    DrainAction,
    DrainPlan,
    DrainPolicy,
    DrainSettings,
    InFlight,
    TargetWorker,
    plan_drain,
)

KV_PER_TOKEN = 327_680.0
PER_SEQ = 8_000 / 256  # tokens/s per sequence on an h100_8x at full batch
NVLINK = 300e9
FAST_NET = 50e9  # 400 Gbit/s
SLOW_NET = 1.25e9  # 10 Gbit/s


def req(
    request_id: str,
    *,
    prompt: int = 1_000,
    generated: int = 100,
    remaining: int = 500,
    blocks: tuple[str, ...] = (),
) -> InFlight:
    return InFlight(
        request_id=request_id,
        prompt_tokens=prompt,
        generated_tokens=generated,
        remaining_tokens=remaining,
        kv_bytes=KV_PER_TOKEN * (prompt + generated),
        prefix_blocks=blocks,
    )


def target(
    worker_id: str,
    *,
    same_node: bool = False,
    free_slots: int = 64,
    prefill: float = 50_000.0,
    decode: float = 8_000.0,
    max_batch: int = 256,
    cached: frozenset[str] = frozenset(),
) -> TargetWorker:
    return TargetWorker(
        worker_id=worker_id,
        instance_id="source-node" if same_node else f"node-{worker_id}",
        same_node=same_node,
        free_slots=free_slots,
        prefill_tokens_per_s=prefill,
        decode_tokens_per_s=decode,
        max_batch=max_batch,
        cached_blocks=cached,
    )


def drain_settings(time_left: float = 120.0, **kw: Any) -> DrainSettings:
    base = DrainSettings(
        time_left_s=time_left,
        source_decode_tokens_per_s=8_000.0,
        source_max_batch=256,
        same_node_bytes_per_s=NVLINK,
        cross_node_bytes_per_s=FAST_NET,
    )
    return dataclasses.replace(base, **kw)


def by_id(plan: DrainPlan) -> dict[str, DrainAction]:
    return {a.request_id: a for a in plan.actions}


def by_request(requests: list[InFlight]) -> dict[str, InFlight]:
    return {r.request_id: r for r in requests}


def slots_used(plan: DrainPlan) -> Counter[str]:
    return Counter(a.target for a in plan.actions if a.kind in ("transfer", "reprefill") and a.target)


def long_requests(n: int, remaining: int = 5_000, prefix: str = "r") -> list[InFlight]:
    return [
        req(f"{prefix}{i}", prompt=800 + 37 * i, generated=50 + i, remaining=remaining + i) for i in range(n)
    ]


# --- the shape of a plan ------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
def test_every_request_gets_exactly_one_action_under_every_policy(policy: DrainPolicy) -> None:
    requests = [*long_requests(30), *(req(f"s{i}", remaining=20 + 10 * i) for i in range(10))]
    targets = [
        target("a", free_slots=5),
        target("b", same_node=True, free_slots=5),
        target("c", free_slots=3),
    ]
    plan = plan_drain(requests, targets, drain_settings(30.0, policy=policy))
    ids = [a.request_id for a in plan.actions]
    assert sorted(ids) == sorted(r.request_id for r in requests)
    assert plan.policy == policy
    assert sum(plan.count(kind) for kind in ("finish", "transfer", "reprefill", "requeue")) == len(requests)


def test_no_requests_give_an_empty_plan_and_no_targets_mean_requeue_or_finish() -> None:
    assert plan_drain([], [target("a")], drain_settings()).actions == ()
    plan = plan_drain([req("long", remaining=10_000), req("short", remaining=10)], [], drain_settings())
    assert {a.request_id: a.kind for a in plan.actions} == {"long": "requeue", "short": "finish"}


def test_actions_come_in_the_order_their_commands_are_due() -> None:
    plan = plan_drain(long_requests(40), [target("a", prefill=500.0)], drain_settings(60.0))
    starts = [a.start_s for a in plan.actions]
    assert starts == sorted(starts)
    assert plan.count("transfer") > 1  # some commands wait for the link


# --- finishing in place -------------------------------------------------------------------------------


def test_short_requests_finish_in_place_with_a_long_notice() -> None:
    requests = [req(f"s{i}", remaining=50 * (i + 1)) for i in range(10)]  # at most 16 s of decode
    plan = plan_drain(requests, [target("a")], drain_settings(120.0))
    assert plan.count("finish") == len(requests)
    for r in requests:
        action = by_id(plan)[r.request_id]
        assert action.target is None
        assert action.completion_s == pytest.approx(r.remaining_tokens / PER_SEQ)
        assert action.bytes_moved == 0
        assert action.tokens_recomputed == 0
    assert plan.at_risk == ()


def test_finishing_in_place_must_be_done_a_safety_margin_before_the_deadline() -> None:
    # 115 s of decode left: done 5 s before a 120 s deadline exactly fits; one token more does not.
    fits = req("fits", remaining=int(115 * PER_SEQ))
    too_long = req("too-long", remaining=int(115 * PER_SEQ) + 1)
    plan = plan_drain([fits, too_long], [target("a")], drain_settings(120.0, safety_margin_s=5.0))
    kinds = {a.request_id: a.kind for a in plan.actions}
    assert kinds["fits"] == "finish"
    assert kinds["too-long"] in ("transfer", "reprefill")


# --- moving requests ----------------------------------------------------------------------------------


def test_with_a_30s_notice_and_a_slow_link_the_default_mixes_reprefill_and_requeue_and_risks_nothing() -> (
    None
):
    short = [req(f"s{i}", remaining=100 + 40 * i) for i in range(8)]  # ≤ 13 s of decode: finish
    long = long_requests(40)  # 160 s of decode: cannot finish by the deadline
    targets = [target("a", free_slots=12), target("b", free_slots=10)]
    plan = plan_drain([*short, *long], targets, drain_settings(30.0, cross_node_bytes_per_s=SLOW_NET))
    assert plan.at_risk == ()
    assert {a.request_id for a in plan.actions if a.kind == "finish"} == {r.request_id for r in short}
    # Over 10 Gbit/s a ~1,000-token KV cache takes 0.3 s, re-prefilling it 0.02 s: re-prefills, until the
    # targets' prefill queues are longer than a transfer; then all 22 slots are taken and the rest requeue.
    assert plan.count("reprefill") > plan.count("transfer")
    assert plan.count("reprefill") + plan.count("transfer") == 22
    assert plan.count("requeue") == 40 - 22
    # Slots ran out: the requests with the least decode left are the ones requeued.
    requeued = {a.request_id for a in plan.actions if a.kind == "requeue"}
    assert requeued == {f"r{i}" for i in range(40 - 22)}
    for a in plan.actions:
        if a.kind == "requeue":
            assert a.completion_s == math.inf
            assert (
                a.tokens_recomputed
                == by_request(long)[a.request_id].prompt_tokens
                + by_request(long)[a.request_id].generated_tokens
            )


def test_same_node_targets_get_kv_transfers() -> None:
    requests = long_requests(12)
    plan = plan_drain(
        requests,
        [target("local", same_node=True, free_slots=20), target("remote", free_slots=20)],
        drain_settings(30.0, cross_node_bytes_per_s=SLOW_NET),
    )
    assert plan.count("transfer") == 12
    sizes = by_request(requests)
    for a in plan.actions:
        assert a.target == "local"
        assert a.bytes_moved == sizes[a.request_id].kv_bytes
        assert a.tokens_recomputed == 0
        assert a.ready_s - a.start_s == pytest.approx(a.bytes_moved / NVLINK)
        assert a.completion_s == pytest.approx(a.ready_s + sizes[a.request_id].remaining_tokens / PER_SEQ)
    assert plan.at_risk == ()


def test_cross_node_transfers_are_serialized_on_the_source_egress() -> None:
    # Slow prefill on both targets: the shared 400 Gbit/s egress is the better way for every request.
    requests = long_requests(16)
    targets = [target("a", prefill=2_000.0), target("b", prefill=2_000.0)]
    plan = plan_drain(requests, targets, drain_settings(120.0, cross_node_bytes_per_s=FAST_NET))
    transfers = [a for a in plan.actions if a.kind == "transfer"]
    assert len(transfers) == 16
    assert {a.target for a in transfers} == {"a", "b"}
    link_free = 0.0
    for a in transfers:  # in command order: each starts when the one before it has arrived
        assert a.start_s == pytest.approx(link_free)
        assert a.ready_s - a.start_s == pytest.approx(a.bytes_moved / FAST_NET)
        link_free = a.ready_s
    assert link_free == pytest.approx(sum(r.kv_bytes for r in requests) / FAST_NET)


def test_transfers_stop_when_the_egress_is_booked_up_to_the_margin_and_the_rest_reprefill() -> None:
    # 0.7-1.9 s per transfer on a 0.4 GB/s link, 25 s to the margin; a re-prefill takes over 40 s, so
    # every transfer that is ready in time is better.
    requests = long_requests(40)
    plan = plan_drain(
        requests,
        [target("a", prefill=20.0, free_slots=100)],
        drain_settings(30.0, cross_node_bytes_per_s=0.4e9),
    )
    transfers = [a for a in plan.actions if a.kind == "transfer"]
    booked = max(a.ready_s for a in transfers)
    assert len(transfers) >= 10
    assert booked <= plan.ready_by_s
    assert plan.count("reprefill") == 40 - len(transfers)
    sizes = by_request(requests)
    for a in plan.actions:
        if a.kind == "reprefill":  # it did not fit on the link any more
            assert booked + sizes[a.request_id].kv_bytes / 0.4e9 > plan.ready_by_s
    assert plan.at_risk == ()


def test_the_shared_prefill_queue_of_a_target_spreads_reprefills_over_targets() -> None:
    requests = long_requests(20)
    targets = [target("a", prefill=5_000.0), target("b", prefill=5_000.0)]
    plan = plan_drain(requests, targets, drain_settings(30.0, cross_node_bytes_per_s=1e7))
    assert plan.count("reprefill") == 20
    assert abs(slots_used(plan)["a"] - slots_used(plan)["b"]) <= 2


def test_slots_are_never_oversubscribed() -> None:
    targets = [
        target("none", free_slots=0, prefill=1e9),
        target("one", free_slots=1),
        target("three", same_node=True, free_slots=3),
    ]
    for policy in POLICIES:
        plan = plan_drain(long_requests(30), targets, drain_settings(30.0, policy=policy))
        used = slots_used(plan)
        assert used["none"] == 0
        assert used["one"] <= 1
        assert used["three"] <= 3
        if policy != "migrate_top_n":  # which stops after one migration with a 30 s notice
            assert plan.count("requeue") == 30 - 4


def test_cached_prefix_overlap_lowers_tokens_recomputed_and_steers_the_target_choice() -> None:
    prefix = tuple(f"sys-{k}" for k in range(40))  # a 640-token system prompt
    r = req("r", prompt=1_000, generated=200, remaining=5_000, blocks=(*prefix, "own-0", "own-1"))
    cold = target("cold")
    warm = target("warm", cached=frozenset(prefix))
    half = target("half", cached=frozenset(prefix[:20]) | {"own-0"})  # a gap: only the leading run counts
    for targets in ([cold, warm, half], [warm, cold, half], [half, cold, warm]):
        plan = plan_drain([r], targets, drain_settings(30.0, cross_node_bytes_per_s=SLOW_NET))
        (action,) = plan.actions
        assert (action.kind, action.target) == ("reprefill", "warm")
        assert action.tokens_recomputed == 1_200 - 40 * 16
    alone = plan_drain([r], [half], drain_settings(30.0, cross_node_bytes_per_s=SLOW_NET)).actions[0]
    assert alone.tokens_recomputed == 1_200 - 20 * 16


def test_a_cached_prefix_never_counts_for_more_than_the_prompt() -> None:
    blocks = tuple(f"b{k}" for k in range(10))
    r = req("r", prompt=100, generated=30, remaining=5_000, blocks=blocks)  # 10 blocks × 16 > 100 tokens
    plan = plan_drain([r], [target("a", cached=frozenset(blocks))], drain_settings(30.0))
    assert plan.actions[0].tokens_recomputed == 30


# --- the seed's policies ------------------------------------------------------------------------------


def test_seed_policies_put_requests_at_risk_in_a_case_where_deadline_does_not() -> None:
    requests = [*long_requests(20), *(req(f"s{i}", remaining=96 + i) for i in range(5))]
    targets = [target("a", free_slots=40), target("b", free_slots=40)]
    # A 30 s notice leaves migrate_top_n no time before its 30 s clean-up: one migration, the rest stay.
    gcp = drain_settings(30.0, cross_node_bytes_per_s=SLOW_NET)
    assert plan_drain(requests, targets, gcp).at_risk == ()
    top_n = plan_drain(requests, targets, dataclasses.replace(gcp, policy="migrate_top_n"))
    assert set(top_n.at_risk) == {f"r{i}" for i in range(20)}
    # An 8 s notice: 96-100 remaining tokens take 3.1-3.2 s, past the 3 s left before the margin.
    short = drain_settings(8.0)
    assert plan_drain(requests, targets, short).at_risk == ()
    let_short = plan_drain(requests, targets, dataclasses.replace(short, policy="let_short_finish"))
    assert set(let_short.at_risk) == {"s0", "s1", "s2", "s3", "s4"}


def test_seed_policies_transfer_over_a_slow_same_node_link_past_the_deadline() -> None:
    # The seed moves KV whenever the target is on the same node, however slow that link is.
    requests = long_requests(20)
    targets = [target("local", same_node=True, free_slots=40)]
    # ~1.4-2 s per transfer; re-prefills (2 s each) queue on the target's prefill.
    settings = drain_settings(30.0, same_node_bytes_per_s=0.2e9)
    targets = [target("local", same_node=True, free_slots=40, prefill=500.0)]
    deadline = plan_drain(requests, targets, settings)
    assert deadline.at_risk == ()
    assert deadline.count("transfer") > 0
    assert deadline.count("reprefill") > 0
    seed = plan_drain(requests, targets, dataclasses.replace(settings, policy="let_short_finish"))
    assert seed.count("transfer") == 20
    assert len(seed.at_risk) > 0


def test_seed_policies_transfer_within_the_node_and_reprefill_across_nodes_to_the_best_overlap() -> None:
    prefix = ("p0", "p1", "p2")
    requests = [req(f"r{i}", remaining=3_000, blocks=prefix) for i in range(4)]
    targets = [
        target("remote-cold", free_slots=10),
        target("remote-warm", free_slots=1, cached=frozenset(prefix)),
        target("local-warm", same_node=True, free_slots=2, cached=frozenset(prefix[:2])),
    ]
    for policy in ("migrate_top_n", "let_short_finish"):
        plan = plan_drain(requests, targets, drain_settings(120.0, policy=policy))
        moves = Counter((a.kind, a.target) for a in plan.actions)
        assert moves == {
            ("reprefill", "remote-warm"): 1,
            ("transfer", "local-warm"): 2,
            ("reprefill", "remote-cold"): 1,
        }


def test_migrate_top_n_leaves_almost_done_requests_in_place_whatever_the_deadline() -> None:
    requests = [req("49", remaining=49), req("50", remaining=50)]
    settings = drain_settings(6.0, policy="migrate_top_n", seed_cleanup_s=0.0)
    plan = plan_drain(requests, [target("a")], settings)
    kinds = {a.request_id: a.kind for a in plan.actions}
    assert kinds == {"49": "finish", "50": "reprefill"}
    assert plan.at_risk == ("49",)  # 1.6 s of decode, and 1 s to the margin


def test_migrate_top_n_stops_migrating_once_its_migrations_take_longer_than_time_left_minus_cleanup() -> None:
    # Each re-prefill takes 4 s on this target; 40 − 30 = 10 s: migrations start at 0, 4 and 8 s of
    # cumulative time, then the loop stops and the rest stay on the node.
    requests = [req(f"r{i}", prompt=3_900, generated=100, remaining=2_000 + i) for i in range(6)]
    plan = plan_drain(requests, [target("a", prefill=1_000.0)], drain_settings(40.0, policy="migrate_top_n"))
    kinds = {a.request_id: a.kind for a in plan.actions}
    assert kinds == {"r0": "reprefill", "r1": "reprefill", "r2": "reprefill"} | {
        f"r{i}": "finish" for i in range(3, 6)
    }
    assert set(plan.at_risk) == {"r3", "r4", "r5"}


def test_let_short_finish_migrates_everything_above_its_threshold_whatever_the_notice() -> None:
    requests = [req("100", remaining=100), req("101", remaining=101)]
    plan = plan_drain(requests, [target("a")], drain_settings(120.0, policy="let_short_finish"))
    assert {a.request_id: a.kind for a in plan.actions} == {"100": "finish", "101": "reprefill"}


# --- inputs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: req("r", prompt=-1), "prompt_tokens"),
        (lambda: req("r", generated=-1), "generated_tokens"),
        (lambda: req("r", remaining=-5), "remaining_tokens"),
        (lambda: InFlight("r", 1, 1, 1, math.nan), "kv_bytes"),
        (lambda: InFlight("", 1, 1, 1, 1.0), "request_id"),
        (lambda: target("a", free_slots=-1), "free_slots"),
        (lambda: target("a", prefill=0.0), "prefill_tokens_per_s"),
        (lambda: target("a", decode=-8_000.0), "decode_tokens_per_s"),
        (lambda: target("a", max_batch=0), "max_batch"),
        (lambda: drain_settings(-1.0), "time_left_s"),
        (lambda: drain_settings(source_decode_tokens_per_s=0.0), "source_decode_tokens_per_s"),
        (lambda: drain_settings(source_max_batch=0), "source_max_batch"),
        (lambda: drain_settings(same_node_bytes_per_s=0.0), "same_node_bytes_per_s"),
        (lambda: drain_settings(cross_node_bytes_per_s=math.inf), "cross_node_bytes_per_s"),
        (lambda: drain_settings(safety_margin_s=-1.0), "safety_margin_s"),
        (lambda: drain_settings(block_tokens=0), "block_tokens"),
        (lambda: drain_settings(policy="fastest"), "policy"),
        (lambda: drain_settings(seed_cleanup_s=-30.0), "seed_cleanup_s"),
    ],
)
def test_invalid_inputs_are_rejected_naming_the_field(build: Callable[[], object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        build()


def test_duplicate_request_or_target_ids_are_rejected() -> None:
    with pytest.raises(ValueError, match="request_id"):
        plan_drain([req("x"), req("x")], [target("a")], drain_settings())
    with pytest.raises(ValueError, match="worker_id"):
        plan_drain([req("x")], [target("a"), target("a")], drain_settings())


# --- properties ---------------------------------------------------------------------------------------

_BLOCKS = tuple(f"h{k}" for k in range(6))


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[InFlight], list[TargetWorker], DrainSettings]:
    n = draw(st.integers(0, 40))
    requests = []
    for i in range(n):
        prompt = draw(st.integers(0, 8_000))
        generated = draw(st.integers(0, 2_000))
        requests.append(
            InFlight(
                request_id=f"r{i}",
                prompt_tokens=prompt,
                generated_tokens=generated,
                remaining_tokens=draw(st.integers(0, 4_000)),
                kv_bytes=(prompt + generated) * draw(st.sampled_from([0.0, 1.0, KV_PER_TOKEN, 1e6])),
                prefix_blocks=tuple(draw(st.lists(st.sampled_from(_BLOCKS), max_size=6))),
            )
        )
    targets = [
        TargetWorker(
            worker_id=f"t{k}",
            instance_id=f"n{k}",
            same_node=draw(st.booleans()),
            free_slots=draw(st.integers(0, 12)),
            prefill_tokens_per_s=draw(st.floats(1.0, 1e6)),
            decode_tokens_per_s=draw(st.floats(1.0, 1e5)),
            max_batch=draw(st.integers(1, 512)),
            cached_blocks=frozenset(draw(st.lists(st.sampled_from(_BLOCKS), max_size=6))),
        )
        for k in range(draw(st.integers(0, 5)))
    ]
    settings = DrainSettings(
        time_left_s=draw(st.floats(0.0, 300.0)),
        source_decode_tokens_per_s=draw(st.floats(1.0, 1e5)),
        source_max_batch=draw(st.integers(1, 1024)),
        same_node_bytes_per_s=draw(st.floats(1e6, 1e12)),
        cross_node_bytes_per_s=draw(st.floats(1e6, 1e12)),
        safety_margin_s=draw(st.floats(0.0, 30.0)),
        block_tokens=draw(st.integers(1, 64)),
        policy=draw(st.sampled_from(POLICIES)),
    )
    return requests, targets, settings


def check_plan_shape(requests: list[InFlight], targets: list[TargetWorker], plan: DrainPlan) -> None:
    assert sorted(a.request_id for a in plan.actions) == sorted(r.request_id for r in requests)
    free = {t.worker_id: t.free_slots for t in targets}
    for worker_id, used in slots_used(plan).items():
        assert used <= free[worker_id]
    for a in plan.actions:
        assert a.start_s >= 0
        assert a.ready_s >= a.start_s
        assert a.completion_s >= a.ready_s
        assert a.bytes_moved >= 0
        assert a.tokens_recomputed >= 0
        assert (a.target is not None) == (a.kind in ("transfer", "reprefill"))
    starts = [a.start_s for a in plan.actions]
    assert starts == sorted(starts)


@given(scenarios())
def test_the_deadline_policy_never_leaves_a_request_at_risk(
    scenario: tuple[list[InFlight], list[TargetWorker], DrainSettings],
) -> None:
    requests, targets, settings = scenario
    plan = plan_drain(requests, targets, dataclasses.replace(settings, policy="deadline"))
    check_plan_shape(requests, targets, plan)
    assert plan.at_risk == ()
    if any(t.free_slots for t in targets):
        # Requeue only when no slot is left anywhere.
        assert plan.count("requeue") == 0 or sum(slots_used(plan).values()) == sum(
            t.free_slots for t in targets
        )


@given(scenarios())
def test_every_policy_gives_one_action_per_request_within_the_slots_at_non_negative_times(
    scenario: tuple[list[InFlight], list[TargetWorker], DrainSettings],
) -> None:
    requests, targets, settings = scenario
    plan = plan_drain(requests, targets, settings)
    check_plan_shape(requests, targets, plan)
    # Cross-node transfers take turns on the egress link.
    same_node = {t.worker_id for t in targets if t.same_node}
    egress = sorted(
        (a for a in plan.actions if a.kind == "transfer" and a.target not in same_node),
        key=lambda a: a.start_s,
    )
    for before, after in itertools.pairwise(egress):
        assert after.start_s >= before.ready_s
        assert after.ready_s - after.start_s == pytest.approx(
            after.bytes_moved / settings.cross_node_bytes_per_s
        )
