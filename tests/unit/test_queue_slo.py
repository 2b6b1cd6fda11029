"""The queue score (agent.core.queue_slo): a fluid FIFO server at each step's capacity, waits per token."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.queue_slo import QueueScore, queue_score

STEP_S = 60.0


def score(arrivals: list[float], capacity: list[float], delay_s: float, **kwargs: int) -> QueueScore:
    return queue_score(np.array(arrivals), np.array(capacity), STEP_S, delay_s, **kwargs)


def test_no_queue_forms_when_capacity_covers_arrivals_at_every_step() -> None:
    result = score([100.0, 500.0, 0.0, 900.0], [100.0, 600.0, 10.0, 900.0], delay_s=1)

    assert result.served_within == 1.0
    assert result.p99_delay_s == 0.0
    assert result.max_backlog_s == 0.0
    assert result.delay_s == 1


def test_no_arrivals_count_as_all_served() -> None:
    result = score([0.0, 0.0], [0.0, 5.0], delay_s=60)

    assert result.served_within == 1.0
    assert result.p99_delay_s == 0.0


@pytest.mark.parametrize("substeps", [12, 60])
def test_a_minute_at_twice_the_capacity_then_ample_capacity_gives_the_analytic_share_and_wait(
    substeps: int,
) -> None:
    # Arrivals 2000, 1000, 1000 tokens/s; capacity 1000, 2000, 2000 (minutes [0,60), [60,120), [120,180)).
    # Minute 1: the backlog grows at 1000/s, Q(a) = 1000 a, Q(60) = 60,000 (60 s of that minute's capacity).
    #   Work arriving at a ≤ 30 is served before 60 (capacity left in the minute 1000 (60 - a) ≥ 1000 a):
    #   wait a. At a > 30, 1000 (2a - 60) is left at 60 and drains at 2000/s: done at 60 + a - 30, wait 30.
    # Minute 2: the backlog drains at 1000/s, Q(60 + s) = 60,000 - 1000 s, wait Q / 2000 = 30 - s/2;
    #   it is empty at 120. Minute 3: no wait.
    # Within 20 s: a ∈ [0, 20] of minute 1 (40,000 tokens), s ∈ [20, 60] of minute 2 (40,000) and all of
    # minute 3 (60,000): 140,000 of 240,000 = 7/12. The top 1% (2,400 tokens) all wait 30 s: p99 = 30 s.
    result = score([2000.0, 1000.0, 1000.0], [1000.0, 2000.0, 2000.0], delay_s=20, substeps=substeps)

    assert result.served_within == pytest.approx(7 / 12)
    assert result.p99_delay_s == pytest.approx(30.0)
    assert result.max_backlog_s == pytest.approx(60.0)


def test_no_capacity_until_the_trace_ends_serves_nothing_and_waits_forever() -> None:
    result = score([10.0, 10.0, 10.0], [0.0, 0.0, 0.0], delay_s=3600)

    assert result.served_within == 0.0
    assert result.p99_delay_s == math.inf
    assert result.max_backlog_s == math.inf


def test_work_still_queued_when_the_trace_ends_waits_forever() -> None:
    # 1 token/s for two minutes; no capacity in the first, 0.5/s in the second. The second minute serves 30
    # tokens, those that arrived in [0, 30] (finished at 60 + 2a, a wait of 60 + a ≤ 90); the other 90
    # never are. Within 100 s: 30 of 120 tokens.
    result = score([1.0, 1.0], [0.0, 0.5], delay_s=100)

    assert result.served_within == pytest.approx(0.25)
    assert result.p99_delay_s == math.inf


def test_a_backlog_that_drains_within_the_delay_counts_as_served_within() -> None:
    # Arrivals 1500, 1000 tokens/s against 1000, 2000: a backlog of 30,000 at 60 s. Work arriving at a ≤ 40
    # waits a/2, later work 30 - a/4: at most 20 s. The 1% of tokens (1,500) waiting longest wait more than
    # x for a ∈ (2x, 120 - 4x), 1500 (120 - 6x) tokens: p99 = 119/6 s, to within the 5 s grid's resolution
    # of arrival times (here a wait changes by at most 1.25 s across half a sub-step).
    arrivals, capacity = [1500.0, 1000.0], [1000.0, 2000.0]

    drained = score(arrivals, capacity, delay_s=30)
    tighter = score(arrivals, capacity, delay_s=10)

    assert drained.served_within == 1.0
    assert 0 < drained.p99_delay_s <= 20.0
    assert drained.p99_delay_s == pytest.approx(119 / 6, abs=1.25)
    assert tighter.served_within < 1.0


def test_a_minute_without_capacity_while_work_is_queued_is_an_infinite_backlog_in_seconds() -> None:
    result = score([10.0, 10.0, 0.0], [0.0, 0.0, 100.0], delay_s=600)

    assert result.max_backlog_s == math.inf
    assert result.served_within == 1.0  # all served by the end of the third minute, within 180 s


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.integers(0, 100), st.integers(0, 100), st.integers(0, 100)), min_size=1, max_size=24
    ),
    delay_s=st.integers(1, 600),
)
def test_more_capacity_never_lowers_the_share_served_within_the_delay(
    steps: list[tuple[int, int, int]], delay_s: int
) -> None:
    # Whole numbers keep the cumulative sums exact: a wait landing exactly on the delay rounds alike.
    arrivals = [float(a) for a, _, _ in steps]
    capacity = [float(c) for _, c, _ in steps]
    more = [float(c + extra) for _, c, extra in steps]

    base, bigger = score(arrivals, capacity, delay_s), score(arrivals, more, delay_s)

    assert bigger.served_within >= base.served_within
    assert bigger.p99_delay_s <= base.p99_delay_s


@pytest.mark.parametrize(
    ("arrivals", "capacity", "step_s", "delay_s", "message"),
    [
        ([1.0, 2.0], [1.0], 60.0, 60.0, "same length"),
        ([-1.0], [1.0], 60.0, 60.0, "finite and ≥ 0"),
        ([1.0], [math.nan], 60.0, 60.0, "finite and ≥ 0"),
        ([1.0], [1.0], 0.0, 60.0, "step_s must be > 0"),
        ([1.0], [1.0], 60.0, -1.0, "delay_s ≥ 0"),
    ],
)
def test_inputs_that_are_no_trace_are_refused(
    arrivals: list[float], capacity: list[float], step_s: float, delay_s: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        queue_score(np.array(arrivals), np.array(capacity), step_s, delay_s)
