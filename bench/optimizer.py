"""Solve time of the tick optimizer, and what the seed's LP-then-round-up method gets wrong.

For each catalog — the built-in ``seed`` catalog (2 types × 1 pool) and synthetic catalogs of 4 GPU types
with 4, 16 and 64 pools in total — a deterministic pseudo-random sequence of ticks (numpy
``default_rng(--seed)``) is replayed twice: with the default ``OptimizerConfig()``, which is what the agent
plans with (step limits +2/−1, a 50% non-spot floor), and with ``max_step_up=None, max_step_down=None``.

Each tick has a demand (a daily cycle times a random walk, 3–300 rps, capped so that 45 H100 nodes cover
the next hour; prompt 200–4000 and output 100–1000 tokens), a spot market (price overrides around the
catalog's spot price, availability limits on some pools, 0 on a few, per-pool reclaim rates in
[0.03, 0.15]) and the fleet the previous tick's ``optimize_tick`` answer left, minus random spot
reclaims. Reserved nodes are held on some types. ``optimize_tick`` and ``seed_lp_ceil`` run on the same
input; ``time.perf_counter`` around each call (after a few untimed warm-up calls) gives the solve times.

Figures per catalog and configuration: median, p90, p99 and max milliseconds of each method; the MILP's
status counts (and median time per status: a ``relaxed`` tick solves twice); for LP+ceil the share of
ticks whose rounded answer breaks a constraint (``violations`` non-empty, step limits checked), the share
where the LP relaxation itself is infeasible (``seed_lp_ceil`` then holds the fleet), which constraints
break, and the mean (and max) extra hourly cost over the MILP, as a ratio, on ticks where both answers
satisfy every constraint. Targets: MILP p99 ≤ 20 ms on the seed catalog and ≤ 250 ms at 64 pools (each
in both configurations).

Run: ``.venv/bin/python bench/optimizer.py`` (``--quick`` for 30 ticks, ``--ticks N``, ``--seed S``,
``--out PATH`` to also write the JSON to a file); prints one JSON object, progress goes to stderr.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import math
import os
import platform
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import msgspec
import numpy as np
import scipy

from agent.config import resolve_catalog
from agent.core import highs, optimizer, optimizer_config, tick_program
from agent.core.capacity import SloConfig, rps_per_instance
from agent.core.catalog import Catalog, InstanceType
from agent.core.demand import Demand
from agent.core.optimizer import (
    Allocation,
    Fleet,
    OptimizerConfig,
    PoolKey,
    SpotMarket,
    TickInput,
    optimize_tick,
    seed_lp_ceil,
    violations,
)

TICKS_PER_HOUR = 12  # a tick every 5 minutes
WARMUP_CALLS = 3
SYNTHETIC_POOLS = (4, 16, 64)
TARGET_P99_MS = {"seed": 20.0, "synthetic-64": 250.0}
CONFIGS = {
    "default": OptimizerConfig(),
    "no_step_limits": OptimizerConfig(max_step_up=None, max_step_down=None),
}
# Per synthetic type: base type of the seed catalog, price factor, throughput factor, reclaim per hour,
# quota. Factors are spread so that no type is the cheapest per request for every token mix.
_SYNTHETIC_TYPES: tuple[tuple[str, float, float, float, int | None], ...] = (
    ("h100_8x", 0.90, 0.95, 0.03, None),
    ("a100_8x", 1.10, 1.15, 0.07, None),
    ("h100_8x", 1.00, 0.90, 0.11, None),
    ("a100_8x", 0.95, 1.05, 0.15, 24),
)
_RESERVED = {"seed": {"h100_8x": 1}, "synthetic": {"h100_8x-0": 2, "h100_8x-2": 1}}
_DEMAND_RPS = (3.0, 300.0)
_DEMAND_MID_RPS = 60.0
_PROMPT_TOKENS = (200.0, 4000.0)
_OUTPUT_TOKENS = (100.0, 1000.0)
_MAX_NODES = 45.0  # H100 nodes (seed type) for the next hour's demand at most: answers stay near ≤ 60


@dataclass(frozen=True, slots=True)
class Tick:
    """A tick's inputs other than the fleet (which comes from the previous answer)."""

    demand_now: Demand
    demand_next: Demand
    market: SpotMarket


