"""A Dynamo frontend's /metrics, read as a specification: what a real scrape says, the demand between two
scrapes, a restarted frontend, several frontends, and text that must be refused without a crash.

The samples are real: ``tests/data/dynamo/frontend-metrics.txt`` is Dynamo 1.6.1's frontend after six
streaming chat requests, ``frontend-metrics-migrated.txt`` the same frontend after four long streams more,
two of which it migrated when their worker was SIGKILLed (``regenerate.py`` there writes both, and
``samples.json`` says what was sent).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.providers.dynamo.frontend_metrics import (
    MAX_REQUESTS,
    FrontendDemand,
    FrontendMetricsError,
    FrontendSnapshot,
    Histogram,
    demand_between,
    parse_frontend_metrics,
    quantile,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "dynamo"
AFTER_SIX = (DATA / "frontend-metrics.txt").read_text(encoding="utf-8")
AFTER_MIGRATION = (DATA / "frontend-metrics-migrated.txt").read_text(encoding="utf-8")
SENT = json.loads((DATA / "samples.json").read_text(encoding="utf-8"))
FIRST, SECOND = SENT["frontend-metrics.txt"], SENT["frontend-metrics-migrated.txt"]
LONG_STREAMS = SECOND["requests"] - FIRST["requests"]

STARTED = (
    'dynamo_frontend_requests_started_total{endpoint="chat_completions",model="tiny",request_type="stream"} 6'
)

# A frontend that has served nothing yet exposes no request series at all (measured: not even the
# in-flight gauge); the empty text is what its request metrics amount to.
FRESH = ""


def snapshot(text: str, at: float) -> FrontendSnapshot:
    return parse_frontend_metrics(text, at=at)


def is_within_its_bounds(demand: FrontendDemand) -> bool:
    """Every field within its declared range: what msgspec checks when the demand is decoded."""
    msgspec.convert(msgspec.to_builtins(demand), FrontendDemand)
    return True


# -- one scrape -----------------------------------------------------------------------------------------


def test_a_real_scrape_counts_the_requests_and_tokens_that_were_sent() -> None:
    snap = snapshot(AFTER_SIX, at=0.0)
    assert snap.requests_started == FIRST["requests"]
    assert snap.requests_by_status == {"success": FIRST["requests"]}
    assert (snap.input_tokens.count, snap.input_tokens.sum) == (FIRST["requests"], FIRST["prompt_tokens"])
    assert (snap.output_tokens.count, snap.output_tokens.sum) == (
        FIRST["requests"],
        FIRST["completion_tokens"],
    )
    assert (snap.inflight, snap.queued, snap.models_ready) == (0, 0, 1)
    assert snap.ttft.count == FIRST["requests"]
    assert snap.ttft.bounds[-1] == math.inf
    assert snap.ttft.cumulative[-1] == snap.ttft.count


def test_the_migration_counter_is_absent_until_the_first_migration_and_reads_as_zero() -> None:
    assert "dynamo_frontend_model_migration_total" not in AFTER_SIX
    assert snapshot(AFTER_SIX, at=0.0).migrations == 0
    assert snapshot(AFTER_MIGRATION, at=0.0).migrations == 2


def test_a_frontend_that_served_nothing_yet_reads_as_zero_demand() -> None:
    snap = snapshot(FRESH, at=0.0)
    assert snap.requests_started is None
    assert (snap.input_tokens.count, snap.inflight, snap.migrations, snap.models_ready) == (0, 0, 0, 0)


def test_requests_for_a_model_the_frontend_does_not_serve_are_not_demand() -> None:
    # The frontend labels a request for a model it does not serve model="unknown_model" (answered 404).
    line = STARTED
    assert line in AFTER_SIX
    unknown = line.replace('model="tiny"', 'model="unknown_model"').replace(" 6", " 40")
    text = AFTER_SIX.replace(line, f"{line}\n{unknown}")
    assert snapshot(text, at=0.0).requests_started == 6
    assert parse_frontend_metrics(text, at=0.0, models={"unknown_model"}).requests_started == 40
    assert parse_frontend_metrics(text, at=0.0, models={"another"}).requests_started is None


# -- demand between two scrapes -------------------------------------------------------------------------


def test_demand_between_two_real_scrapes_is_the_traffic_in_between() -> None:
    demand = demand_between({"fe": snapshot(AFTER_SIX, 100.0)}, {"fe": snapshot(AFTER_MIGRATION, 110.0)})
    assert demand.interval_seconds == 10.0
    assert demand.arrivals_per_second == pytest.approx(LONG_STREAMS / 10)
    assert demand.completions_per_second == pytest.approx(LONG_STREAMS / 10)
    assert demand.errors_per_second == 0
    assert demand.mean_input_tokens == pytest.approx(
        (SECOND["prompt_tokens"] - FIRST["prompt_tokens"]) / LONG_STREAMS
    )
    assert demand.mean_output_tokens == pytest.approx(1500)
    assert demand.migrations == 2  # re-sent requests, not new arrivals: requests_started did not move
    assert (demand.frontends, demand.restarted, demand.rejected) == (1, (), ())
    assert demand.ttft_p50_seconds is not None
    assert demand.itl_p50_seconds is not None
    assert demand.ttft_p95_seconds is not None
    assert demand.itl_p95_seconds is not None
    assert 0 < demand.ttft_p50_seconds <= demand.ttft_p95_seconds
    assert 0 < demand.itl_p50_seconds <= demand.itl_p95_seconds
    assert is_within_its_bounds(demand)


def test_an_interval_without_traffic_has_zero_rates_and_no_means_or_percentiles() -> None:
    demand = demand_between({"fe": snapshot(AFTER_SIX, 0.0)}, {"fe": snapshot(AFTER_SIX, 5.0)})
    assert (demand.arrivals_per_second, demand.migrations, demand.frontends) == (0, 0, 1)
    assert (demand.mean_input_tokens, demand.mean_output_tokens) == (None, None)
    assert (demand.ttft_p50_seconds, demand.itl_p95_seconds) == (None, None)


def test_the_first_traffic_of_a_fresh_frontend_counts_from_zero() -> None:
    demand = demand_between({"fe": snapshot(FRESH, 0.0)}, {"fe": snapshot(AFTER_SIX, 3.0)})
    assert demand.arrivals_per_second == pytest.approx(FIRST["requests"] / 3)
    assert demand.mean_output_tokens == pytest.approx(FIRST["completion_tokens"] / FIRST["requests"])
    assert demand.restarted == ()


def test_a_restarted_frontend_counts_everything_since_its_restart() -> None:
    # Counters lower than before: the frontend restarted and has since served the six requests of
    # AFTER_SIX; Prometheus's rule takes the new values as the increase.
    demand = demand_between({"fe": snapshot(AFTER_MIGRATION, 0.0)}, {"fe": snapshot(AFTER_SIX, 6.0)})
    assert demand.restarted == ("fe",)
    assert demand.arrivals_per_second == pytest.approx(FIRST["requests"] / 6)
    assert demand.mean_input_tokens == pytest.approx(FIRST["prompt_tokens"] / FIRST["requests"])
    assert demand.migrations == 0
    assert is_within_its_bounds(demand)


def test_a_frontend_restarted_with_nothing_served_yet_gives_zero_not_a_negative_rate() -> None:
    demand = demand_between({"fe": snapshot(AFTER_MIGRATION, 0.0)}, {"fe": snapshot(FRESH, 6.0)})
    assert demand.restarted == ("fe",)
    assert (demand.arrivals_per_second, demand.migrations, demand.mean_output_tokens) == (0, 0, None)


def test_several_frontends_are_summed_each_against_its_own_previous_scrape() -> None:
    previous = {"a": snapshot(AFTER_SIX, 0.0), "b": snapshot(FRESH, 2.0)}
    current = {"a": snapshot(AFTER_MIGRATION, 10.0), "b": snapshot(AFTER_SIX, 5.0)}
    demand = demand_between(previous, current)
    assert demand.arrivals_per_second == pytest.approx(LONG_STREAMS / 10 + FIRST["requests"] / 3)
    tokens = (SECOND["completion_tokens"] - FIRST["completion_tokens"]) + FIRST["completion_tokens"]
    assert demand.mean_output_tokens == pytest.approx(tokens / SECOND["requests"])
    assert (demand.frontends, demand.migrations, demand.models_ready) == (2, 2, 2)


def test_a_frontend_seen_for_the_first_time_counts_in_the_gauges_but_not_in_the_rates() -> None:
    demand = demand_between({}, {"new": snapshot(AFTER_SIX, 0.0)})
    assert (demand.frontends, demand.arrivals_per_second, demand.models_ready) == (0, 0, 1)


@pytest.mark.parametrize(
    "later", [0.0, -5.0, 1e-6, 1e9], ids=["same-time", "backwards", "too-close", "too-far"]
)
def test_an_impossible_interval_is_rejected_and_left_out_of_the_rates(later: float) -> None:
    previous = {"bad": snapshot(AFTER_SIX, 0.0), "good": snapshot(AFTER_SIX, 0.0)}
    current = {"bad": snapshot(AFTER_MIGRATION, later), "good": snapshot(AFTER_MIGRATION, 10.0)}
    demand = demand_between(previous, current)
    assert [frontend for frontend, _ in demand.rejected] == ["bad"]
    assert "interval" in demand.rejected[0][1]
    assert demand.arrivals_per_second == pytest.approx(LONG_STREAMS / 10)


def test_an_implausible_arrival_rate_is_rejected_not_counted() -> None:
    # Six requests in a millisecond is fine; a counter that jumps by 1e11 in 1 s is not traffic.
    line = STARTED
    jumped = AFTER_SIX.replace(line, line.replace(" 6", " 100000000000"))
    demand = demand_between({"fe": snapshot(AFTER_SIX, 0.0)}, {"fe": snapshot(jumped, 1.0)})
    assert demand.arrivals_per_second == 0
    assert "arrivals" in demand.rejected[0][1]


# -- percentiles ----------------------------------------------------------------------------------------


def test_percentiles_interpolate_within_the_bucket_like_prometheus() -> None:
    h = Histogram(sum=0, count=100, bounds=(0.0, 0.1, 0.2, math.inf), cumulative=(0, 50, 100, 100))
    assert quantile(0.5, h) == pytest.approx(0.1)
    assert quantile(0.25, h) == pytest.approx(0.05)
    assert quantile(0.95, h) == pytest.approx(0.19)
    in_the_last = Histogram(sum=0, count=10, bounds=(0.0, 0.1, math.inf), cumulative=(0, 1, 10))
    assert quantile(0.95, in_the_last) == 0.1  # the +Inf bucket: the highest finite bound
    assert quantile(0.5, Histogram()) is None


# -- refused --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "names"),
    [
        pytest.param("dynamo_frontend_requests_total{{{ 1\n", ["not Prometheus text"], id="garbled"),
        pytest.param(AFTER_SIX.replace(STARTED, STARTED[:-1] + "NaN"), ["requests_started", "NaN"], id="nan"),
        pytest.param(
            AFTER_SIX.replace(STARTED, STARTED[:-1] + "-6"), ["requests_started", "negative"], id="neg"
        ),
        pytest.param(
            AFTER_SIX.replace(STARTED, STARTED[:-1] + "1e300"), ["requests_started", "physical"], id="absurd"
        ),
        pytest.param(
            AFTER_SIX.replace(
                'dynamo_frontend_inflight_requests{model="tiny"} 0',
                'dynamo_frontend_inflight_requests{model="tiny"} +Inf',
            ),
            ["inflight", "physical"],
            id="infinite-gauge",
        ),
        pytest.param(
            AFTER_SIX.replace(
                "# TYPE dynamo_frontend_queued_requests gauge",
                "# TYPE dynamo_frontend_queued_requests counter",
            ),
            ["queued_requests", "expected gauge"],
            id="wrong-type",
        ),
        pytest.param(
            AFTER_SIX.replace(
                'dynamo_frontend_output_sequence_tokens_bucket{model="tiny",le="+Inf"} 6',
                'dynamo_frontend_output_sequence_tokens_bucket{model="tiny",le="+Inf"} 1',
            ),
            ["output_sequence_tokens", "decrease"],
            id="buckets-decreasing",
        ),
    ],
)
def test_unusable_text_is_refused_with_a_reason_naming_the_series(text: str, names: list[str]) -> None:
    with pytest.raises(FrontendMetricsError) as caught:
        snapshot(text, at=0.0)
    for name in names:
        assert name in str(caught.value)


def test_the_refusal_examples_really_change_the_sample() -> None:
    assert STARTED in AFTER_SIX
    assert 'dynamo_frontend_output_sequence_tokens_bucket{model="tiny",le="+Inf"} 6' in AFTER_SIX
    assert 'dynamo_frontend_inflight_requests{model="tiny"} 0' in AFTER_SIX
    assert "# TYPE dynamo_frontend_queued_requests gauge" in AFTER_SIX


# -- never a crash, never demand out of bounds ----------------------------------------------------------

WANTED = re.compile(
    r"^dynamo_frontend_(requests_started_total|requests_total|inflight_requests|queued_requests|model_ready"
    r"|model_migration_total|(input|output)_sequence_tokens_\w+|time_to_first_token_seconds_\w+"
    r"|inter_token_latency_seconds_\w+)\{"
)


def sample_lines(text: str, *, buckets: bool = True) -> list[int]:
    return [
        i
        for i, line in enumerate(text.splitlines())
        if WANTED.match(line) and (buckets or "_bucket{" not in line)
    ]


EXTREME = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -1.0, MAX_REQUESTS, MAX_REQUESTS * 10, 1e300, 5e-324]),
    st.integers(min_value=-(10**20), max_value=10**20).map(float),
)
PLAUSIBLE = st.floats(min_value=0, max_value=1e7)


def changes(text: str) -> st.SearchStrategy[dict[int, float]]:
    """A few of the text's demand series given other values: mostly plausible, some extreme; mostly
    counters, gauges, sums and counts (a bucket changed alone mostly breaks the bucket order)."""
    lines = st.sampled_from(sample_lines(text, buckets=False))
    return st.dictionaries(
        lines | lines | lines | st.sampled_from(sample_lines(text)),
        PLAUSIBLE | PLAUSIBLE | EXTREME,
        max_size=4,
    )


def mutated(text: str, values: dict[int, float]) -> str:
    lines = text.splitlines()
    for index, value in values.items():
        series, _ = lines[index].rsplit(" ", 1)
        lines[index] = f"{series} {value!r}".replace("inf", "Inf")
    return "\n".join(lines) + "\n"


@given(st.text(max_size=400) | st.binary(max_size=400).map(lambda b: b.decode("latin-1")))
def test_any_text_is_a_snapshot_or_a_refusal(text: str) -> None:
    with contextlib.suppress(FrontendMetricsError):
        snapshot(text, at=0.0)


@given(
    changes(AFTER_SIX),
    changes(AFTER_MIGRATION),
    st.floats(min_value=0.5, max_value=600) | st.floats(min_value=-10, max_value=1e6, allow_nan=False),
)
def test_extreme_values_never_crash_and_never_give_demand_out_of_bounds(
    before: dict[int, float], after: dict[int, float], seconds: float
) -> None:
    try:
        previous = snapshot(mutated(AFTER_SIX, before), at=0.0)
        current = snapshot(mutated(AFTER_MIGRATION, after), at=seconds)
    except FrontendMetricsError:
        return
    demand = demand_between({"fe": previous}, {"fe": current})
    assert is_within_its_bounds(demand)
    assert demand.arrivals_per_second >= 0
    assert demand.migrations >= 0
