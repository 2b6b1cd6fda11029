"""Supervisor: runs every actor, restarts a crashed one with back-off, and gives up past a budget.

A crash is logged once, with its traceback (``actor_crashed``), and counted in
``costagent_actor_restarts``. An actor that crashes more than ``max_restarts`` times within
``window_s`` seconds is not restarted: the supervisor records the failure and sets the stop event, so the
whole agent shuts down and exits 1 (a process manager restarting a broken agent is better than an agent
that limps on without, say, its optimizer).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from agent.runtime.actor import Actor
from agent.runtime.clock import wait_event
from agent.runtime.metrics import AgentMetrics


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    max_restarts: int = 5
    window_s: float = 60.0
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 5.0

    def __post_init__(self) -> None:
        if self.max_restarts < 0 or not self.window_s > 0:
            raise ValueError("restart policy: max_restarts must be ≥ 0 and window_s > 0")
        if not 0 <= self.backoff_initial_s <= self.backoff_max_s:
            raise ValueError("restart policy: need 0 ≤ backoff_initial_s ≤ backoff_max_s")


class Supervisor:
    def __init__(
        self,
        actors: Sequence[Actor],
        stop: asyncio.Event,
        metrics: AgentMetrics,
        policy: RestartPolicy | None = None,
    ) -> None:
        self.actors = list(actors)
        self.stop = stop
        self.metrics = metrics
        self.policy = policy or RestartPolicy()
        self.failed: str | None = None
        self.running: dict[str, bool] = {actor.name: False for actor in self.actors}
        self._log = structlog.get_logger("agent.supervisor")

    async def run(self) -> None:
        """Return once every actor has stopped (after the stop event, or after a failure)."""
        await asyncio.gather(*(self._supervise(actor) for actor in self.actors))

    async def _supervise(self, actor: Actor) -> None:
        crashes: deque[float] = deque()
        backoff = self.policy.backoff_initial_s
        while not self.stop.is_set():
            self.running[actor.name] = True
            started = time.monotonic()
            try:
                await actor.run(self.stop)
            except Exception:
                self.running[actor.name] = False
                if self.stop.is_set():
                    return  # a failure while shutting down is not worth a restart
                now = time.monotonic()
                if now - started >= self.policy.window_s:
                    backoff = self.policy.backoff_initial_s  # it had recovered: start the back-off afresh
                crashes.append(now)
                while crashes and crashes[0] < now - self.policy.window_s:
                    crashes.popleft()
                if len(crashes) > self.policy.max_restarts:
                    self._log.error(
                        "actor_failed",
                        actor=actor.name,
                        crashes=len(crashes),
                        window_s=self.policy.window_s,
                        exc_info=True,
                    )
                    self.failed = actor.name
                    self.stop.set()
                    return
                self._log.error("actor_crashed", actor=actor.name, restart_in_s=backoff, exc_info=True)
                self.metrics.actor_restarts.labels(actor.name).inc()
                if await wait_event(self.stop, backoff):
                    return
                backoff = min(backoff * 2, self.policy.backoff_max_s)
            else:
                self.running[actor.name] = False
                return
