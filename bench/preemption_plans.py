"""Drain plans for a reclaimed spot node: the ``deadline`` planner against the seed's two rules.

Scenarios: 64, 256 and 1,024 requests in flight on one h100_8x node (rates from the ``seed`` catalog:
8,000 decode tokens/s, 50,000 prefill tokens/s, batch 256 — with more sequences than that in flight, the
same throughput is spread over all of them) × a notice of 120 s (AWS) or 30 s (GCP, Azure) × a fast
(400 Gbit/s) or slow (25 Gbit/s) cross-node link. Four surviving workers on other nodes take the moves:
three h100_8x and one a100_8x, each with a limited number of free slots (h100: 16-96, a100: 8-48, drawn
per scenario) and a random half of the popular system prompts in its prefix cache.

Requests (numpy ``default_rng(--seed)``): prompts lognormal around 900 tokens, kept within 100-4,000;
outputs lognormal around 250 tokens, kept within 10-2,000, of which a uniform share is already generated;
70% of prompts start with one of six shared system prompts (128-1,024 tokens, Zipf-like popularity);
16-token prefix blocks; KV cache 327,680 bytes per token (a 70B model with GQA in fp16: 80 layers × 8 KV
heads × 128 × 2 × 2 bytes).

Per scenario and policy: requests lost (``at_risk``: they still need the source after deadline − margin),
requeued, re-prefilled, transferred, finished in place, tokens recomputed, bytes moved, the last time the
plan needs the source against the deadline and the 5 s margin, the median and largest expected completion
of the requests placed, and ``plan_drain``'s planning time (median and p99 over ``--repeats`` timed calls
after a few warm-up calls). Targets: the ``deadline`` policy loses nothing in any scenario; planning at
256 requests well under 50 ms.

Run: ``.venv/bin/python bench/preemption_plans.py`` (``--seed S``, ``--repeats N``, ``--out PATH`` to
also write the JSON to a file); prints one JSON object, progress goes to stderr.
"""

from __future__ import annotations

import argparse
import gc
import math
import platform
import sys
import time
from pathlib import Path

import msgspec
import numpy as np

from agent.config import resolve_catalog
from agent.core.drain import POLICIES, DrainPlan, DrainSettings, InFlight, TargetWorker, plan_drain

KV_BYTES_PER_TOKEN = 327_680.0  # 80 layers × 8 KV heads × 128 dims × (K, V) × 2 bytes
BLOCK_TOKENS = 16
SIZES = (64, 256, 1024)
NOTICES = {"aws_120s": 120.0, "gcp_azure_30s": 30.0}
LINKS = {"fast_400gbit": 400e9 / 8, "slow_25gbit": 25e9 / 8}
SAME_NODE_BYTES_PER_S = 300e9  # NVLink-class; every target here is on another node
SAFETY_MARGIN_S = 5.0
WARMUP_CALLS = 3
PLANNING_TARGET_MS = 50.0
_PROMPT = (900.0, 0.8, 100, 4_000)  # lognormal median, sigma, min, max
_OUTPUT = (250.0, 1.0, 10, 2_000)
_SYSTEM_PROMPT_TOKENS = (1_024, 512, 256, 768, 128, 384)
_SHARED_PREFIX_SHARE = 0.7
# (catalog type, free-slot range) of the surviving workers
_TARGETS = (("h100_8x", (16, 96)), ("h100_8x", (16, 96)), ("h100_8x", (16, 96)), ("a100_8x", (8, 48)))


def _lognormal_int(rng: np.random.Generator, spec: tuple[float, float, int, int], n: int) -> np.ndarray:
    median, sigma, lo, hi = spec
    return np.clip(np.rint(rng.lognormal(math.log(median), sigma, n)), lo, hi).astype(int)


