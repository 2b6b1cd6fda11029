"""A gap in the traffic is an outage: outage_return holds the plan at the profile's expectation."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.core.demand import Demand
from agent.core.outage import outage_return

EXPECTED = Demand(100.0, 1000.0, 200.0)


@pytest.mark.parametrize(
    ("observed", "expected", "share", "held"),
    [
        pytest.param(Demand(5.0, 50.0, 10.0), EXPECTED, 0.1, EXPECTED, id="below the share: the expectation"),
        pytest.param(Demand(0.0, 0.0, 0.0), EXPECTED, 0.1, EXPECTED, id="no traffic at all: the expectation"),
        pytest.param(Demand(10.0, 50.0, 10.0), EXPECTED, 0.1, Demand(10.0, 50.0, 10.0), id="at the share"),
        pytest.param(Demand(60.0, 50.0, 10.0), EXPECTED, 0.1, Demand(60.0, 50.0, 10.0), id="above the share"),
        pytest.param(
            Demand(150.0, 50.0, 10.0), EXPECTED, 0.1, Demand(150.0, 50.0, 10.0), id="above expected"
        ),
        pytest.param(Demand(1.0, 50.0, 10.0), EXPECTED, 0.0, Demand(1.0, 50.0, 10.0), id="share 0: rule off"),
        pytest.param(Demand(1.0, 50.0, 10.0), None, 0.1, Demand(1.0, 50.0, 10.0), id="no profile yet"),
        pytest.param(
            Demand(0.0, 50.0, 10.0),
            Demand(0.0, 1000.0, 200.0),
            0.1,
            Demand(0.0, 50.0, 10.0),
            id="profile expects no traffic",
        ),
        pytest.param(
            Demand(2.0, 50.0, 10.0),
            Demand(100.0, 0.0, 0.0),
            0.1,
            Demand(100.0, 50.0, 10.0),
            id="profile of rates only: its rate with the observed mix",
        ),
        pytest.param(Demand(40.0, 50.0, 10.0), EXPECTED, 0.5, EXPECTED, id="a wider share"),
    ],
)
def test_outage_return(observed: Demand, expected: Demand | None, share: float, held: Demand) -> None:
    assert outage_return(observed, expected, share) == held


@pytest.mark.parametrize("share", [-0.01, 1.0, 1.5, math.nan, math.inf])
def test_share_outside_zero_to_one_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match="share"):
        outage_return(Demand(1.0, 1.0, 1.0), EXPECTED, share)


@given(
    st.floats(0.0, 1e6),
    st.floats(0.0, 1e6),
    st.floats(0.0, 0.99),
)
def test_the_held_rate_is_never_below_the_observed_rate(
    observed_rps: float, expected_rps: float, share: float
) -> None:
    observed = Demand(observed_rps, 10.0, 10.0)
    held = outage_return(observed, Demand(expected_rps, 10.0, 10.0), share)
    assert held.rps >= observed.rps
    assert held in (observed, Demand(expected_rps, 10.0, 10.0))
