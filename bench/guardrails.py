"""Guardrails (issue 14): what made-up demand plans with and without ``[limits]``, and what a burst of
preemption notices makes.

Starts a nats-server from the virtual environment and agents on a fake clock (the actor tests' harness).
Made-up workers: one worker reports 2 req/s and a plan is asked for; then three made-up workers report
100 req/s each and a plan is asked for again, once on an agent with the default settings (no limits) and
once with ``[limits] max_total_instances = 6, max_hourly_cost = 100``. Notices: ``--notices`` spot nodes
the agent knows, then a notice for each, published back to back; the figures are the drains and plans
right after the burst and one batch window later, then after a minute (the held notices released).

Run: ``.venv/bin/python bench/guardrails.py``; prints one JSON object (the agent's log lines go to stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "actors"))
from harness import Inbox, counter, eventually, start_agent, stop_agent
from test_guardrails import burst_of_notices, fake_workers_plan

from agent.config import LimitsSettings, Settings
from agent.runtime.nats_server import NatsServer
from schemas import AllocationPlan


async def made_up_workers(url: str, settings: Settings) -> dict[str, Any]:
    agent, peer = await start_agent(url, settings)
    try:
        honest, flooded = await fake_workers_plan(agent, peer)
        return {
            "honest_plan_dollars_per_hour": round(honest.hourly_cost, 2),
            "flooded_plan_dollars_per_hour": round(flooded.hourly_cost, 2),
            "flooded_plan_nodes": sum(t.count for t in flooded.targets),
            "flooded_status": flooded.status,
            "flooded_limits_binding": [b for b in flooded.binding if b.startswith("limit:")],
        }
    finally:
        await stop_agent(agent, peer)


async def notice_burst(url: str, notices: int) -> dict[str, Any]:
    agent, peer = await start_agent(url)
    try:
        monitor = agent.spot_monitor
        plans = await Inbox.open(peer.nc, peer.subjects.plan_allocation, AllocationPlan)
        await burst_of_notices(agent, peer, notices)
        at_once = {"drains": monitor.drains, "held": monitor.gate.held, "plans": agent.optimizer.plans}
        peer.clock.advance(monitor.settings.notice_batch_seconds)
        await plans.next()
        after_window = {"drains": monitor.drains, "plans": agent.optimizer.plans}
        peer.clock.advance(60.0)
        await eventually(lambda: monitor.drains == notices and monitor.gate.held == 0, 60)
        await eventually(lambda: agent.optimizer.plans > after_window["plans"], 60)
        return {
            "notices": notices,
            "max_notices_per_minute": monitor.settings.max_notices_per_minute,
            "right_after_the_burst": at_once,
            "after_one_batch_window": after_window,
            "after_a_minute": {"drains": monitor.drains, "plans": agent.optimizer.plans},
            "held_total": counter(agent, "costagent_spot_notices_held_total"),
            "dropped_total": counter(agent, "costagent_spot_notices_dropped_total"),
        }
    finally:
        await stop_agent(agent, peer)


async def run(notices: int) -> dict[str, Any]:
    limited = Settings(limits=LimitsSettings(max_total_instances=6, max_hourly_cost=100.0))
    with NatsServer() as server:
        return {
            "made_up_workers": {
                "no_limits": await made_up_workers(server.url, Settings()),
                "limits_6_nodes_100_dollars": await made_up_workers(server.url, limited),
            },
            "notice_burst": await notice_burst(server.url, notices),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notices", type=int, default=200)
    args = parser.parse_args()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    print(json.dumps(asyncio.run(run(args.notices)), indent=2))


if __name__ == "__main__":
    main()
