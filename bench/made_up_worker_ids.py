"""Worker reports with made-up ids (issue 14): the agent's handling time, then the health check that finds
them all silent.

Starts a nats-server from the virtual environment and an agent on a fake clock (the actor tests'
harness), publishes ``--ids`` worker metrics, each with its own made-up worker and instance id, waits
until the spot monitor has handled them all, then moves the clock past the silence window and times the
one health check that declares them lost. Before the registry was bounded and indexed by instance, and
before a check's lost nodes shared one plan, that check was quadratic: 9.1 s for 2,000 ids, 34.9 s for
5,000, with a plan per id.

Figures: seconds to handle the reports, seconds for the check, workers held (the registry's bound),
evictions, drain orders and plans.

Run: ``.venv/bin/python bench/made_up_worker_ids.py --ids 20000``; prints one JSON object (the agent's
log lines go to stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "actors"))
from harness import counter, eventually, start_agent, stop_agent
from made_up_workers import flood_made_up_workers

from agent.runtime.nats_server import NatsServer


async def run(ids: int) -> dict[str, float]:
    with NatsServer() as server:
        agent, peer = await start_agent(server.url)
        started = time.perf_counter()
        await flood_made_up_workers(agent, peer, ids, timeout_s=600)
        handled_s = time.perf_counter() - started
        ticks = agent.spot_monitor.ticks
        started = time.perf_counter()
        peer.clock.advance(20)  # past the 15 s silence window, one 10 s health check
        await eventually(lambda: agent.spot_monitor.ticks > ticks, 600)
        check_s = time.perf_counter() - started
        result = {
            "ids": ids,
            "reports_seconds": round(handled_s, 3),
            "health_check_seconds": round(check_s, 3),
            "workers_held": len(agent.spot_monitor.registry),
            "evicted": counter(agent, "costagent_registry_evicted_total"),
            "drain_orders": agent.spot_monitor.drains,
            "plans": agent.optimizer.plans,
        }
        await stop_agent(agent, peer)
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=20_000)
    args = parser.parse_args()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    print(json.dumps(asyncio.run(run(args.ids))))


if __name__ == "__main__":
    main()
