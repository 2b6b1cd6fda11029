"""What a simulated cloud tells the agent, written once for the emulated demo's cloud
(:mod:`agent.sim.cloud`) and the Dynamo demo's market (:mod:`agent.sim.market`): its spot quotes, and a
preemption notice exactly as a node's sidecar publishes it."""

from __future__ import annotations

from collections.abc import Callable

from agent.bus import Bus
from agent.core.catalog import Catalog
from schemas import PreemptionNotice, SpotPrice, envelope

SpotAvailability = Callable[[str, str, float], int | None]
"""(instance type, pool, clock time) → spot nodes the market allows in that pool now (None: no limit)."""


class SpotQuotes:
    """A SpotPrice per spot (type, pool) of the catalog: the catalog's spot price, ``available`` what the
    market allows now; remembers what it last quoted, so that a change is quoted at once."""

    def __init__(self, bus: Bus, catalog: Catalog, spot_available: SpotAvailability) -> None:
        self.bus, self.catalog, self.spot_available = bus, catalog, spot_available
        self.quoted: dict[tuple[str, str], int | None] = {}
        """What each (type, pool) was last quoted as available."""

    async def publish(self, now: float, every_pool: bool) -> None:
        """Quote every (type, pool) whose availability changed since its last quote, or every one."""
        for name, pool in self.catalog.pools():
            available = self.spot_available(name, pool, now)
            key = (name, pool)
            if not every_pool and key in self.quoted and self.quoted[key] == available:
                continue
            self.quoted[key] = available
            quote = SpotPrice(
                **envelope(self.bus.source, sent_at=now),
                instance_type=name,
                pool=pool,
                price_hourly=self.catalog.types[name].spot_hourly,
                available=available,
            )
            await self.bus.publish(self.bus.subjects.spot_price(pool), quote)


async def publish_notice(bus: Bus, instance_id: str, now: float, deadline: float) -> PreemptionNotice:
    """A ``terminate`` notice for ``instance_id`` with ``deadline``, on the subject and with the source a
    node's sidecar uses (provider ``sim``); returned as sent."""
    notice = PreemptionNotice(
        **envelope(f"sidecar:{instance_id}", sent_at=now),
        instance_id=instance_id,
        kind="terminate",
        deadline=deadline,
        provider="sim",
        received_at=now,
    )
    await bus.publish(bus.subjects.spot_notice(instance_id), notice)
    return notice


def storm_hit_probability(rate_per_hour: float, seconds: float) -> float:
    """The chance that a node is hit in ``seconds`` of a storm that takes ``rate_per_hour`` of the nodes
    within an hour."""
    return 1.0 - float((1.0 - rate_per_hour) ** (seconds / 3600.0))
