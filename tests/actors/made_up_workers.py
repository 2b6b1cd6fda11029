"""A flood of worker reports, each from a made-up worker on a made-up instance (issue 14), as a client that
invents ids would send it; used by the spot monitor's test and ``bench/made_up_worker_ids.py``."""

from __future__ import annotations

import msgspec
from harness import Peer, counter, eventually

from agent.bus import settle
from agent.service import Agent
from schemas import WorkerMetrics

HANDLED = {"actor": "spot_monitor", "subject": "evt.worker.metrics.*", "type": "worker.metrics.v1"}


async def flood_made_up_workers(agent: Agent, peer: Peer, ids: int, timeout_s: float) -> None:
    """Publish ``ids`` reports, worker ``fake-i`` on instance ``fake-node-i``, and wait until the spot
    monitor has handled them all."""
    for i in range(ids):
        m = WorkerMetrics(
            **peer.env("flood"),
            worker_id=f"fake-{i}",
            instance_id=f"fake-node-{i}",
            instance_type="h100_8x",
            pool="default",
            tier="spot",
            interval_s=5.0,
            requests_completed=1,
            prompt_tokens=100,
            output_tokens=10,
        )
        await peer.nc.publish(peer.subjects.worker_metrics(f"fake-{i}"), msgspec.json.encode(m))
    await settle(peer.nc)
    await eventually(lambda: counter(agent, "costagent_messages_handled_total", **HANDLED) >= ids, timeout_s)
