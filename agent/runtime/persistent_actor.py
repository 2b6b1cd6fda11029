"""An actor whose state survives a restart: loaded from the state store when it starts, saved while it runs.

A subclass names its key (``state_key``), says how to encode what it holds (:meth:`encode_state`) and how
to take a saved value back (:meth:`restore_state`, which raises ValueError for a snapshot it cannot use:
then it starts empty, and the rejection is logged and counted). Loading happens in the actor's start path,
once per actor object, so a restarted agent and a replica taking over as leader resume alike; a restart
after a crash keeps the newer state in memory. While it runs, what changed is saved every
``[state] snapshot_seconds`` (:meth:`changed`) or at once (:meth:`save_now`); a clean stop saves what is left.
"""

from __future__ import annotations

from typing import ClassVar

from agent.bus import Bus
from agent.runtime.actor import Actor
from agent.runtime.clock import Clock
from agent.runtime.state_store import Snapshots


class PersistentActor(Actor):
    state_key: ClassVar[str]

    def __init__(
        self, bus: Bus, clock: Clock, *, interval_s: float | None = None, snapshots: Snapshots | None = None
    ) -> None:
        super().__init__(bus, clock, interval_s=interval_s)
        self.durable = snapshots or Snapshots.disabled(
            self.state_key, actor=self.name, clock=clock, metrics=bus.metrics
        )

    def encode_state(self) -> bytes:
        raise NotImplementedError

    def restore_state(self, data: bytes) -> None:
        """Take over the saved ``data``; ValueError (nothing changed) when it cannot be used."""
        raise NotImplementedError

    async def on_start(self) -> None:
        def restore(data: bytes) -> bool:
            self.restore_state(data)
            return True

        if await self.durable.load(restore):
            await self.on_restored()
        self.durable.start(self.encode_state)

    async def on_restored(self) -> None:
        """Called once after a saved state was taken over, before subscribing."""

    async def on_stop(self) -> None:
        await self.durable.close(self.encode_state)

    def changed(self) -> None:
        """Something worth keeping changed: saved within ``[state] snapshot_seconds``."""
        self.durable.changed()

    async def save_now(self) -> None:
        await self.durable.save(self.encode_state)
