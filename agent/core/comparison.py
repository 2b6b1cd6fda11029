"""The seed's monthly cost comparison, computed from a demand forecast instead of asserted.

Rows: all on-demand and all reserved (a static fleet sized for the forecast's peak, as the seed's
baselines), reserved + spot burst (the commitment planner with no on-demand tier), hybrid optimized (the
commitment planner with every tier), and the seed's own P25/P75/P99 rule priced on the same hours.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from agent.core.capacity import SloConfig
from agent.core.catalog import HOURS_PER_MONTH, Catalog
from agent.core.commitment import PlanningStep, nodes_needed, plan_commitment, seed_rule
from agent.core.demand import DemandForecast
from agent.core.optimizer import OptimizerConfig


@dataclass(frozen=True, slots=True)
class ComparisonRow:
    strategy: str
    reserved: int
    spot: float
    """Mean spot nodes over the horizon."""
    ondemand: float
    """Mean on-demand nodes over the horizon."""
    monthly_cost: float
    savings: float
    """Fraction saved against the all-on-demand row."""
    detail: str = ""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def planning_steps(
    forecast_at: Callable[[float], DemandForecast],
    start: float,
    horizon_hours: float,
    step_minutes: int,
) -> list[PlanningStep]:
    """The horizon as the tick sees it: P75 now, and the highest P95 of the coming hour, at every step."""
    step_s = step_minutes * 60
    n_steps = int(horizon_hours * 3600 // step_s)
    ahead = max(1, 3600 // step_s)
    forecasts = [forecast_at(start + i * step_s) for i in range(n_steps + ahead)]
    steps = []
    for i in range(n_steps):
        window = forecasts[i + 1 : i + 1 + ahead]
        next_hour = max((f.p95 for f in window), key=lambda d: d.rps)
        steps.append(PlanningStep(now=forecasts[i].p75, next_hour=next_hour, hours=step_s / 3600))
    return steps


def scale_to_peak(
    catalog: Catalog, steps: Sequence[PlanningStep], peak_nodes: int, slo: SloConfig
) -> list[PlanningStep]:
    """Scale the rates so that the busiest step needs exactly ``peak_nodes`` of the catalog's main type."""
    peak = max((nodes_needed(catalog, s, slo) for s in steps), default=0.0)
    if peak <= 0:
        raise ValueError("the forecast has no traffic to scale")
    factor = peak_nodes / peak
    return [
        PlanningStep(now=s.now.scaled(factor), next_hour=s.next_hour.scaled(factor), hours=s.hours)
        for s in steps
    ]


def monthly_comparison(
    catalog: Catalog,
    steps: Sequence[PlanningStep],
    slo: SloConfig | None = None,
    cfg: OptimizerConfig | None = None,
    *,
    levels: int = 48,
) -> list[ComparisonRow]:
    slo = slo or SloConfig()
    cfg = cfg or OptimizerConfig()
    main = catalog.main_type
    peak = max(math.ceil(nodes_needed(catalog, s, slo) - 1e-9) for s in steps)
    peak = max(peak, cfg.min_non_spot_instances)
    all_od = peak * main.ondemand_hourly * HOURS_PER_MONTH
    all_reserved = peak * main.reserved_hourly * HOURS_PER_MONTH

    def saving(cost: float) -> float:
        return 1.0 - cost / all_od if all_od else 0.0

    burst = plan_commitment(catalog, steps, slo, cfg, allow_ondemand=False, levels=levels)
    hybrid = plan_commitment(catalog, steps, slo, cfg, levels=levels)
    rule = seed_rule(catalog, steps, slo)
    rows = [
        ComparisonRow("all on-demand", 0, 0.0, float(peak), all_od, 0.0, f"{peak} × {main.name}, 24/7"),
        ComparisonRow(
            "all reserved (1yr)", peak, 0.0, 0.0, all_reserved, saving(all_reserved), f"{peak} × {main.name}"
        ),
    ]
    for name, plan in (("reserved + spot burst", burst), ("hybrid optimized", hybrid)):
        reserved = sum(plan.reserved.values())
        mix = ", ".join(f"{n} × {t}" for t, n in plan.reserved.items() if n) or "none"
        rows.append(
            ComparisonRow(
                name,
                reserved,
                plan.avg_instances["spot"],
                plan.avg_instances["ondemand"],
                plan.monthly_cost,
                saving(plan.monthly_cost),
                f"reserved: {mix}" if plan.feasible else "infeasible",
            )
        )
    rows.append(
        ComparisonRow(
            "seed rule (P25/P75/P99)",
            rule.reserved,
            rule.avg_instances["spot"],
            rule.avg_instances["ondemand"],
            rule.monthly_cost,
            saving(rule.monthly_cost),
            f"{rule.type_name}; keeps no non-spot share or pool spread"
            + (f"; short of demand for {rule.shortfall_hours:.1f} h" if rule.shortfall_hours else "")
            + f"; the seed's own formula claims ${rule.seed_formula_monthly_cost:,.0f}",
        )
    )
    return rows
