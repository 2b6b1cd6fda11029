"""The hindsight optimum: the cheapest fleet that knew demand and spot availability in advance.

A lower bound for every policy in the backtest: one integer program over the whole scored horizon,
with the reserved count per type chosen optimally too. At every block of steps, reserved + spot +
on-demand capacity (at the SLO's utilization target, no reliability discount: hindsight knows every
reclaim) covers every step of the block, and spot nodes of a type never exceed what its pools offer
in the block's leanest moment. It ignores boot delays and notices: foresight launches early.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint

from agent.core.capacity import SloConfig, rps_per_instance
from agent.core.catalog import Catalog, Tier
from agent.core.demand import Demand
from agent.core.highs import solve_milp


@dataclass(frozen=True, slots=True)
class HindsightPlan:
    cost: float
    hours: float
    reserved: dict[str, int]
    node_hours: dict[Tier, float]
    blocks: int
    solve_seconds: float
    lower_bound: float
    """The solver's proof: no plan costs less (equals ``cost`` within the 0.1% gap unless time ran out)."""
    spot: np.ndarray
    """Spot nodes per block and type (catalog order)."""
    ondemand: np.ndarray


def hindsight_plan(
    catalog: Catalog,
    demand: Sequence[Demand],
    spot_available: np.ndarray,
    step_h: float,
    slo: SloConfig | None = None,
    *,
    block_steps: int = 5,
    time_limit_s: float = 20.0,
) -> HindsightPlan:
    """``spot_available[step, type_index]``: spot nodes of each type (summed over its pools) at each step."""
    started = time.perf_counter()
    slo = slo or SloConfig()
    types = list(catalog.types.values())
    n_types = len(types)
    n_steps = len(demand)
    if spot_available.shape != (n_steps, n_types):
        raise ValueError(f"spot_available has shape {spot_available.shape}, expected ({n_steps}, {n_types})")
    n_blocks = math.ceil(n_steps / block_steps)
    hours = n_steps * step_h
    # Columns: reserved per type, then per block: spot per type, on-demand per type.
    width = n_types + 2 * n_types * n_blocks
    cost = np.zeros(width)
    upper = np.full(width, np.inf)
    rows: list[np.ndarray] = []
    lower_bounds: list[float] = []
    for j, t in enumerate(types):
        cost[j] = t.reserved_hourly * hours
    for b in range(n_blocks):
        lo, hi = b * block_steps, min(n_steps, (b + 1) * block_steps)
        block_h = (hi - lo) * step_h
        # One coverage row per token mix in the block, at that mix's highest rate: a step with fewer but
        # longer requests can need more nodes than the block's busiest step.
        peaks: dict[tuple[float, float], Demand] = {}
        for d in demand[lo:hi]:
            key = (d.prompt_tokens, d.output_tokens)
            if key not in peaks or d.rps > peaks[key].rps:
                peaks[key] = d
        base = n_types + 2 * n_types * b
        alone = [0] * n_types
        for peak in peaks.values():
            row = np.zeros(width)
            for j, t in enumerate(types):
                cap = rps_per_instance(t, peak.prompt_tokens, peak.output_tokens, slo)
                row[j] = row[base + j] = row[base + n_types + j] = cap
                # Beyond covering the block alone, a node of this type is never needed.
                alone[j] = max(alone[j], math.ceil(peak.rps / cap) + 1 if cap > 0 else 0)
            rows.append(row)
            lower_bounds.append(peak.rps)
        for j, t in enumerate(types):
            cost[base + j] = t.spot_hourly * block_h
            cost[base + n_types + j] = t.ondemand_hourly * block_h
            upper[base + j] = min(float(np.min(spot_available[lo:hi, j])), alone[j])
            upper[base + n_types + j] = alone[j]
    # Reserved nodes of a type beyond what covers the busiest block alone are never needed either.
    for j in range(n_types):
        upper[j] = max(upper[n_types + 2 * n_types * b + n_types + j] for b in range(n_blocks))
    a = np.vstack(rows)
    res = solve_milp(
        cost,
        LinearConstraint(a, np.array(lower_bounds), np.full(len(rows), np.inf)),
        np.ones(width),
        Bounds(np.zeros(width), upper),
        gap=1e-3,
        time_limit_s=time_limit_s,
    )
    if res.x is None:
        raise RuntimeError(f"hindsight program failed: {res.message}")
    x = np.round(np.asarray(res.x, dtype=float))
    reserved = {t.name: int(x[j]) for j, t in enumerate(types)}
    spot = np.zeros((n_blocks, n_types))
    od = np.zeros((n_blocks, n_types))
    node_hours: dict[Tier, float] = {"reserved": sum(reserved.values()) * hours, "spot": 0.0, "ondemand": 0.0}
    total = sum(t.reserved_hourly * reserved[t.name] for t in types) * hours
    for b in range(n_blocks):
        lo, hi = b * block_steps, min(n_steps, (b + 1) * block_steps)
        block_h = (hi - lo) * step_h
        base = n_types + 2 * n_types * b
        for j, t in enumerate(types):
            spot[b, j] = x[base + j]
            od[b, j] = x[base + n_types + j]
            total += (t.spot_hourly * spot[b, j] + t.ondemand_hourly * od[b, j]) * block_h
            node_hours["spot"] += spot[b, j] * block_h
            node_hours["ondemand"] += od[b, j] * block_h
    return HindsightPlan(
        cost=total,
        hours=hours,
        reserved=reserved,
        node_hours=node_hours,
        blocks=n_blocks,
        solve_seconds=time.perf_counter() - started,
        lower_bound=float(getattr(res, "mip_dual_bound", total)),
        spot=spot,
        ondemand=od,
    )
