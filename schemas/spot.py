"""Spot market observations (``{ns}.evt.spot.price.{pool}``)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from schemas.envelope import Count, Key, Message, NonNegative, Positive


class SpotPrice(Message, frozen=True, tag="spot.price.v1"):
    """The spot price of one instance type in one pool (zone) at ``sent_at``.

    ``available`` is how many spot nodes of this type the pool can hold now in all (the ones already held
    included), when the feed knows it; the plan never asks for more;
    ``reclaim_per_hour`` is the observed probability that a node is reclaimed within an hour.
    """

    instance_type: Key
    pool: Key
    price_hourly: Positive
    available: Count | None = None
    reclaim_per_hour: Annotated[NonNegative, msgspec.Meta(le=1)] | None = None
