"""The latest spot quote of each (instance type, pool), and the one rule for which quotes count.

Shared by the optimizer (which plans on fresh prices, availability and reclaim rates) and the cost reporter
(which charges spot at the fresh price of the pools held), so that both read a quote the same way:

- a quote is dated when it was sent, but never later than the moment it arrived: a feed whose clock runs
  ahead must not pin its quote as the newest for longer than it is;
- the latest quote of a pool wins; one dated before the quote held is late and changes nothing;
- a quote is fresh at time ``t`` while it is at most ``max_age_s`` old: ``at >= t - max_age_s``.
"""

from __future__ import annotations

from dataclasses import dataclass

Pool = tuple[str, str]
"""(instance type, pool)."""


@dataclass(frozen=True, slots=True)
class SpotQuote:
    at: float
    """When the quote was made, on the agent's clock (never later than when it arrived)."""
    price_hourly: float
    available: int | None = None
    reclaim_per_hour: float | None = None

    @classmethod
    def received(
        cls,
        price_hourly: float,
        *,
        sent_at: float,
        now: float,
        available: int | None = None,
        reclaim_per_hour: float | None = None,
    ) -> SpotQuote:
        """A quote sent at ``sent_at`` that arrived at ``now``."""
        return cls(min(sent_at, now), price_hourly, available, reclaim_per_hour)


class SpotPriceBook:
    def __init__(self, max_age_s: float) -> None:
        self.max_age_s = max_age_s
        self._quotes: dict[Pool, SpotQuote] = {}

    def is_news(self, pool: Pool, quote: SpotQuote) -> bool:
        """Whether ``quote`` would replace what is held for ``pool`` (it is not older)."""
        held = self._quotes.get(pool)
        return held is None or quote.at >= held.at

    def offer(self, pool: Pool, quote: SpotQuote) -> bool:
        """Keep ``quote`` as the pool's latest unless a later one is held; False when it changed nothing."""
        if not self.is_news(pool, quote):
            return False
        self._quotes[pool] = quote
        return True

    def quotes(self) -> dict[Pool, SpotQuote]:
        """Every pool's latest quote, fresh or not (what a restart takes back through :meth:`offer`)."""
        return dict(self._quotes)

    def is_fresh(self, quote: SpotQuote, at: float) -> bool:
        return quote.at >= at - self.max_age_s

    def fresh(self, at: float) -> dict[Pool, SpotQuote]:
        """The quotes still fresh at ``at``, by pool."""
        return {pool: q for pool, q in self._quotes.items() if self.is_fresh(q, at)}

    def price(self, pool: Pool, at: float) -> float | None:
        """The pool's fresh price at ``at``, or None when there is no fresh quote."""
        quote = self._quotes.get(pool)
        return quote.price_hourly if quote is not None and self.is_fresh(quote, at) else None
