"""A ``cost-agent run`` killed with SIGKILL and started again (issue 14, durable state): how long until it
runs and plans again, how long its actors take to load their state, how large the snapshots are, and
whether the nodes running across the kill were billed for the gap.

Starts a nats-server with JetStream from the virtual environment; for each run, a fresh namespace, a
reserved node and ``--nodes`` spot nodes with a worker each (tests/e2e/durable_rig.py plays the actuator and
the workers), a plan asked for, and once every actor has saved: SIGKILL, then the same command again.

Figures per run: ``ready_s`` (the new process started to ``agent_started``: with ``[leader]`` on, the
default, that includes waiting out the dead leader's lease), ``first_plan_s`` (to the plan asked for right
after), ``load_ms`` per snapshot key (the ``state_loaded`` log), ``snapshot_bytes`` per key (compressed,
``costagent_state_snapshot_bytes`` before the kill) and ``gap_billed`` (reserved instance-hours added
across the kill over the wall-clock hours between the two cost reports: 1.0 is the whole gap).

Run: ``.venv/bin/python bench/durable_restart.py --runs 3 [--nodes 100] [--no-leader]``; one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))
from durable_rig import Bus, agent_config, kill_9, metric, saves, start_agent
from test_cli_run import from_schema
from waits import eventually

from agent.bus import settle
from agent.runtime.nats_server import NatsServer

KEYS = ("cost_reporter", "spot_monitor", "optimizer")
WAIT_S = 120.0


async def plan(bus: Bus) -> None:
    sub = await bus.nc.subscribe(f"{bus.ns}.evt.plan.allocation")
    await settle(bus.nc)
    await bus.publish("cmd.plan.tick", from_schema("plan.replan.v1"))
    await sub.next_msg(timeout=WAIT_S)
    await sub.unsubscribe()


async def one_run(url: str, nodes: int, leader: bool) -> dict[str, Any]:
    ns = f"bench{uuid.uuid4().hex[:8]}"
    bus = await Bus.open(url, ns)
    with tempfile.TemporaryDirectory(prefix="cost-agent-bench-") as workdir:
        config = agent_config(Path(workdir), url, ns)
        if not leader:
            config.write_text(config.read_text() + "[leader]\nenabled = false\n")
        first = await start_agent(config)
        port = first.event("metrics_serving")["port"]
        await bus.node("r-1", "reserved")
        for k in range(1, nodes + 1):
            await bus.node(f"s-{k}", "spot")
        await plan(bus)
        before = await bus.cost_report()
        # Everything the report counts is saved once the reporter saves after it (the others save on events).
        reported = saves(port, "cost_reporter")
        await eventually(
            lambda: saves(port, "cost_reporter") > reported and all(saves(port, key) for key in KEYS),
            "every actor saved",
            WAIT_S,
        )
        sizes = {k.split('"')[1]: v for k, v in metric(port, "costagent_state_snapshot_bytes").items()}
        await kill_9(first)

        started = time.monotonic()
        second = await start_agent(config)
        ready_s = time.monotonic() - started
        await plan(bus)
        first_plan_s = time.monotonic() - started
        after = await bus.cost_report()
        second.proc.terminate()
        await second.finish()
    await bus.nc.close()
    gap_h = (after["period_end"] - before["period_end"]) / 3600
    reserved_h = after["instance_hours"]["reserved"] - before["instance_hours"]["reserved"]
    return {
        "ready_s": round(ready_s, 2),
        "first_plan_s": round(first_plan_s, 2),
        "load_ms": {e["key"]: e["load_ms"] for e in second.named("state_loaded")},
        "snapshot_bytes": sizes,
        "gap_billed": round(reserved_h / gap_h, 4),
    }


async def run(runs: int, nodes: int, leader: bool) -> dict[str, Any]:
    with NatsServer(jetstream=True) as server:
        results = [await one_run(server.url, nodes, leader) for _ in range(runs)]

    def spread(name: str) -> dict[str, float]:
        values = [float(r[name]) for r in results]
        return {"min": min(values), "median": round(statistics.median(values), 2), "max": max(values)}

    return {
        "nodes": nodes,
        "leader": leader,
        "runs": results,
        "ready_s": spread("ready_s"),
        "first_plan_s": spread("first_plan_s"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=3, help="spot nodes, a worker each (default 3)")
    parser.add_argument("--no-leader", action="store_true", help="[leader] enabled = false")
    args = parser.parse_args()
    if args.runs < 1 or not 1 <= args.nodes <= 5000:
        parser.error("--runs: at least 1; --nodes: 1 to 5000")
    print(json.dumps(asyncio.run(run(args.runs, args.nodes, not args.no_leader)), indent=2))


if __name__ == "__main__":
    main()
