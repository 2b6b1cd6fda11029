"""The notice gate: a minute's worth of notices at once, the rest held one per instance and released at
the rate, the earliest deadline first; a full queue drops the newcomer."""

from __future__ import annotations

import pytest

from agent.core.notice_gate import NoticeGate


def test_a_burst_up_to_the_rate_passes_at_once_and_the_rest_is_held() -> None:
    gate: NoticeGate[str] = NoticeGate(per_minute=3, max_held=10, started=0.0)
    assert [gate.admit(0.0, f"i{k}", 100.0, f"n{k}") for k in range(5)] == [
        "now",
        "now",
        "now",
        "held",
        "held",
    ]
    assert gate.held == 2
    assert gate.release(0.0) == []


def test_held_notices_are_released_at_the_rate_the_earliest_deadline_first() -> None:
    gate: NoticeGate[str] = NoticeGate(per_minute=60, max_held=10, started=0.0)
    for k in range(60):
        gate.admit(0.0, f"burst{k}", 100.0, "burst")
    gate.admit(0.0, "late", 90.0, "late deadline 90")
    gate.admit(0.0, "early", 30.0, "early deadline 30")
    assert gate.release(1.0) == ["early deadline 30"]  # one token a second
    assert gate.release(2.0) == ["late deadline 90"]
    assert gate.held == 0


def test_once_the_queue_is_empty_new_notices_pass_again_while_tokens_last() -> None:
    gate: NoticeGate[str] = NoticeGate(per_minute=1, max_held=10, started=0.0)
    assert gate.admit(0.0, "a", 10.0, "a") == "now"
    assert gate.admit(0.0, "b", 10.0, "b") == "held"
    assert gate.admit(30.0, "c", 10.0, "c") == "held"  # b waits first: nothing jumps the queue
    assert gate.release(60.0) == ["b"]
    assert gate.release(120.0) == ["c"]
    assert gate.admit(180.0, "d", 10.0, "d") == "now"


def test_one_notice_per_instance_is_held_and_a_full_queue_drops_the_newcomer() -> None:
    gate: NoticeGate[str] = NoticeGate(per_minute=1, max_held=2, started=0.0)
    gate.admit(0.0, "a", 10.0, "a")
    assert gate.admit(0.0, "b", 10.0, "b") == "held"
    assert gate.admit(0.0, "b", 10.0, "b again") == "repeat"
    assert gate.admit(0.0, "c", 10.0, "c") == "held"
    assert gate.admit(0.0, "d", 10.0, "d") == "dropped"
    assert gate.held == 2


def test_a_clock_stepped_back_refills_nothing() -> None:
    gate: NoticeGate[str] = NoticeGate(per_minute=1, max_held=2, started=100.0)
    gate.admit(100.0, "a", 200.0, "a")
    assert gate.admit(0.0, "b", 200.0, "b") == "held"
    assert gate.release(50.0) == []


@pytest.mark.parametrize(("per_minute", "max_held"), [(0, 1), (1, 0), (float("nan"), 1)])
def test_a_gate_without_a_rate_or_room_is_refused(per_minute: float, max_held: int) -> None:
    with pytest.raises(ValueError, match="per_minute"):
        NoticeGate(per_minute=per_minute, max_held=max_held, started=0.0)