def make_requests(rng: np.random.Generator, n: int) -> list[InFlight]:
    prompts = _lognormal_int(rng, _PROMPT, n)
    outputs = _lognormal_int(rng, _OUTPUT, n)
    done_share = rng.uniform(0.0, 1.0, n)
    popularity = 1.0 / np.arange(1, len(_SYSTEM_PROMPT_TOKENS) + 1)
    popularity /= popularity.sum()
    systems = rng.choice(len(_SYSTEM_PROMPT_TOKENS), size=n, p=popularity)
    shared = rng.uniform(0.0, 1.0, n) < _SHARED_PREFIX_SHARE
    requests: list[InFlight] = []
    for i in range(n):
        prompt = int(prompts[i])
        generated = int(outputs[i] * done_share[i])
        blocks: list[str] = []
        if shared[i]:
            k = int(systems[i])
            blocks = [f"sys{k}-{j}" for j in range(_SYSTEM_PROMPT_TOKENS[k] // BLOCK_TOKENS)]
        n_blocks = prompt // BLOCK_TOKENS
        blocks = blocks[:n_blocks] + [f"req{i}-{j}" for j in range(len(blocks), n_blocks)]
        requests.append(
            InFlight(
                request_id=f"req{i}",
                prompt_tokens=prompt,
                generated_tokens=generated,
                remaining_tokens=int(outputs[i]) - generated,
                kv_bytes=KV_BYTES_PER_TOKEN * (prompt + generated),
                prefix_blocks=tuple(blocks),
            )
        )
    return requests


def make_targets(rng: np.random.Generator) -> list[TargetWorker]:
    catalog = resolve_catalog("seed")
    targets: list[TargetWorker] = []
    for k, (type_name, (lo, hi)) in enumerate(_TARGETS):
        itype = catalog.type(type_name)
        cached = frozenset(
            f"sys{s}-{j}"
            for s, tokens in enumerate(_SYSTEM_PROMPT_TOKENS)
            if rng.random() < 0.5
            for j in range(tokens // BLOCK_TOKENS)
        )
        targets.append(
            TargetWorker(
                worker_id=f"target-{k}-{type_name}",
                instance_id=f"node-{k}",
                same_node=False,
                free_slots=int(rng.integers(lo, hi + 1)),
                prefill_tokens_per_s=itype.prefill_tokens_per_s,
                decode_tokens_per_s=itype.decode_tokens_per_s,
                max_batch=itype.max_batch,
                cached_blocks=cached,
            )
        )
    return targets


def summarize(plan: DrainPlan, settings: DrainSettings) -> dict[str, object]:
    needs_source = [a.ready_s for a in plan.actions if a.kind in ("finish", "transfer")]
    placed = [a.completion_s for a in plan.actions if a.kind != "requeue"]
    return {
        "lost": len(plan.at_risk),
        "requeued": plan.count("requeue"),
        "reprefilled": plan.count("reprefill"),
        "transferred": plan.count("transfer"),
        "finished_in_place": plan.count("finish"),
        "tokens_recomputed": round(sum(a.tokens_recomputed for a in plan.actions)),
        "gbytes_moved": round(sum(a.bytes_moved for a in plan.actions) / 1e9, 3),
        "last_ready_s": round(max(needs_source, default=0.0), 2),
        "ready_by_s": settings.ready_by_s,
        "deadline_s": settings.time_left_s,
        "completion_median_s": round(float(np.median(placed)), 2) if placed else None,
        "completion_max_s": round(max(placed), 2) if placed else None,
    }


def time_planning(
    requests: list[InFlight], targets: list[TargetWorker], settings: DrainSettings, repeats: int
) -> dict[str, float]:
    for _ in range(WARMUP_CALLS):
        plan_drain(requests, targets, settings)
    gc.collect()
    ms: list[float] = []
    for _ in range(repeats):
        started = time.perf_counter()
        plan_drain(requests, targets, settings)
        ms.append((time.perf_counter() - started) * 1e3)
    p50, p99 = np.percentile(ms, [50, 99])
    return {"median_ms": round(float(p50), 3), "p99_ms": round(float(p99), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=20260730, help="seed of the generated scenarios")
    parser.add_argument("--repeats", type=int, default=200, help="timed plan_drain calls per policy")
    parser.add_argument("--out", type=Path, help="also write the JSON to this file")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be ≥ 1")
    source = resolve_catalog("seed").type("h100_8x")
    started = time.perf_counter()
    scenarios: list[dict[str, object]] = []
    lost_by_deadline = 0
    planning_256: list[float] = []
    for n in SIZES:
        for notice_name, notice_s in NOTICES.items():
            for link_name, link in LINKS.items():
                name = f"{n}req/{notice_name}/{link_name}"
                print(name, file=sys.stderr, flush=True)
                rng = np.random.default_rng([args.seed, n, int(notice_s), int(link / 1e6)])
                requests = make_requests(rng, n)
                targets = make_targets(rng)
                policies: dict[str, object] = {}
                for policy in POLICIES:
                    settings = DrainSettings(
                        time_left_s=notice_s,
                        source_decode_tokens_per_s=source.decode_tokens_per_s,
                        source_max_batch=max(source.max_batch, n),
                        same_node_bytes_per_s=SAME_NODE_BYTES_PER_S,
                        cross_node_bytes_per_s=link,
                        safety_margin_s=SAFETY_MARGIN_S,
                        block_tokens=BLOCK_TOKENS,
                        policy=policy,
                    )
                    plan = plan_drain(requests, targets, settings)
                    timing = time_planning(requests, targets, settings, args.repeats)
                    policies[policy] = {**summarize(plan, settings), "planning": timing}
                    if policy == "deadline":
                        lost_by_deadline += len(plan.at_risk)
                        if n == 256:
                            planning_256.append(timing["p99_ms"])
                scenarios.append(
                    {
                        "scenario": name,
                        "requests": n,
                        "notice_s": notice_s,
                        "cross_node_gbit_per_s": link * 8 / 1e9,
                        "free_slots": {t.worker_id: t.free_slots for t in targets},
                        "context_tokens": sum(r.prompt_tokens + r.generated_tokens for r in requests),
                        "policies": policies,
                    }
                )
    report = {
        "benchmark": "preemption drain plans (agent.core.drain.plan_drain): deadline vs the seed's rules",
        "command": " ".join(
            [".venv/bin/python bench/preemption_plans.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "seed": args.seed,
        "repeats": args.repeats,
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "targets": {
            "deadline_lost_total": lost_by_deadline,
            "deadline_lost_zero": lost_by_deadline == 0,
            "planning_256_p99_ms_limit": PLANNING_TARGET_MS,
            "planning_256_p99_ms_worst": max(planning_256),
            "planning_met": max(planning_256) < PLANNING_TARGET_MS,
        },
        "scenarios": scenarios,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    text = msgspec.json.format(msgspec.json.encode(report), indent=2).decode() + "\n"
    sys.stdout.write(text)
    if args.out is not None:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
