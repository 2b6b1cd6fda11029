"""The emulated GPU worker's event model, driven directly: no bus, no clock, time passed in by hand.

The test node type has dyadic rates (prefill 1,024 tokens/s, 8 tokens/s per sequence, links of 1,040,000
and 4,160,000 B/s with 1,000 bytes of KV per token), so expected times are exact. The property test at
the end drives two workers on one fabric with random commands and time steps and checks, after every
step, what must always hold.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from agent.core.catalog import InstanceType
from agent.sim.shared_link import ps_finish_offsets
from agent.sim.worker_model import (
    Ack,
    Events,
    Fabric,
    Pending,
    Refused,
    TransferEnded,
    Update,
    WorkerModel,
    WorkerStopped,
)
from schemas.workerproto import Block

T0 = 1_700_000_000.0
GPU = InstanceType(
    name="test_gpu",
    gpus=1,
    gpu_type="test",
    ondemand_hourly=4.0,
    reserved_hourly=2.5,
    spot_hourly=1.2,
    spot_reclaim_per_hour=0.05,
    max_batch=2,
    prefill_tokens_per_s=1024.0,
    decode_tokens_per_s=16.0,  # 8 tokens/s per sequence
)
CROSS = 1_040_000.0  # B/s: the KV of 520 tokens crosses nodes in 0.5 s
SAME = 4 * CROSS


def worker(worker_id: str = "a", fabric: Fabric | None = None, **overrides: Any) -> WorkerModel:
    params: dict[str, Any] = {
        "instance_id": f"i-{worker_id}",
        "instance_type": GPU,
        "start_at": T0,
        "kv_bytes_per_token": 1000,
        "same_node_bytes_per_s": SAME,
        "cross_node_bytes_per_s": CROSS,
        "fabric": fabric,
        **overrides,
    }
    return WorkerModel(worker_id=worker_id, **params)


def updates(model: WorkerModel) -> list[tuple[str, str, float, int]]:
    return [(u.request_id, u.state, u.at, u.generated_tokens) for u in model.take_events().updates]


# --- the rules, by example ------------------------------------------------------------------------


def test_the_model_loads_no_event_loop_messaging_or_logging() -> None:
    code = "import sys, json, agent.sim.worker_model; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    loaded = {name.split(".")[0] for name in json.loads(out)}
    assert loaded.isdisjoint({"asyncio", "nats", "structlog", "numpy", "scipy"})


def test_processor_sharing_ends_the_smallest_job_first_then_speeds_the_others_up() -> None:
    assert ps_finish_offsets([30.0, 10.0, 10.0], 10.0) == [5.0, 3.0, 3.0]


def test_a_request_prefills_then_decodes_and_the_updates_carry_model_time() -> None:
    m = worker()
    assert m.submit("r1", prompt_tokens=512, expected_output_tokens=16) == Ack(
        op="submit", request_id="r1", detail="prefill"
    )
    m.advance_to(T0 + 1.5)  # 0.5 s of prefill, then 1 s of decoding at 8 tokens/s
    assert [(r.generated_tokens, r.kv_bytes) for r in m.inflight()] == [(8, (512 + 8) * 1000)]
    m.advance_to(T0 + 10)
    assert updates(m) == [("r1", "started", T0, 0), ("r1", "done", T0 + 2.5, 16)]
    assert (m.completions, m.phase_of("r1"), m.now) == ({"r1": T0 + 2.5}, "done", T0 + 10)


def test_a_full_worker_refuses_and_a_refusal_changes_nothing() -> None:
    m = worker(max_queued=1)
    for r in ("r1", "r2", "r3"):
        m.submit(r, prompt_tokens=128, expected_output_tokens=8)
    before = (m.inflight(), m.started, m.take_events())
    with pytest.raises(Refused, match="no free slot"):
        m.submit("r4", prompt_tokens=128, expected_output_tokens=8)
    assert (m.inflight(), m.started, m.take_events().updates) == (before[0], 3, [])


def test_a_repeated_command_returns_the_first_outcome_and_acts_once() -> None:
    m = worker()
    first = m.submit("r1", prompt_tokens=512, expected_output_tokens=24)
    m.advance_to(T0 + 1.0)
    assert m.submit("r1", prompt_tokens=512, expected_output_tokens=24) == first  # detail still "prefill"
    cancelled = m.cancel("r1")
    assert m.cancel("r1") == cancelled
    assert (m.started, m.moved_out, len(updates(m))) == (1, 1, 2)


def test_a_kv_transfer_pauses_the_request_and_its_end_comes_as_an_event() -> None:
    fabric = Fabric()
    a, b = worker("a", fabric), worker("b", fabric)
    a.submit("r1", prompt_tokens=512, expected_output_tokens=24)
    a.advance_to(T0 + 1.5)
    pending = a.transfer_kv("r1", "b", "i-b", reply_by=T0 + 5)
    assert isinstance(pending, Pending)
    assert a.transfer_kv("r1", "b", "i-b", reply_by=T0 + 5) == pending  # the same transfer, waited for
    with pytest.raises(Refused, match="no KV cache"):
        b.resume("r1", "a", prompt_tokens=512, generated_tokens=8, expected_remaining_tokens=16)
    a.advance_to(T0 + 2.0)  # 520,000 bytes at 1,040,000 B/s
    ack = Ack(
        "transfer_kv", "r1", generated_tokens=8, bytes_moved=520_000, detail="to b over the cross-node link"
    )
    assert a.take_events().ended == [TransferEnded(pending.transfer_id, ack)]
    assert a.transfer_kv("r1", "b", "i-b", reply_by=T0 + 5) == ack  # a late repeat gets the ack
    b.advance_to(T0 + 2.0)
    resumed = b.resume("r1", "a", prompt_tokens=512, generated_tokens=8, expected_remaining_tokens=16)
    assert resumed.detail == "decode"


def test_nothing_to_move_ends_at_once() -> None:
    m = worker(kv_bytes_per_token=0)
    m.submit("r1", prompt_tokens=64, expected_output_tokens=40)
    m.advance_to(T0 + 1.0)
    pending = m.transfer_kv("r1", "b", "i-b", reply_by=T0 + 1.0)
    assert isinstance(pending, Pending)
    (ended,) = m.take_events().ended
    assert ended.transfer_id == pending.transfer_id
    assert isinstance(ended.outcome, Ack)
    assert m.phase_of("r1") == "moved_out"


def test_at_its_deadline_the_worker_loses_what_is_left_and_then_does_nothing() -> None:
    m = worker(stop_at=T0 + 2.25)
    for r in ("r1", "r2"):
        m.submit(r, prompt_tokens=512, expected_output_tokens=400)
    m.advance_to(T0 + 2.0)
    pending = m.transfer_kv("r1", "b", "i-b", reply_by=T0 + 10)
    assert isinstance(pending, Pending)
    assert (m.alive_at(T0 + 2.2), m.alive_at(T0 + 2.25)) == (True, False)  # what the fabric asks
    m.advance_to(T0 + 100)
    events = m.take_events()
    assert [(u.request_id, u.state, u.at) for u in events.updates][-2:] == [
        ("r1", "lost", T0 + 2.25),
        ("r2", "lost", T0 + 2.25),
    ]
    assert [(e.transfer_id, "stopped at" in str(e.outcome)) for e in events.ended] == [
        (pending.transfer_id, True)
    ]
    assert (m.stopped, m.now) == (True, T0 + 2.25)  # its time stops there too
    with pytest.raises(WorkerStopped):
        m.submit("r3", prompt_tokens=1, expected_output_tokens=1)


def test_a_crash_is_silent_even_about_what_happened_just_before() -> None:
    m = worker()
    m.submit("r1", prompt_tokens=64, expected_output_tokens=8)
    m.crash()
    assert (m.stopped, m.lost, m.take_events().updates) == (True, 1, [])


def test_blocks_copied_in_join_the_cache_within_its_capacity() -> None:
    # Ranked as hot_blocks ranks them: a cache too small keeps the first (hottest) ones.
    blocks = [Block(block_hash=f"p{i}", size_bytes=16_000, hits=i) for i in (3, 2, 1, 0)]
    for capacity in (0, 2, 8):
        m = worker(cache_blocks=capacity)
        assert isinstance(m.receive_blocks("copy-1", "z", blocks, reply_by=T0 + 1), Pending)
        m.advance_to(T0 + 1)
        assert m.kv_blocks_used == min(capacity, 4)
        assert [b.block_hash for b in m.hot_blocks(limit=8)] == ["p3", "p2", "p1", "p0"][: min(capacity, 4)]


# --- what always holds ----------------------------------------------------------------------------


@dataclass
class Watched:
    """What the test has seen of one worker: the last update of each request, and its token count."""

    model: WorkerModel
    last: dict[str, Update]
    tokens: dict[str, int]
    pending: set[int]
    deadline: float | None = None


REQUEST_IDS = [f"r{i}" for i in range(6)]
REQUESTS = st.sampled_from(REQUEST_IDS)
PREFIXES = st.lists(st.sampled_from(["p0", "p1", "p2", "p3"]), max_size=3)


def snapshot(m: WorkerModel) -> tuple[Any, ...]:
    return (
        m.inflight(),
        m.started,
        m.completed,
        m.moved_out,
        m.lost,
        m.transfers_in_progress,
        list(m.cached_blocks()),
        m.now,
        m.stopped,
    )


class WorkerModelMachine(RuleBasedStateMachine):
    """Two workers on one fabric (``a`` sends to ``b``), one clock; random commands and time steps."""

    def __init__(self) -> None:
        super().__init__()
        self.t = T0
        self.workers: dict[str, Watched] = {}

    @initialize(
        cache_blocks=st.integers(0, 4),
        max_queued=st.integers(0, 2),
        same_node=st.booleans(),
        a_stops_after=st.sampled_from([None, None, 0.0, 3.0, 8.0]),
    )
    def start(self, cache_blocks: int, max_queued: int, same_node: bool, a_stops_after: float | None) -> None:
        fabric = Fabric()
        for name in ("a", "b"):
            instance = "i-a" if same_node else f"i-{name}"
            model = worker(
                name, fabric, cache_blocks=cache_blocks, max_queued=max_queued, instance_id=instance
            )
            self.workers[name] = Watched(model, {}, {}, set())
        if a_stops_after is not None:  # a hard stop known in advance, like a spot notice's
            a = self.workers["a"]
            a.deadline = T0 + a_stops_after
            a.model.kill_at(a.deadline)
            a.model.advance_to(self.t)  # a deadline now takes effect at once

    # --- driving ---

    def observe(self, w: Watched) -> None:
        events = w.model.take_events()
        for u in events.updates:
            last = w.last.get(u.request_id)
            assert u.at <= w.model.now
            if w.deadline is not None:
                assert u.at <= w.deadline, "an event after the hard stop"
            if u.state == "started":
                assert last is None or last.state != "started", f"{u.request_id} admitted twice"
                w.tokens[u.request_id] = u.generated_tokens
            else:
                assert last is not None, f"{u.request_id} left without starting"
                assert last.state == "started", f"{u.request_id} left twice"
                assert u.generated_tokens >= w.tokens[u.request_id], "tokens went backwards"
            w.last[u.request_id] = u
        for end in events.ended:
            assert end.transfer_id in w.pending, "an outcome for no transfer, or a second one"
            w.pending.discard(end.transfer_id)

    def command(self, name: str, act: Callable[[WorkerModel], Ack | Pending]) -> None:
        """Run ``act(model)``; a refusal must change nothing, a repeat must return the first outcome."""
        w = self.workers[name]
        self.observe(w)
        before = snapshot(w.model)
        if w.model.stopped:
            with pytest.raises(WorkerStopped):
                act(w.model)
            return
        try:
            outcome: Ack | Pending = act(w.model)
        except Refused:
            assert snapshot(w.model) == before
            assert w.model.take_events() == Events([], [])
            return
        if isinstance(outcome, Pending):
            w.pending.add(outcome.transfer_id)
        self.observe(w)
        after = snapshot(w.model)
        again = act(w.model)
        if isinstance(outcome, Pending) and outcome.transfer_id not in w.pending:
            assert isinstance(again, Ack)  # it ended at once: the repeat gets its ack
        else:
            assert again == outcome
        assert snapshot(w.model) == after
        self.observe(w)

    @rule(dt=st.sampled_from([0.0, 0.01, 0.125, 0.3, 1.0, 2.5]))
    def advance(self, dt: float) -> None:
        self.t += dt
        for w in self.workers.values():
            w.model.advance_to(self.t)
            self.observe(w)

    @rule(
        name=st.sampled_from(["a", "a", "b"]),
        rid=REQUESTS,
        prompt=st.integers(0, 600),
        output=st.integers(0, 40),
        generated=st.integers(0, 8),
        prefix=PREFIXES,
    )
    def submit(
        self, name: str, rid: str, prompt: int, output: int, generated: int, prefix: list[str]
    ) -> None:
        self.command(name, lambda m: m.submit(rid, prompt, output, prefix, already_generated=generated))

    @rule(rid=REQUESTS, prompt=st.integers(0, 600), output=st.integers(0, 40), late=st.booleans())
    def reprefill_on_b(self, rid: str, prompt: int, output: int, late: bool) -> None:
        reply_by = self.t - 1 if late else self.t + 1
        self.command("b", lambda m: m.reprefill(rid, prompt, 3, output, ["p0"], reply_by=reply_by))

    def pick(self, data: st.DataObject, name: str, phases: tuple[str, ...]) -> str:
        """A request on ``name`` in one of ``phases`` more often than not, else any id (to be refused)."""
        m = self.workers[name].model
        here = [r.request_id for r in m.inflight() if m.phase_of(r.request_id) in phases]
        return data.draw(st.sampled_from(here) if here and data.draw(st.integers(0, 3)) else REQUESTS)

    @rule(data=st.data(), name=st.sampled_from(["a", "b"]))
    def cancel(self, data: st.DataObject, name: str) -> None:
        rid = self.pick(data, name, ("queued", "prefill", "decode", "paused"))
        self.command(name, lambda m: m.cancel(rid))

    @precondition(lambda self: "decode" in map(self.workers["a"].model.phase_of, REQUEST_IDS))
    @rule(data=st.data(), within=st.sampled_from([0.0, 0.3, 1.0, 10.0]))
    def transfer_a_to_b(self, data: st.DataObject, within: float) -> None:
        rid = self.pick(data, "a", ("decode", "paused"))
        b = self.workers["b"].model
        self.command("a", lambda m: m.transfer_kv(rid, "b", b.instance_id, reply_by=self.t + within))

    @precondition(lambda self: "moved_out" in {u.state for u in self.workers["a"].last.values()})
    @rule(data=st.data())
    def resume_on_b(self, data: st.DataObject) -> None:
        u = data.draw(st.sampled_from([u for u in self.workers["a"].last.values() if u.state == "moved_out"]))
        self.command("b", lambda m: m.resume(u.request_id, "a", 100, u.generated_tokens, 5, ["p1"]))

    @rule(limit=st.integers(0, 4), within=st.sampled_from([0.0, 1.0]), key=st.sampled_from(["k1", "k2"]))
    def copy_hot_blocks_b_to_a(self, limit: int, within: float, key: str) -> None:
        blocks = self.workers["b"].model.hot_blocks(limit)
        self.command("a", lambda m: m.receive_blocks(key, "b", blocks, reply_by=self.t + within))

    @precondition(lambda self: not self.workers["b"].model.stopped and self.t >= T0 + 4)
    @rule()
    def crash_b(self) -> None:
        w = self.workers["b"]
        self.observe(w)
        w.model.crash()
        for rid, u in w.last.items():
            if u.state == "started":  # gone without a word
                w.last[rid] = Update(rid, "lost", self.t, u.generated_tokens)
        w.pending.clear()

    # --- what always holds ---

    @invariant()
    def slots_queue_and_cache_stay_within_bounds(self) -> None:
        for w in self.workers.values():
            m = w.model
            assert m.active <= m.max_batch
            assert m.queued <= m.max_queued
            assert m.queued == 0 or m.active == m.max_batch, "a request waits while a slot is free"
            assert m.kv_blocks_used <= m.cache_blocks

    @invariant()
    def every_request_admitted_is_here_or_has_left_once(self) -> None:
        for w in self.workers.values():
            m = w.model
            assert m.started == m.completed + m.moved_out + m.lost + m.active + m.queued
            here = {r.request_id for r in m.inflight()}
            assert here == {rid for rid, u in w.last.items() if u.state == "started"}
            for rid in here:
                assert m.phase_of(rid) in ("queued", "prefill", "decode", "paused")

    @invariant()
    def tokens_never_go_backwards_and_never_pass_the_output(self) -> None:
        for w in self.workers.values():
            for r in w.model.inflight():
                assert r.generated_tokens >= w.tokens.get(r.request_id, 0), "tokens went backwards"
                assert r.expected_remaining_tokens >= 0, "more tokens than the output"
                w.tokens[r.request_id] = r.generated_tokens

    @invariant()
    def nothing_runs_past_the_hard_stop(self) -> None:
        w = self.workers["a"]
        if w.deadline is not None and self.t >= w.deadline:
            assert w.model.stopped
            assert w.model.now == w.deadline
            assert all(t <= w.deadline for t in w.model.completions.values())

    def teardown(self) -> None:
        if not self.workers:
            return
        self.advance(1e5)  # far enough for every request and every transfer to end
        for w in self.workers.values():
            assert (w.model.active, w.model.queued, w.model.transfers_in_progress) == (0, 0, 0)
            assert not w.pending, "a transfer never answered"
            assert all(u.state != "started" for u in w.last.values()), "a request never ended"


WorkerModelMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_what_always_holds = WorkerModelMachine.TestCase


@given(
    st.lists(
        st.tuples(st.sampled_from([0.0, 0.1, 0.5, 1.3]), st.integers(1, 700), st.integers(0, 30)),
        min_size=1,
        max_size=12,
    ),
    st.sampled_from([0.01, 0.07, 0.25]),
)
def test_completion_times_do_not_depend_on_how_often_the_model_is_advanced(
    arrivals: list[tuple[float, int, int]], step: float
) -> None:
    coarse, fine = worker(max_queued=20), worker(max_queued=20)
    t = T0
    for i, (gap, prompt, output) in enumerate(arrivals):
        t += gap
        while fine.now + step < t:
            fine.advance_to(fine.now + step)
        for m in (coarse, fine):
            m.advance_to(t)
            m.submit(f"r{i}", prompt, output, ["p", f"q{i % 3}"])
    end = t + 100
    while fine.now < end:
        fine.advance_to(min(end, fine.now + step))
    coarse.advance_to(end)
    assert coarse.completions.keys() == fine.completions.keys() == {f"r{i}" for i in range(len(arrivals))}
    for r, done_at in coarse.completions.items():
        assert fine.completions[r] == pytest.approx(done_at, abs=1e-6)