def synthetic_catalog(total_pools: int) -> Catalog:
    """Four GPU types around the seed's h100_8x / a100_8x figures, each in ``total_pools / 4`` zones."""
    if total_pools % len(_SYNTHETIC_TYPES):
        raise ValueError(f"total_pools must be a multiple of {len(_SYNTHETIC_TYPES)}")
    seed = resolve_catalog("seed")
    zones = tuple(f"zone-{z:02d}" for z in range(total_pools // len(_SYNTHETIC_TYPES)))
    types: dict[str, InstanceType] = {}
    for k, (base_name, price_f, speed_f, reclaim, quota) in enumerate(_SYNTHETIC_TYPES):
        base = seed.type(base_name)
        name = f"{base_name}-{k}"
        types[name] = InstanceType(
            name=name,
            gpus=base.gpus,
            gpu_type=base.gpu_type,
            ondemand_hourly=round(base.ondemand_hourly * price_f, 2),
            reserved_hourly=round(base.reserved_hourly * price_f, 2),
            spot_hourly=round(base.spot_hourly * price_f, 2),
            spot_reclaim_per_hour=reclaim,
            max_batch=base.max_batch,
            prefill_tokens_per_s=base.prefill_tokens_per_s * speed_f,
            decode_tokens_per_s=base.decode_tokens_per_s * speed_f,
            pools=zones,
            max_instances=quota,
        )
    return Catalog(name=f"synthetic-{total_pools}", types=types, source="bench/optimizer.py")


def _walk(rng: np.random.Generator, value: float, sigma: float, bounds: tuple[float, float]) -> float:
    """One multiplicative random-walk step, reflected into ``bounds``."""
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    x = math.log(value) + float(rng.normal(0.0, sigma))
    if x < lo:
        x = 2 * lo - x
    if x > hi:
        x = 2 * hi - x
    return math.exp(min(max(x, lo), hi))


def make_demands(count: int, seed: int, slo: SloConfig) -> list[tuple[Demand, Demand]]:
    """(current P75, next-hour P95) per tick, the same for every catalog.

    The rate is a daily cycle (a tick every 5 minutes; ×13 from trough to peak) times a random-walk level
    with rare jumps (a launch, an incident), kept within 3–300 rps; the token mix is a random walk.
    """
    rng = np.random.default_rng([seed, 0])
    yardstick = resolve_catalog("seed").type("h100_8x")
    phase = float(rng.uniform(0.0, 2 * math.pi))
    level = float(rng.uniform(0.5, 2.0))
    prompt = float(rng.uniform(*_PROMPT_TOKENS))
    output = float(rng.uniform(*_OUTPUT_TOKENS))
    out: list[tuple[Demand, Demand]] = []
    for t in range(count):
        if rng.random() < 0.02:
            level = float(np.exp(rng.uniform(-1.0, 1.0)))
        level = _walk(rng, level, 0.08, (math.exp(-1.0), math.exp(1.0)))
        cycle = math.sin(2 * math.pi * t / (24 * TICKS_PER_HOUR) + phase)
        rps = min(max(_DEMAND_MID_RPS * math.exp(1.3 * cycle) * level, _DEMAND_RPS[0]), _DEMAND_RPS[1])
        prompt = _walk(rng, prompt, 0.05, _PROMPT_TOKENS)
        output = _walk(rng, output, 0.05, _OUTPUT_TOKENS)
        next_prompt = _walk(rng, prompt, 0.03, _PROMPT_TOKENS)
        next_output = _walk(rng, output, 0.03, _OUTPUT_TOKENS)
        rps_next = rps * float(rng.uniform(1.0, 1.4))
        cap = rps_per_instance(yardstick, next_prompt, next_output, slo)
        scale = min(1.0, _MAX_NODES * cap / rps_next)
        out.append((Demand(rps * scale, prompt, output), Demand(rps_next * scale, next_prompt, next_output)))
    return out


def make_ticks(catalog: Catalog, demands: list[tuple[Demand, Demand]], seed: int) -> list[Tick]:
    """``demands`` with a spot market for ``catalog``: price and availability random walks per pool."""
    pools = catalog.pools()
    rng = np.random.default_rng([seed, 1, len(pools)])
    reclaim = {
        key: float(np.clip(catalog.types[key[0]].spot_reclaim_per_hour * rng.uniform(0.7, 1.3), 0.03, 0.15))
        for key in pools
    }
    price_factor = {key: float(rng.uniform(0.8, 1.2)) for key in pools}
    priced = {key: bool(rng.random() < 0.8) for key in pools}
    limited = {key: bool(rng.random() < 0.5) for key in pools}
    level = {key: int(0 if rng.random() < 0.2 else rng.integers(1, 15)) for key in pools}
    ticks: list[Tick] = []
    for demand_now, demand_next in demands:
        for key in pools:
            price_factor[key] = _walk(rng, price_factor[key], 0.03, (0.6, 1.4))
            if rng.random() < 0.02:
                limited[key] = not limited[key]
            if rng.random() < 0.01:
                level[key] = 0  # the pool runs dry
            elif rng.random() < 0.3:
                level[key] = max(0, level[key] + int(rng.integers(-2, 3)))
        market = SpotMarket(
            price={
                key: round(catalog.types[key[0]].spot_hourly * price_factor[key], 4)
                for key in pools
                if priced[key]
            },
            available={key: level[key] for key in pools if limited[key]},
            reclaim_per_hour=reclaim,
        )
        ticks.append(Tick(demand_now, demand_next, market))
    return ticks


def _initial_fleet(catalog: Catalog, reserved: dict[str, int]) -> Fleet:
    pools = catalog.pools()
    spot = {pools[0]: 2}
    ondemand = {pools[-1]: 1}
    if len(pools) > 2:
        spot[pools[len(pools) // 2]] = 1
    return Fleet(reserved=reserved, spot=spot, ondemand=ondemand)


def _reclaimed(
    rng: np.random.Generator, fleet_spot: dict[PoolKey, int], market: SpotMarket
) -> dict[PoolKey, int]:
    """Spot nodes still up one tick later: each is reclaimed at its pool's hourly rate / ticks per hour."""
    out: dict[PoolKey, int] = {}
    for key, n in fleet_spot.items():
        keep = int(rng.binomial(n, 1.0 - market.reclaim_per_hour.get(key, 0.0) / TICKS_PER_HOUR))
        if keep:
            out[key] = keep
    return out


def _timed(fn: Callable[[], Allocation]) -> tuple[Allocation | None, float]:
    """The answer (None when the method raised: the LP relaxation can be infeasible) and milliseconds."""
    started = time.perf_counter()
    try:
        alloc: Allocation | None = fn()
    except RuntimeError:
        alloc = None
    return alloc, (time.perf_counter() - started) * 1e3


def _stats(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {
        "median_ms": round(float(p50), 3),
        "p90_ms": round(float(p90), 3),
        "p99_ms": round(float(p99), 3),
        "max_ms": round(float(a.max()), 3),
    }


def run(
    catalog: Catalog,
    ticks: list[Tick],
    reserved: dict[str, int],
    cfg: OptimizerConfig,
    slo: SloConfig,
    seed: int,
) -> tuple[dict[str, object], float]:
    """Replay ``ticks`` with the MILP's answer as the next fleet; time both methods on each input.

    Returns the figures and the MILP's p99 milliseconds (what the targets are about).
    """
    rng = np.random.default_rng([seed, len(catalog.pools()), 1])
    fleet = _initial_fleet(catalog, reserved)
    first = TickInput(ticks[0].demand_now, ticks[0].demand_next, fleet, ticks[0].market)
    for _ in range(WARMUP_CALLS):
        _timed(partial(optimize_tick, catalog, first, slo, cfg))
        _timed(partial(seed_lp_ceil, catalog, first, slo, cfg))
    milp_ms: list[float] = []
    lp_ms: list[float] = []
    ms_by_status: dict[str, list[float]] = {}
    statuses: Counter[str] = Counter()
    fallbacks: Counter[str] = Counter()
    lp_broken: Counter[str] = Counter()
    milp_broken = lp_violating = lp_failed = 0
    extra_cost: list[float] = []
    nodes: list[int] = []
    gc.collect()
    for tick in ticks:
        inp = TickInput(tick.demand_now, tick.demand_next, fleet, tick.market)
        milp, t_milp = _timed(partial(optimize_tick, catalog, inp, slo, cfg))
        lp, t_lp = _timed(partial(seed_lp_ceil, catalog, inp, slo, cfg))
        if milp is None:
            raise RuntimeError(f"{catalog.name}: optimize_tick raised on tick {len(milp_ms)}")
        milp_ms.append(t_milp)
        lp_ms.append(t_lp)
        statuses[milp.status] += 1
        ms_by_status.setdefault(milp.status, []).append(t_milp)
        if milp.status == "fallback":
            fallbacks["no_solution" if milp.reason.startswith("solver found no") else "short"] += 1
        nodes.append(milp.total("reserved") + milp.total("spot") + milp.total("ondemand"))
        milp_ok = not violations(catalog, inp, milp, slo, cfg, step_limits=True)
        if milp.status == "optimal" and not milp_ok:
            milp_broken += 1
        if lp is None or lp.status == "fallback":  # the LP relaxation had no solution
            lp_failed += 1
        else:
            broken_lp = violations(catalog, inp, lp, slo, cfg, step_limits=True)
            if broken_lp:
                lp_violating += 1
                lp_broken.update({name.split(":")[0] for name in broken_lp})
            elif milp_ok and milp.hourly_cost > 0:
                extra_cost.append(lp.hourly_cost / milp.hourly_cost - 1.0)
        fleet = Fleet(
            reserved=reserved, spot=_reclaimed(rng, milp.spot, tick.market), ondemand=dict(milp.ondemand)
        )
    n = len(ticks)
    milp_stats = _stats(milp_ms)
    figures: dict[str, object] = {
        "ticks": n,
        "nodes_per_answer": {"min": min(nodes), "median": float(np.median(nodes)), "max": max(nodes)},
        "milp": {
            **milp_stats,
            "status": {s: statuses.get(s, 0) for s in ("optimal", "relaxed", "fallback")},
            "median_ms_by_status": {
                s: round(float(np.median(v)), 3) for s, v in sorted(ms_by_status.items())
            },
            "fallback_kinds": dict(fallbacks.most_common()),
            "optimal_answers_violating": milp_broken,
        },
        "lp_ceil": {
            **_stats(lp_ms),
            "violating_share": round(lp_violating / n, 4),
            "lp_infeasible_share": round(lp_failed / n, 4),
            "violated_constraints": dict(lp_broken.most_common()),
            "both_feasible_ticks": len(extra_cost),
            "mean_extra_cost_ratio": round(float(np.mean(extra_cost)), 5) if extra_cost else None,
            "max_extra_cost_ratio": round(float(np.max(extra_cost)), 5) if extra_cost else None,
        },
    }
    return figures, milp_stats["p99_ms"]


def _machine() -> dict[str, object]:
    affinity = getattr(os, "sched_getaffinity", None)
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(affinity(0)) if affinity else None,
        "scipy": scipy.__version__,
        "numpy": np.__version__,
    }


def _source_digest() -> str:
    """Which version of the optimizer the figures are for (first 12 hex digits): its modules, hashed."""
    digest = hashlib.sha256()
    for module in (optimizer, tick_program, optimizer_config, highs):
        digest.update(Path(module.__file__ or "").read_bytes())
    return digest.hexdigest()[:12]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--ticks", type=int, default=300, help="ticks per catalog and configuration")
    parser.add_argument("--quick", action="store_true", help="30 ticks per catalog (overrides --ticks)")
    parser.add_argument("--seed", type=int, default=20260730, help="seed of the tick sequences")
    parser.add_argument("--out", type=Path, help="also write the JSON to this file")
    args = parser.parse_args(argv)
    n_ticks = 30 if args.quick else args.ticks
    if n_ticks < 1:
        parser.error("--ticks must be ≥ 1")
    slo = SloConfig()
    catalogs = [resolve_catalog("seed"), *(synthetic_catalog(p) for p in SYNTHETIC_POOLS)]
    demands = make_demands(n_ticks, args.seed, slo)
    started = time.perf_counter()
    results: dict[str, dict[str, object]] = {}
    p99: dict[str, dict[str, float]] = {}
    for catalog in catalogs:
        reserved = _RESERVED["seed" if catalog.name == "seed" else "synthetic"]
        ticks = make_ticks(catalog, demands, args.seed)
        entry: dict[str, object] = {"types": len(catalog.types), "pools": len(catalog.pools())}
        for cfg_name, cfg in CONFIGS.items():
            print(f"{catalog.name} {cfg_name}: {n_ticks} ticks", file=sys.stderr, flush=True)
            entry[cfg_name], milp_p99 = run(catalog, ticks, reserved, cfg, slo, args.seed)
            p99.setdefault(catalog.name, {})[cfg_name] = milp_p99
        results[catalog.name] = entry
    targets = {
        name: {
            "milp_p99_ms_limit": limit,
            "milp_p99_ms": p99[name],
            "met": all(v <= limit for v in p99[name].values()),
        }
        for name, limit in TARGET_P99_MS.items()
    }
    report = {
        "benchmark": "tick optimizer solve time (optimize_tick MILP vs seed_lp_ceil)",
        "command": " ".join(
            [".venv/bin/python bench/optimizer.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "seed": args.seed,
        "ticks": n_ticks,
        "configs": {
            name: {
                "max_step_up": cfg.max_step_up,
                "max_step_down": cfg.max_step_down,
                "min_non_spot_fraction": cfg.min_non_spot_fraction,
            }
            for name, cfg in CONFIGS.items()
        },
        "machine": _machine(),
        "optimizer_sha256": _source_digest(),
        "targets": targets,
        "catalogs": results,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    text = msgspec.json.format(msgspec.json.encode(report), indent=2).decode() + "\n"
    sys.stdout.write(text)
    if args.out is not None:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
