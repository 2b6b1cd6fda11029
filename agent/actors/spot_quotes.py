"""Reading a ``SpotPrice`` message into a :class:`~agent.core.spot_prices.SpotPriceBook` entry.

Not an actor: the one place where the actors that listen to ``{ns}.evt.spot.price.*`` (the optimizer and
the cost reporter) turn the message into a quote, so that both refuse the same messages for the same reason.
"""

from __future__ import annotations

from agent.bus import Rejected
from agent.core.fleet_state import FleetState
from agent.core.spot_prices import Pool, SpotQuote
from schemas import SpotPrice


def received_quote(fleet: FleetState, message: SpotPrice, now: float) -> tuple[Pool, SpotQuote]:
    """The pool the message quotes and its quote as received at ``now``.

    Raises :class:`~agent.bus.Rejected` (counted, and dropped by the bus) for a pool that is not a spot pool
    of the catalog.
    """
    try:
        fleet.check(message.instance_type, message.pool, "spot")
    except ValueError as err:
        raise Rejected(str(err)) from None
    quote = SpotQuote.received(
        message.price_hourly,
        sent_at=message.sent_at,
        now=now,
        available=message.available,
        reclaim_per_hour=message.reclaim_per_hour,
    )
    return (message.instance_type, message.pool), quote
