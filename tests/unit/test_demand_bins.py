"""Demand bins, read as a specification: which bin a report lands in, when a bin closes, what a late report
does, what a closed bin says, and what the current demand is."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.core.demand import Demand
from agent.core.demand_bins import ClosedBin, DemandBins

BIN = 60.0
DELAY = 10.0
STALE = 30.0


def minute_bins(close_delay_s: float = DELAY, stale_after_s: float = STALE) -> DemandBins:
    return DemandBins(bin_seconds=BIN, close_delay_s=close_delay_s, stale_after_s=stale_after_s)


def report(
    bins: DemandBins,
    t: float,
    requests: int = 10,
    worker: str = "w1",
    *,
    interval_s: float = 5.0,
    prompt_tokens: int = 0,
    output_tokens: int = 0,
    in_flight: int = 0,
    queued: int = 0,
) -> bool:
    return bins.add(worker, t, interval_s, requests, prompt_tokens, output_tokens, in_flight, queued)


def closed_bin(**fields: float) -> ClosedBin:
    values: dict[str, float] = {
        "start": 0.0,
        "seconds": 60.0,
        "requests": 0.0,
        "prompt_tokens": 0.0,
        "output_tokens": 0.0,
        "workers": 0,
        "reports": 0,
        "in_flight": 0,
        "queued": 0,
    }
    values.update(fields)
    return ClosedBin(**values)  # type: ignore[arg-type]


# --- construction ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bin_seconds", "close_delay_s", "stale_after_s"),
    [(0.0, 1.0, 1.0), (-60.0, 1.0, 1.0), (60.0, -1.0, 1.0), (60.0, 1.0, 0.0), (float("nan"), 1.0, 1.0)],
)
def test_bin_length_delay_and_staleness_must_make_sense(
    bin_seconds: float, close_delay_s: float, stale_after_s: float
) -> None:
    with pytest.raises(ValueError, match="bin_seconds"):
        DemandBins(bin_seconds, close_delay_s, stale_after_s)


def test_a_close_delay_of_zero_is_allowed() -> None:
    assert DemandBins(60.0, 0.0, 30.0).close_delay_s == 0.0


# --- binning -----------------------------------------------------------------------------------------


def test_reports_are_summed_into_the_bin_of_their_end_time() -> None:
    bins = minute_bins()
    # [60, 120) is one bin: its first instant belongs to it, its end belongs to the next one.
    report(bins, 60.0, 1, prompt_tokens=100, output_tokens=10)
    report(bins, 119.9, 2, prompt_tokens=200, output_tokens=20)
    report(bins, 120.0, 4, prompt_tokens=400, output_tokens=40)

    closed = bins.close_due(10_000.0)

    assert [(b.start, b.requests, b.prompt_tokens, b.output_tokens) for b in closed] == [
        (60.0, 3.0, 300.0, 30.0),
        (120.0, 4.0, 400.0, 40.0),
    ]
    assert all(b.seconds == BIN for b in closed)


def test_a_bin_closes_close_delay_after_it_ends_not_before() -> None:
    bins = minute_bins()
    report(bins, 90.0)

    assert bins.close_due(120.0 + DELAY - 0.001) == []  # ended, but stragglers may still come
    [closed] = bins.close_due(120.0 + DELAY)
    assert closed.start == 60.0
    assert bins.close_due(120.0 + DELAY) == []  # a bin closes once


def test_due_bins_close_oldest_first() -> None:
    bins = minute_bins()
    for t in (250.0, 10.0, 130.0, 70.0):
        report(bins, t)

    assert [b.start for b in bins.close_due(1_000.0)] == [0.0, 60.0, 120.0, 240.0]


def test_a_bin_with_no_report_produces_nothing() -> None:
    bins = minute_bins()
    report(bins, 10.0)
    report(bins, 250.0)

    assert [b.start for b in bins.close_due(1_000.0)] == [0.0, 240.0]


def test_an_on_time_report_is_not_late() -> None:
    bins = minute_bins()
    report(bins, 30.0)
    bins.close_due(60.0 + DELAY)  # closes [0, 60)

    # A straggler for [60, 120) is on time until that bin closes, however old it is compared with now.
    assert report(bins, 61.0) is False
    assert report(bins, 119.0) is False


# --- late reports ------------------------------------------------------------------------------------


def test_a_late_report_counts_in_the_earliest_open_bin_and_add_says_so() -> None:
    bins = minute_bins()
    report(bins, 30.0, 5)
    [first] = bins.close_due(60.0 + DELAY)
    assert first.requests == 5.0

    # [0, 60) has closed: its requests are shifted into [60, 120), which nobody has reported in yet.
    assert report(bins, 45.0, 7, prompt_tokens=70) is True
    assert report(bins, 100.0, 1) is False

    [second] = bins.close_due(10_000.0)
    assert second.start == 60.0
    assert second.requests == 8.0
    assert second.prompt_tokens == 70.0
    assert second.reports == 2


def test_a_very_late_report_is_not_lost_and_goes_to_the_first_bin_after_everything_closed() -> None:
    bins = minute_bins()
    report(bins, 30.0)
    bins.close_due(600.0)  # closes every bin that started at or before 530: up to [480, 540)

    assert report(bins, 5.0, 3) is True

    [closed] = bins.close_due(10_000.0)
    assert (closed.start, closed.requests) == (540.0, 3.0)


def test_with_a_fractional_bin_length_a_late_report_joins_the_open_bin_rather_than_a_bin_of_its_own() -> None:
    # 0.1 s bins: 5 × 0.1 + 0.1 and 6 × 0.1 are different floats, so the first open bin must be computed the
    # same way as the bin of a report, or one interval would close as two bins (halving its rate).
    bins = DemandBins(bin_seconds=0.1, close_delay_s=0.0, stale_after_s=30.0)
    report(bins, 0.51, 1)
    assert len(bins.close_due(0.6 + 1e-9)) == 1  # closes [0.5, 0.6)

    assert report(bins, 0.65, 2) is False
    assert report(bins, 0.55, 4) is True

    [closed] = bins.close_due(10.0)
    assert closed.requests == 6.0
    assert closed.reports == 2


# --- closed bins -------------------------------------------------------------------------------------


def test_a_closed_bins_rates_are_per_second_of_the_bin() -> None:
    closed = closed_bin(seconds=60.0, requests=120.0, prompt_tokens=24_000.0, output_tokens=6_000.0)

    assert closed.rps == 2.0
    assert closed.tokens_per_s == 500.0


def test_a_closed_bins_token_means_are_per_request() -> None:
    closed = closed_bin(requests=120.0, prompt_tokens=24_000.0, output_tokens=6_000.0)

    assert closed.prompt_mean == 200.0
    assert closed.output_mean == 50.0


def test_a_bin_without_requests_has_zero_token_means_not_a_division_error() -> None:
    closed = closed_bin(requests=0.0, prompt_tokens=0.0, output_tokens=0.0)

    assert (closed.rps, closed.tokens_per_s, closed.prompt_mean, closed.output_mean) == (0.0, 0.0, 0.0, 0.0)


def test_a_closed_bin_counts_its_workers_and_reports() -> None:
    bins = minute_bins()
    for worker in ("a", "b", "a", "c", "a"):
        report(bins, 70.0, worker=worker)

    [closed] = bins.close_due(10_000.0)

    assert (closed.workers, closed.reports) == (3, 5)


def test_gauges_are_each_workers_latest_summed_over_workers() -> None:
    bins = minute_bins()
    # Gauges are states, not counts: a worker's in-flight requests are not added up over its reports.
    report(bins, 65.0, worker="a", in_flight=3, queued=1)
    report(bins, 70.0, worker="a", in_flight=5, queued=2)
    report(bins, 68.0, worker="b", in_flight=2, queued=0)

    [closed] = bins.close_due(10_000.0)

    assert (closed.in_flight, closed.queued) == (5 + 2, 2 + 0)


def test_gauges_follow_report_time_not_arrival_order() -> None:
    bins = minute_bins()
    # Reports may arrive out of order; the gauge at the bin's end is the one reported last in time.
    report(bins, 110.0, worker="a", in_flight=9, queued=4)
    report(bins, 65.0, worker="a", in_flight=1, queued=0)

    [closed] = bins.close_due(10_000.0)

    assert (closed.in_flight, closed.queued) == (9, 4)


def test_a_late_report_does_not_overwrite_the_gauges_of_an_on_time_one() -> None:
    bins = minute_bins()
    report(bins, 30.0, worker="a")
    bins.close_due(60.0 + DELAY)
    report(bins, 90.0, worker="a", in_flight=6, queued=3)

    assert report(bins, 50.0, worker="a", in_flight=1, queued=1) is True

    [closed] = bins.close_due(10_000.0)
    assert (closed.in_flight, closed.queued, closed.workers) == (6, 3, 1)


# --- current demand ----------------------------------------------------------------------------------


def test_current_demand_sums_each_workers_latest_rate() -> None:
    bins = minute_bins()
    report(bins, 100.0, 50, worker="a", interval_s=5.0)  # 10 rps, superseded below
    report(bins, 105.0, 20, worker="a", interval_s=5.0)  # 4 rps
    report(bins, 104.0, 30, worker="b", interval_s=10.0)  # 3 rps

    current = bins.current(106.0)

    assert current is not None
    assert current.rps == pytest.approx(4.0 + 3.0)


def test_an_older_report_arriving_after_a_newer_one_does_not_replace_the_workers_rate() -> None:
    bins = minute_bins()
    report(bins, 105.0, 20, worker="a", interval_s=5.0)  # 4 rps
    report(bins, 100.0, 50, worker="a", interval_s=5.0)  # 10 rps, but older

    current = bins.current(106.0)

    assert current is not None
    assert current.rps == pytest.approx(4.0)


def test_current_demand_ignores_workers_silent_longer_than_stale_after() -> None:
    bins = minute_bins(stale_after_s=STALE)
    report(bins, 100.0, 50, worker="quiet", interval_s=5.0)  # 10 rps, then nothing
    report(bins, 125.0, 10, worker="busy", interval_s=5.0)  # 2 rps

    at_the_limit = bins.current(100.0 + STALE)
    past_it = bins.current(100.0 + STALE + 0.001)

    assert at_the_limit is not None
    assert at_the_limit.rps == pytest.approx(12.0)
    assert past_it is not None
    assert past_it.rps == pytest.approx(2.0)


def test_current_demand_is_none_when_no_worker_is_fresh() -> None:
    bins = minute_bins()
    assert bins.current(0.0) is None  # nobody ever reported

    report(bins, 100.0)
    assert bins.current(100.0 + STALE + 1.0) is None


def test_fresh_workers_that_served_nothing_give_zero_demand_not_none() -> None:
    bins = minute_bins()
    report(bins, 100.0, 0, worker="a")
    report(bins, 100.0, 0, worker="b")

    assert bins.current(101.0) == Demand(0.0, 0.0, 0.0)


def test_the_current_token_mix_is_weighted_by_each_workers_rate() -> None:
    bins = minute_bins()
    # a: 1 rps at 1000 prompt / 100 output tokens; b: 3 rps at 200 / 20.
    report(bins, 100.0, 5, worker="a", interval_s=5.0, prompt_tokens=5 * 1000, output_tokens=5 * 100)
    report(bins, 100.0, 30, worker="b", interval_s=10.0, prompt_tokens=30 * 200, output_tokens=30 * 20)

    current = bins.current(100.0)

    assert current is not None
    assert current.rps == pytest.approx(4.0)
    assert current.prompt_tokens == pytest.approx((1 * 1000 + 3 * 200) / 4)
    assert current.output_tokens == pytest.approx((1 * 100 + 3 * 20) / 4)


def test_closing_bins_forgets_stale_workers() -> None:
    bins = minute_bins()
    report(bins, 100.0, worker="a")
    report(bins, 120.0, worker="b")
    assert bins.workers == 2

    bins.close_due(100.0 + STALE + 1.0)

    assert bins.workers == 1
    assert bins.current(100.0 + STALE + 1.0) is not None


# --- properties --------------------------------------------------------------------------------------

BIN_LENGTHS = st.sampled_from([0.1, 0.3, 1.0, 2.5, 7.3, 60.0])
# Times are drawn in bins (then multiplied by the bin length) so that reports and closes meet in a few bins,
# often right at a bin's edges.
IN_BINS = st.builds(
    lambda k, frac: k + frac,
    st.integers(0, 12),
    st.one_of(st.sampled_from([0.0, 0.001, 0.5, 0.999]), st.floats(0.0, 1.0, exclude_max=True)),
)
ADD = st.tuples(st.just("add"), st.sampled_from(["a", "b", "c"]), IN_BINS, st.integers(0, 1_000))
CLOSE = st.tuples(st.just("close"), st.just(""), IN_BINS, st.just(0))
OPERATIONS = st.lists(st.one_of(ADD, CLOSE), max_size=60)
Operation = tuple[str, str, float, int]


@given(bin_seconds=BIN_LENGTHS, close_delay_s=st.sampled_from([0.0, 1.0, 15.0]), operations=OPERATIONS)
def test_no_request_is_lost_however_late_it_arrives(
    bin_seconds: float, close_delay_s: float, operations: list[Operation]
) -> None:
    bins = DemandBins(bin_seconds, close_delay_s, stale_after_s=30.0)
    added = 0
    closed: list[ClosedBin] = []
    for op, worker, at, requests in operations:
        if op == "add":
            bins.add(worker, at * bin_seconds, 5.0, requests, 2 * requests, requests)
            added += requests
        else:
            closed += bins.close_due(at * bin_seconds)
    still_open = bins.close_due(1e9)  # closes every bin still open

    total = closed + still_open
    assert sum(b.requests for b in total) == added
    assert sum(b.prompt_tokens for b in total) == 2 * added
    assert sum(b.output_tokens for b in total) == added
    assert sum(b.reports for b in total) == sum(op == "add" for op, *_ in operations)


@given(bin_seconds=BIN_LENGTHS, operations=OPERATIONS)
def test_each_interval_closes_at_most_once_and_in_order(
    bin_seconds: float, operations: list[Operation]
) -> None:
    bins = DemandBins(bin_seconds, close_delay_s=0.0, stale_after_s=30.0)
    closed: list[ClosedBin] = []
    for op, worker, at, requests in operations:
        if op == "add":
            bins.add(worker, at * bin_seconds, 5.0, requests, 0, 0)
        else:
            closed += bins.close_due(at * bin_seconds)
    closed += bins.close_due(1e9)

    starts = [b.start for b in closed]
    # Consecutive closed bins are whole bins apart: never two bins for (almost) the same interval.
    assert all(later - earlier > bin_seconds / 2 for earlier, later in itertools.pairwise(starts))


@given(bin_seconds=BIN_LENGTHS, operations=OPERATIONS)
def test_a_report_is_late_exactly_when_its_bin_was_already_due(
    bin_seconds: float, operations: list[Operation]
) -> None:
    bins = DemandBins(bin_seconds, close_delay_s=0.0, stale_after_s=30.0)
    latest_close = -math.inf
    for op, worker, at, requests in operations:
        t = at * bin_seconds
        if op == "close":
            bins.close_due(t)
            latest_close = max(latest_close, t)
            continue
        bin_end = (math.floor(t / bin_seconds) + 1) * bin_seconds
        late = bins.add(worker, t, 5.0, requests, 0, 0)
        if abs(bin_end - latest_close) > 1e-6 * bin_seconds:  # away from float ties at the boundary
            assert late == (bin_end <= latest_close)


# --- bounded whatever ids a client invents --------------------------------------------------------------


def test_made_up_worker_ids_keep_the_latest_reports_bounded_and_the_real_workers_counted() -> None:
    bins = DemandBins(bin_seconds=300.0, close_delay_s=0.0, stale_after_s=60.0, max_sources=1_000)
    for t in (0.0, 5.0):
        for real in ("w0", "w1"):
            bins.add(real, t, 5.0, 10, 1_000, 100)
    for n in range(50_000):  # an old flood, then a fresh one
        bins.add(f"made-up-{n}", 1.0 if n < 25_000 else 5.0, 5.0, 1, 1, 1)

    assert bins.workers <= 1_000
    assert bins.evicted >= 49_000
    # The bin's gauges are bounded too; its sums still count every report.
    [closed] = bins.close_due(301.0)
    assert closed.reports == 50_004
    assert closed.workers <= 1_000


def test_the_latest_reports_prune_the_stale_before_any_fresh_one() -> None:
    bins = DemandBins(bin_seconds=60.0, close_delay_s=0.0, stale_after_s=10.0, max_sources=4)
    for n in range(4):
        bins.add(f"old-{n}", 0.0, 5.0, 1, 1, 1)
    bins.add("real", 100.0, 5.0, 10, 1_000, 100)  # the fifth: the four stale ones go

    assert bins.sources(100.0) == ["real"]
    assert bins.evicted == 4
    assert bins.current(100.0).rps == pytest.approx(2.0)
