"""Reading a ``SpotPrice`` message into a :class:`~agent.core.spot_prices.SpotPriceBook` entry.

Not an actor: the one place where the actors that listen to ``{ns}.evt.spot.price.*`` (the optimizer and
the cost reporter) turn the message into a quote, so that both refuse the same messages for the same reason;
and where both save their quotes across a restart and take them back.
"""

from __future__ import annotations

from agent.bus import Rejected
from agent.core.fleet_state import FleetState
from agent.core.spot_prices import Pool, SpotPriceBook, SpotQuote
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


SavedQuote = tuple[str, str, float, float, int | None, float | None]
"""(instance type, pool, at, $/h, available, reclaims per hour): one pool's latest quote in a snapshot."""


def saved_quotes(book: SpotPriceBook) -> list[SavedQuote]:
    return [
        (name, pool, q.at, q.price_hourly, q.available, q.reclaim_per_hour)
        for (name, pool), q in book.quotes().items()
    ]


def restore_quotes(book: SpotPriceBook, fleet: FleetState, saved: list[SavedQuote]) -> None:
    """Offer the saved quotes to ``book``; ValueError, before any is offered, for a pool outside the catalog
    or a price that is not a finite positive number."""
    quotes: list[tuple[Pool, SpotQuote]] = []
    for name, pool, at, price, available, reclaim in saved:
        fleet.check(name, pool, "spot")
        if not 0 < price < float("inf"):
            raise ValueError(f"price of ({name!r}, {pool!r}): {price!r} is not a positive finite $/h")
        quotes.append(((name, pool), SpotQuote(at, price, available, reclaim)))
    for pool_key, quote in quotes:
        book.offer(pool_key, quote)
