"""Spot market observations (``{ns}.evt.spot.price.{pool}``)."""

from __future__ import annotations

from typing import Annotated

from schemas.envelope import Fraction, Key, Message, Nodes, Price, doc


class SpotPrice(Message, frozen=True, tag="spot.price.v1"):
    """The spot price of one instance type in one pool (zone) at ``sent_at``.

    ``available`` is how many spot nodes of this type the pool can hold now in all (the ones already held
    included), when the feed knows it; the plan never asks for more;
    ``reclaim_per_hour`` is the observed probability that a node is reclaimed within an hour.
    """

    instance_type: Annotated[Key, doc("The instance type quoted (a catalog type).")]
    pool: Annotated[
        Key, doc("The pool (zone), one of that type's pools in the catalog; also the subject key.")
    ]
    price_hourly: Annotated[
        Price,
        doc('The spot price, in $/h per node. There is no "no price" value: send nothing instead.'),
    ]
    available: Annotated[
        Nodes | None,
        doc(
            "How many spot nodes of this type the pool can hold now in all (held ones included), when the "
            "feed knows it; null = unknown (no limit)."
        ),
    ] = None
    reclaim_per_hour: Annotated[
        Fraction | None,
        doc("Observed probability that a node is reclaimed within an hour; null = use the catalog's."),
    ] = None
