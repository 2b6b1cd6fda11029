"""From a named demand source to the planning horizon the commitment planner and the table work on.

Demand sources: ``seed-example`` (the stated profile of :mod:`agent.sim.examples`) and
``servegen:<model>`` (a real 14-day Alibaba ServeGen trace from the shared data directory). Either is
recorded into a :class:`DemandProfiler` built from the settings, which then forecasts the horizon.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.config import Settings
from agent.core.catalog import Catalog
from agent.core.commitment import PlanningStep
from agent.core.comparison import planning_steps, scale_to_peak
from agent.core.profiler import DemandProfiler
from agent.sim.examples import seed_example_history
from agent.sim.traces import load_servegen


class DemandSourceError(ValueError):
    """An unknown or unreadable demand source."""


@dataclass(frozen=True, slots=True)
class Horizon:
    steps: list[PlanningStep]
    description: str
    profiler: DemandProfiler


def record_demand(source: str, profiler: DemandProfiler) -> tuple[float, str]:
    """Record the source's history into ``profiler``; returns (end of history, description)."""
    if source == "seed-example":
        history = seed_example_history(step_minutes=profiler.bin_minutes)
        for t, demand in history:
            profiler.record(t, demand.rps, demand.prompt_tokens, demand.output_tokens)
        end = history[-1][0] + profiler.bin_minutes * 60
        return end, "seed-example (stated diurnal profile, 4 weeks of history)"
    if source.startswith("servegen:"):
        model = source.split(":", 1)[1]
        trace = load_servegen(model)
        for step in trace.steps:
            d = step.demand
            profiler.record(step.time_s, d.rps, d.prompt_tokens, d.output_tokens)
        days = trace.duration_s / 86400
        return trace.end_s, f"servegen:{model} (Alibaba ServeGen, {days:.0f} days of history)"
    raise DemandSourceError(f"unknown demand source {source!r}: use seed-example or servegen:<model>")


def build_horizon(source: str, settings: Settings, catalog: Catalog, peak_nodes: int | None) -> Horizon:
    profiler = settings.profiler.build()
    end, description = record_demand(source, profiler)
    steps = planning_steps(
        profiler.predict, end, settings.planner.horizon_days * 24, settings.profiler.bin_minutes
    )
    if peak_nodes is not None:
        try:
            steps = scale_to_peak(catalog, steps, peak_nodes, settings.slo_config())
        except ValueError as exc:
            raise DemandSourceError(f"demand {source!r}: {exc}") from None
        description += f", scaled so the busiest hour needs {peak_nodes} × {catalog.main_type.name}"
    return Horizon(steps=steps, description=description, profiler=profiler)
