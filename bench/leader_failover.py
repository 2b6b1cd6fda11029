"""Failover between two ``cost-agent run`` replicas (issue 14): how long after the leader dies the other
one publishes a plan.

Starts a nats-server with JetStream from the virtual environment; for each run, a fresh namespace, a fleet
feeding it (four workers' reports and a plan tick every 0.5 s, as tests/e2e/test_leader.py does), two
replicas with the default ``[leader]`` settings (lease 10 s), waits until one leads and plans, kills it
(SIGKILL, or SIGTERM with ``--signal term``) and times the other's first plan. Also checks that no plan
came from the old leader after it.

Figures per run and over the runs: seconds from the kill to the new leader's first plan, on this process's
monotonic clock (the new leader needs a tick after its actors started: up to 0.5 s of it is the fleet's
tick period), and plans from the old leader after that (0).

Run: ``.venv/bin/python bench/leader_failover.py --runs 5``; prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))
from replicas import fleet_and_replicas, start_pair
from waits import eventually

from agent.runtime.nats_server import NatsServer


async def one_run(url: str, sig: signal.Signals) -> dict[str, float]:
    async with fleet_and_replicas(url) as (fleet, replicas):
        leader, follower = await start_pair(url, fleet, replicas)
        killed_at = time.monotonic()
        leader.signal(sig)
        await eventually(lambda: fleet.plans_from(follower.name) > 0, "the new leader's plan", timeout_s=60)
        first = min(at for at, source in fleet.plans if source == follower.name)
        return {
            "first_plan_s": round(first - killed_at, 2),
            "old_leader_plans_after": fleet.plans_from(leader.name, after=first),
        }


async def run(runs: int, sig: signal.Signals) -> dict[str, object]:
    with NatsServer(jetstream=True) as server:
        results = [await one_run(server.url, sig) for _ in range(runs)]
    plans = [float(r["first_plan_s"]) for r in results]
    return {
        "signal": sig.name,
        "lease_seconds": 10.0,
        "runs": results,
        "first_plan_s": {"min": min(plans), "median": round(statistics.median(plans), 2), "max": max(plans)},
        "old_leader_plans_after": sum(int(r["old_leader_plans_after"]) for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--signal", choices=["kill", "term"], default="kill")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs: at least 1")
    sig = signal.SIGKILL if args.signal == "kill" else signal.SIGTERM
    print(json.dumps(asyncio.run(run(args.runs, sig)), indent=2))


if __name__ == "__main__":
    main()
