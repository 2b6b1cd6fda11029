"""A gap in the traffic is an outage, not the users leaving: plan for their return.

When the traffic measured over the base window falls to almost nothing while the weekly profile expects
the usual level for the coming lead time, the likely cause is an outage upstream (a frontend, a network
path, a client's bug), and when it ends the traffic comes back at once, at the level it would have had.
A policy that follows the measured rate down has nothing running then: the return is served a boot later.
:func:`outage_return` keeps the plan at the profile's expectation while the gap lasts. Pure: the caller
passes the observation and the profile's expectation.
"""

from __future__ import annotations

from agent.core.demand import Demand


def outage_return(observed: Demand, expected: Demand | None, share: float) -> Demand:
    """``expected`` when ``observed`` is below ``share`` of it (an outage), else ``observed``.

    ``share`` 0 turns the rule off; with no expectation (no profile yet) the observation stands.
    """
    if not 0 <= share < 1:
        raise ValueError(f"share must be in [0, 1), got {share!r}")
    if expected is None or share == 0 or expected.rps <= 0:
        return observed
    if observed.rps >= share * expected.rps:
        return observed
    if expected.prompt_tokens + expected.output_tokens == 0:
        # A profile of rates without token lengths: the measured mix sizes the expected rate.
        return Demand(expected.rps, observed.prompt_tokens, observed.output_tokens)
    return expected
