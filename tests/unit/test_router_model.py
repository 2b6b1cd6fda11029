"""The router emulator's book, driven directly: which worker is next, which updates count, what a requeue
or a lost worker takes back; and, under random updates, commands and submit answers, what always holds."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.sim.router_model import Answered, Refused, Reply, RouterModel, Taken

T0 = 1_700_000_000.0


def book(*workers: str) -> RouterModel:
    model = RouterModel(recent_prefixes=4)
    for w in workers:
        model.add_worker(w)
    return model


def place(model: RouterModel, request_id: str, prefix: tuple[str, ...] = (), at: float = T0) -> str | None:
    """Admit and dispatch one request, every submit accepted; the worker it went to."""
    rec, _ = model.admit(request_id, 64, 16, prefix, at)
    worker = model.start_dispatch(rec, set())
    if worker is not None:
        assert model.answered(rec, worker, accepted=True, silent=False, tried=set()) == Answered(False, False)
    return worker


def test_the_model_loads_no_event_loop_messaging_or_logging() -> None:
    code = "import sys, json, agent.sim.router_model; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert {name.split(".")[0] for name in json.loads(out)}.isdisjoint({"asyncio", "nats", "structlog"})


def test_the_least_loaded_worker_is_next_then_the_one_sharing_a_prefix_then_the_first_known() -> None:
    model = book("w1", "w2", "w3")
    assert [place(model, r, p) for r, p in [("r1", ("p", "q")), ("r2", ("x",)), ("r3", ("y",))]] == [
        "w1",
        "w2",
        "w3",
    ]
    assert place(model, "r4", ("p", "q", "z")) == "w1"  # all hold one: w1 served its prefix
    assert place(model, "r5") == "w2"
    assert model.stop_routing("w3") == Reply("stop_routing", ok=True)
    assert place(model, "r6") == "w1"  # w3 holds the fewest but is not routed to
    assert [model.load(w) for w in ("w1", "w2", "w3")] == [3, 2, 1]


def test_a_submit_without_an_answer_abandons_that_worker_for_that_request_and_cancels_there() -> None:
    model = book("w1", "w2")
    rec, new = model.admit("r1", 64, 16, (), T0)
    assert new
    tried: set[str] = set()
    assert model.start_dispatch(rec, tried) == "w1"
    model.no_answer_from("w1")
    assert model.answered(rec, "w1", accepted=False, silent=True, tried=tried) == Answered(
        cancel=True, retry=True
    )
    model.retry(rec)
    assert model.start_dispatch(rec, tried) == "w2"
    assert (rec.abandoned, rec.dispatches, model.routable("w1")) == ({"w1"}, 2, False)
    assert model.metrics_from("w1") is False  # back, but nothing waits
    assert model.routable("w1")


def test_an_accepted_submit_for_a_request_placed_meanwhile_elsewhere_is_cancelled_there() -> None:
    model = book("w1", "w2")
    rec, _ = model.admit("r1", 64, 16, (), T0)
    assert model.start_dispatch(rec, set()) == "w1"
    model.update("r1", "w2", "started", 0, T0)  # a migration put it on w2 before w1 answered
    assert model.answered(rec, "w1", accepted=True, silent=False, tried=set()) == Answered(
        cancel=True, retry=False
    )
    assert (rec.owner, rec.abandoned, model.dispatched) == ("w2", {"w1"}, 1)


def test_only_the_holder_ends_a_request_and_it_is_counted_once() -> None:
    model = book("w1", "w2")
    place(model, "r1")
    model.update("r1", "w2", "done", 16, T0 + 1)  # not the holder
    model.update("r1", "w1", "done", 16, T0 + 2)
    model.update("r1", "w1", "lost", 16, T0 + 3)  # already done
    model.update("r1", "w2", "started", 0, T0 + 4)  # a late copy: terminal is final
    rec = model.requests["r1"]
    assert (rec.state, rec.finished_at, model.completed, model.lost, model.updates_ignored) == (
        "completed",
        T0 + 2,
        1,
        0,
        3,
    )
    assert "w1" in model.stopped  # a `lost` update means that worker died


def test_requeue_takes_a_request_back_once_and_says_where_to_cancel() -> None:
    model = book("w1", "w2")
    place(model, "r1")
    taken = model.requeue("r1", "w1", generated_tokens=8)
    assert taken == Taken(Reply("requeue", ok=True, requests=1, detail="taken from w1"), "w1", dispatch=True)
    assert model.requeue("r1", "w1", generated_tokens=8) == Taken(taken.reply)  # a repeat does nothing
    rec = model.requests["r1"]
    assert (rec.state, rec.already_generated, [r.request_id for r in model.waiting()]) == (
        "waiting",
        8,
        ["r1"],
    )
    assert model.admit("r1", 64, 16, (), T0) == (rec, False)  # admitting again changes nothing
    assert model.start_dispatch(rec, set()) == "w2"
    with pytest.raises(Refused, match="never admitted"):
        model.requeue("nope", "w1", 0)


def test_a_lost_worker_gives_back_everything_it_held_to_be_served_from_the_prompt() -> None:
    model = book("w1", "w2")
    for i, r in enumerate(("r1", "r2", "r3")):
        place(model, r, at=T0 + i)
    model.requests["r1"].already_generated = 5
    taken = model.worker_lost("w1")
    assert taken == Taken(Reply("worker_lost", ok=True, requests=2), dispatch=True)
    assert model.worker_lost("w1") == Taken(taken.reply)
    # In admission order.
    assert [(r.request_id, r.already_generated) for r in model.waiting()] == [("r1", 0), ("r3", 0)]
    assert not model.routable("w1")


KINDS = ("admit", "dispatch", "update", "update_from_owner", "requeue", "worker_lost", "metrics")
# One op: its kind, the request, a worker, a state for an update, the answer to a submit.
OPS = st.lists(
    st.tuples(
        st.sampled_from(KINDS),
        st.integers(0, 1),
        st.sampled_from(["w1", "w2", "w3"]),
        st.sampled_from(["started", "done", "moved_out", "lost"]),
        st.sampled_from(["accepted", "refused", "silent"]),
    ),
    min_size=10,
    max_size=80,
)


def apply(model: RouterModel, op: tuple[str, int, str, str, str]) -> None:
    kind, n, worker, state, answer = op
    rid = f"r{n}"
    rec = model.requests.get(rid)
    if kind == "admit":
        model.admit(rid, 64, 16, (), T0)
    elif kind == "dispatch" and rec is not None and rec.state == "waiting":
        to = model.start_dispatch(rec, set())
        if to is not None:
            accepted, silent = answer == "accepted", answer == "silent"
            if model.answered(rec, to, accepted=accepted, silent=silent, tried=set()).retry:
                model.retry(rec)
    elif kind == "update":
        model.update(rid, worker, state, 3, T0)  # type: ignore[arg-type]
    elif kind == "update_from_owner" and rec is not None and rec.owner is not None:
        model.update(rid, rec.owner, state, 3, T0)  # type: ignore[arg-type]
    elif kind == "requeue":
        try:
            model.requeue(rid, worker, 3)
        except Refused:
            assert rec is None
    elif kind == "worker_lost":
        model.worker_lost(worker)
    elif kind == "metrics":
        model.metrics_from(worker)


@settings(max_examples=300)
@given(OPS)
def test_whatever_arrives_every_request_is_held_once_and_ends_at_most_once(
    ops: list[tuple[str, int, str, str, str]],
) -> None:
    model = book("w1", "w2", "w3")
    ended: dict[str, str] = {}
    for op in ops:
        holders = {rid: rec.holder for rid, rec in model.requests.items()}
        apply(model, op)
        for rid, rec in model.requests.items():
            if rid in ended:
                assert rec.state == ended[rid], "a terminal state changed"
            elif rec.terminal:
                ended[rid] = rec.state
                kind, _, worker, _, _ = op
                by = rec.owner if kind == "update_from_owner" else worker
                assert kind.startswith("update"), "ended without a word from a worker"
                assert by == holders[rid], "ended by someone else's word"
        assert model.completed + model.lost == len(ended) <= model.admitted == len(model.requests)
        held = [r for r in model.requests.values() if r.state in ("dispatching", "running")]
        assert sum(model.load(w) for w in model.workers) == len(held), "a request held twice or not at all"
        assert all(r.holder is not None and r.holder not in r.abandoned for r in held if r.state == "running")
        assert {r.request_id for r in model.waiting()} == {
            rid for rid, r in model.requests.items() if r.state == "waiting"
        }
