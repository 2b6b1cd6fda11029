"""Headroom for the lead time: the smallest factor whose unserved share stays within the budget."""

import numpy as np
import pytest

from agent.core.hedging import headroom_for_budget


def test_flat_demand_needs_no_headroom() -> None:
    assert headroom_for_budget([100.0] * 500, lead_steps=10, budget=0.001) == 1.0


def test_a_regular_step_up_needs_the_step_as_headroom() -> None:
    # Every 60 steps demand jumps from 100 to 130 for 30 steps: capacity sized on 100 misses 30.
    history = ([100.0] * 30 + [130.0] * 30) * 20
    h = headroom_for_budget(history, lead_steps=10, budget=1e-6)
    assert h == pytest.approx(1.3, abs=1e-3)


def test_a_looser_budget_needs_less_headroom() -> None:
    history = ([100.0] * 30 + [130.0] * 30 + [100.0] * 30 + [200.0] * 2) * 20
    tight = headroom_for_budget(history, lead_steps=10, budget=1e-4)
    loose = headroom_for_budget(history, lead_steps=10, budget=1e-2)
    assert 1.0 <= loose < tight <= 2.0


def test_recovery_from_an_outage_does_not_set_the_headroom() -> None:
    history = [100.0] * 300 + [0.0] * 30 + [100.0] * 300
    assert headroom_for_budget(history, lead_steps=10, budget=0.001) == 1.0


def test_too_little_history_gives_no_headroom_and_a_bad_budget_is_rejected() -> None:
    assert headroom_for_budget([1.0, 5.0], lead_steps=10, budget=0.001) == 1.0
    with pytest.raises(ValueError, match="budget"):
        headroom_for_budget([1.0] * 100, lead_steps=10, budget=0.0)


def test_the_headroom_never_exceeds_its_ceiling() -> None:
    history = ([100.0] * 5 + [1000.0] * 5) * 50
    assert headroom_for_budget(history, lead_steps=5, budget=1e-6, ceiling=3.0) == 3.0


def test_sizing_to_the_recent_peak_needs_less_headroom_for_traffic_that_swings() -> None:
    # Demand alternates between 150 and 100 every 10 steps: sized to the last step, a decision taken at
    # 100 misses the next swing; sized to the peak of the last 20 steps, nothing is missed.
    history = ([150.0] * 10 + [100.0] * 10) * 30
    assert headroom_for_budget(history, lead_steps=10, budget=1e-6) == pytest.approx(1.5, abs=1e-3)
    assert headroom_for_budget(history, lead_steps=10, budget=1e-6, base_window=20) == 1.0


def test_steps_before_the_boot_are_the_previous_decisions_and_do_not_set_the_headroom() -> None:
    # A one-step spike right after a decision would be served by the previous decision's nodes.
    history = list(np.tile([100.0] * 19 + [130.0], 30))
    assert headroom_for_budget(history, lead_steps=10, budget=1e-6) > 1.2
    with_boot = headroom_for_budget(history, lead_steps=10, budget=1e-6, first_step=5)
    assert with_boot > 1.2  # the spike still falls 5-10 steps after some decision
    assert headroom_for_budget([100.0] * 600, lead_steps=10, budget=1e-6, first_step=5) == 1.0
    with pytest.raises(ValueError, match="first_step"):
        headroom_for_budget(history, lead_steps=10, budget=1e-3, first_step=11)
