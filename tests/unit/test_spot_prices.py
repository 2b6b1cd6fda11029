"""The spot price book: which quote of a pool counts, and for how long."""

from __future__ import annotations

from agent.core.spot_prices import SpotPriceBook, SpotQuote

POOL = ("h100", "us-east-1a")


def test_a_quote_is_dated_when_sent_but_never_after_it_arrived() -> None:
    assert SpotQuote.received(2.0, sent_at=100.0, now=150.0).at == 100.0
    assert SpotQuote.received(2.0, sent_at=900.0, now=150.0).at == 150.0


def test_the_latest_quote_of_a_pool_wins_and_a_late_one_changes_nothing() -> None:
    book = SpotPriceBook(max_age_s=600.0)
    assert book.offer(POOL, SpotQuote(100.0, 2.0))
    assert not book.offer(POOL, SpotQuote(50.0, 9.0))
    assert book.price(POOL, 100.0) == 2.0
    assert book.offer(POOL, SpotQuote(100.0, 3.0))  # as new as the one held: it replaces it
    assert book.price(POOL, 100.0) == 3.0


def test_a_quote_is_fresh_for_max_age_seconds_and_then_ignored() -> None:
    book = SpotPriceBook(max_age_s=600.0)
    book.offer(POOL, SpotQuote(100.0, 2.0, available=4, reclaim_per_hour=0.1))
    assert book.price(POOL, 700.0) == 2.0
    assert book.fresh(700.0) == {POOL: SpotQuote(100.0, 2.0, 4, 0.1)}
    assert book.price(POOL, 700.5) is None
    assert book.fresh(700.5) == {}
    assert book.price(("a100", "us-east-1a"), 100.0) is None
