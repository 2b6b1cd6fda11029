"""The wire fuzz at scale (issue 14): ``--messages`` messages across every subject the agent listens on,
against a real ``cost-agent run`` process and its embedded nats-server.

Messages come from the published JSON Schemas (``schemas/jsonschema/``): hypothesis-jsonschema generates
``--examples`` valid messages per subject, and each message sent is one of them with a fresh id, half of
them grounded in the catalog's types and pools, a third with every number at an edge of its range, and
half mutated into invalid ones (out-of-range numbers, 400-digit integers, wrong types, missing fields,
nesting 1,000 to 100,000 deep, over the 256 KiB limit, not UTF-8, not JSON). The cases and the checks are
``tests/e2e/wire_fuzz.py``'s, shared with the small fuzz in ``make test``: every subscription accounts for
every message (handled or rejected), every malformed one is counted as malformed by each actor that
listens, every request is answered (an ErrorReply when malformed), no actor restarts, and a plan asked
for afterwards decodes within every range.

Figures: messages sent, malformed among them, rejections counted (one per listening actor), requests and
error replies, actor restarts (crashes),
the agent process's resident memory (MiB, now and peak) before and after, messages per second.

Run: ``.venv/bin/python bench/fuzz_wire.py --messages 100000``; prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import nats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))
from wire_fuzz import Pool, agent_process, plans_sanely, run_fuzz

from agent.subjects import Subjects
from schemas.envelope import MAX_NODES


async def run(messages: int, examples: int, seed: int, batch: int) -> dict[str, Any]:
    started = time.perf_counter()
    pool = Pool(examples, seed_=seed)
    generated_s = time.perf_counter() - started
    async with agent_process() as agent:
        nc = await nats.connect(agent.url)
        try:
            before = agent.memory_mib()
            result = await run_fuzz(agent, nc, pool.cases(Subjects(agent.namespace), messages), batch=batch)
            after = agent.memory_mib()
            tally = await agent.tally()
            healthy = await agent.healthy()
            plan = await plans_sanely(agent, nc)
        finally:
            await nc.close()
    return {
        "messages": result.sent,
        "malformed_sent": result.expected_malformed,
        # One rejection per actor that listens on the subject (a worker report reaches three).
        "rejections_counted": {
            reason: sum(n for (_, _, why), n in tally.rejected.items() if why == reason)
            for reason in ("malformed", "invalid")
        },
        "requests": result.requests,
        "error_replies": result.error_replies,
        "crashes": tally.restarts,
        "healthy_after": healthy,
        "plan_after": {
            "status": plan.status,
            "nodes": sum(t.count for t in plan.targets),
            "largest_target": max((t.count for t in plan.targets), default=0),
            "target_limit": MAX_NODES,
        },
        "agent_memory_mib": {"before": before, "after": after},
        "seconds": round(result.seconds, 2),
        "messages_per_second": round(result.sent / result.seconds),
        "by_subject": result.by_subject,
        "generation": {"examples_per_subject": examples, "seed": seed, "seconds": round(generated_s, 1)},
        "machine": {"cpu_count": os.cpu_count(), "python": sys.version.split()[0]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--examples", type=int, default=150, help="valid messages generated per subject")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--batch", type=int, default=1000, help="messages sent before waiting for the agent")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.messages, args.examples, args.seed, args.batch)), indent=2))


if __name__ == "__main__":
    main()
