"""``cost-agent backtest``: inputs from named traces, every strategy on the same inputs, one report.

The spot traces were measured on other instance types (V100, A100) than most catalogs hold: each trace
stands in for the availability of one pool (zone), and every type of the catalog gets one pool per trace,
with the trace's counts (times ``spot_scale``) as its availability there.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from agent.config import Settings
from agent.core.capacity import SloConfig, rps_per_instance
from agent.core.catalog import Catalog
from agent.core.demand import Demand
from agent.core.hindsight import HindsightPlan, hindsight_plan
from agent.core.optimizer import OptimizerConfig
from agent.core.queue_slo import QueueScore, queue_score
from agent.core.rolling_demand import RollingDemand
from agent.sim.foresight import (
    ForesightPolicy,
    Hedge,
    HedgeFamily,
    cheapest_hedge,
    demand_policy,
    hedge_score,
    lead_steps_for,
)
from agent.sim.replay import BacktestResult, Market, Policy, SimConfig, StepRecord, run_backtest
from agent.sim.spot_traces import load_spot_traces
from agent.sim.strategies import RollingPolicy, SeedHybridPolicy, SkyServePolicy, StaticPolicy, peak_nodes
from agent.sim.strategy_names import STRATEGIES as STRATEGIES
from agent.sim.strategy_names import parse_strategies as parse_strategies
from agent.sim.traces import DemandStep, DemandTrace, load_demand, peak_nodes_factor, resample, scale_trace


def sim_config(
    settings: Settings, *, step_s: float, notice_s: float, boot_s: float, warmup_days: float
) -> SimConfig:
    """The simulation's settings: the tick interval, SLO and queue delay from the agent's settings."""
    return SimConfig(
        step_s=step_s,
        policy_interval_s=settings.optimizer.interval_seconds,
        notice_s=notice_s,
        boot_s=boot_s,
        warmup_days=warmup_days,
        slo=settings.slo_config(),
        queue_delay_s=settings.slo.queue_delay_seconds,
    )


@dataclass(frozen=True, slots=True)
class Setup:
    catalog: Catalog
    demand: list[Demand]
    market: Market
    start_epoch: float
    sim: SimConfig
    inputs: dict[str, object]

    @property
    def warmup_steps(self) -> int:
        return min(len(self.demand), round(self.sim.warmup_days * 86400 / self.sim.step_s))


@dataclass(frozen=True, slots=True)
class StrategyReport:
    name: str
    cost: float
    monthly_cost: float
    cost_per_mtok: float | None
    slo_attainment: float
    slo_queue: float
    """Share of tokens served within ``queue_delay_s`` of arrival, the capacity replayed as a FIFO queue."""
    queue_delay_s: float
    queue_p99_delay_s: float
    """Token-weighted 99th percentile of the queue's wait (``math.inf``: over 1% never served)."""
    shortfall_minutes: float
    preemptions: int
    ondemand_hours: float
    reserved: dict[str, int]
    ratio_to_hindsight: float | None = None
    ratio_to_foresight_demand: float | None = None
    detail: str = ""
    """How a searched strategy was set: the SkyServe replicas, the yardstick's hedge."""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, object]:
        """JSON has no infinity (``json.dump`` would write ``Infinity``): an infinite wait is ``None``."""
        return {
            k: None if isinstance(v, float) and math.isinf(v) else v
            for k, v in dataclasses.asdict(self).items()
        }


@dataclass(slots=True)
class BacktestRun:
    setup: Setup
    reports: list[StrategyReport] = field(default_factory=list)
    records: dict[str, tuple[StepRecord, ...]] = field(default_factory=dict)
    hindsight: HindsightPlan | None = None

    def document(self) -> dict[str, object]:
        """What ``--json`` writes: every strategy's figures and the inputs they came from."""
        return {
            "strategies": [{k: v for k, v in r.to_dict().items() if k != "seconds"} for r in self.reports],
            "inputs": self.setup.inputs,
        }


def build_setup(
    catalog: Catalog,
    trace_spec: str,
    spot_spec: str,
    sim: SimConfig,
    *,
    peak: int | None = None,
    scale: float = 1.0,
    spot_scale: float = 1.0,
    tokens: tuple[float, float] | None = None,
) -> Setup:
    """The inputs every strategy replays. ``tokens`` (mean prompt, output) fills the token lengths of a
    trace that has none (a CSV of ``time_s,rps``, ServeGen windows without statistics)."""
    prompt, output = tokens if tokens is not None else (None, None)
    trace = resample(load_demand(trace_spec, prompt_tokens=prompt, output_tokens=output), sim.step_s)
    factor = peak_nodes_factor(trace, catalog.main_type, sim.slo, peak) if peak else scale
    trace = fill_gaps(scale_trace(trace, factor), sim.step_s)
    warmup = round(sim.warmup_days * 86400 / sim.step_s)
    if warmup >= len(trace.steps):
        raise ValueError(
            f"the warm-up ({sim.warmup_days:g} days) covers the whole trace "
            f"({len(trace.steps) * sim.step_s / 86400:.2f} days): nothing would be scored"
        )
    spot = load_spot_traces(spot_spec, scale=spot_scale)
    pools = tuple(s.pool for s in spot)
    catalog = dataclasses.replace(
        catalog, types={k: dataclasses.replace(t, pools=pools) for k, t in catalog.types.items()}
    )
    keys = tuple(catalog.pools())
    by_pool = {s.pool: s for s in spot}
    start = trace.steps[0].time_s
    n = len(trace.steps)
    available = np.zeros((n, len(keys)), dtype=np.int64)
    for j, (_type, pool) in enumerate(keys):
        series = by_pool[pool]
        available[:, j] = [series.available_at(s.time_s - start) for s in trace.steps]
    return Setup(
        catalog=catalog,
        demand=[s.demand for s in trace.steps],
        market=Market(keys, available),
        start_epoch=start,
        sim=sim,
        inputs={
            "trace": trace_spec,
            "spot": spot_spec,
            "catalog": catalog.name,
            "pools": list(pools),
            "scale": factor,
            "peak_nodes": peak,
            "spot_scale": spot_scale,
            "tokens": list(tokens) if tokens is not None else None,
            "step_s": sim.step_s,
            "notice_s": sim.notice_s,
            "boot_s": sim.boot_s,
            "warmup_days": sim.warmup_days,
            "days": n * sim.step_s / 86400,
        },
    )


def fill_gaps(trace: DemandTrace, step_s: float) -> DemandTrace:
    """Zero-traffic steps where the trace has gaps: the engine reads step ``i`` as ``start + i × step``."""
    steps: list[DemandStep] = []
    for step in trace.steps:
        while steps and step.time_s - steps[-1].time_s > step_s * 1.5:
            last = steps[-1]
            quiet = Demand(0.0, last.demand.prompt_tokens, last.demand.output_tokens)
            steps.append(DemandStep(last.time_s + step_s, step_s, quiet))
        steps.append(step)
    return DemandTrace(trace.name, tuple(steps))


def rolling_demand(settings: Settings, sim: SimConfig) -> RollingDemand:
    """The rolling rule as the agent applies it (``agent.actors.optimizer``), in the simulation's steps."""
    return settings.rolling_demand(boot_s=sim.boot_s, step_s=sim.step_s)


def make_policy(name: str, setup: Setup, settings: Settings, cfg: OptimizerConfig) -> Policy:
    catalog, slo = setup.catalog, setup.sim.slo
    scored = setup.demand[setup.warmup_steps :]

    def rolling(
        label: str, *, spot: bool = True, reserved: bool = True, ondemand: bool = True
    ) -> RollingPolicy:
        return RollingPolicy(
            catalog,
            settings.profiler.build(),
            slo,
            cfg,
            rolling_demand(settings, setup.sim),
            name=label,
            horizon_days=settings.planner.horizon_days,
            levels=settings.planner.levels,
            gap_s=max(0.0, setup.sim.boot_s - setup.sim.notice_s),
            use_spot=spot,
            use_reserved=reserved,
            use_ondemand=ondemand,
        )

    if name == "all-ondemand":
        return StaticPolicy(name, catalog, peak_nodes(catalog, scored, slo), "ondemand")
    if name == "all-reserved":
        return StaticPolicy(name, catalog, peak_nodes(catalog, scored, slo), "reserved")
    if name == "elastic-ondemand":
        return rolling(name, spot=False, reserved=False)
    if name == "reserved-spot":
        return rolling(name, ondemand=False)
    if name == "seed-hybrid":
        return SeedHybridPolicy(catalog, settings.profiler.build(), slo)
    if name == "skyserve":
        return SkyServePolicy(catalog, slo)
    if name == "skyserve-slo":
        return SkyServePolicy(catalog, slo, name=name)
    if name == "rolling":
        return rolling(name)
    raise ValueError(f"unknown strategy {name!r} (have: {', '.join(STRATEGIES)})")


def _report(result: BacktestResult, seconds: float, detail: str = "") -> StrategyReport:
    return StrategyReport(
        name=result.name,
        cost=result.cost,
        monthly_cost=result.monthly_cost,
        cost_per_mtok=result.cost_per_mtok,
        slo_attainment=result.slo_attainment,
        slo_queue=result.queue.served_within,
        queue_delay_s=result.queue.delay_s,
        queue_p99_delay_s=result.queue.p99_delay_s,
        shortfall_minutes=result.shortfall_minutes,
        preemptions=result.preemptions,
        ondemand_hours=result.node_hours["ondemand"],
        reserved=result.reserved,
        detail=detail,
        seconds=seconds,
    )


def _foresight_demand(
    setup: Setup, settings: Settings, replay: Callable[[Policy], BacktestResult]
) -> tuple[BacktestResult, str]:
    """Yardstick (i): knows the demand to come, not the reclaims; the cheapest hedge of the [backtest]
    family that holds the per-minute SLO target, or with ``[backtest] yardstick_scores = "both"`` also the
    queue score (or the one that comes closest)."""
    family = HedgeFamily(
        floors=tuple(settings.backtest.yardstick_floors),
        zone_rule=tuple(dict.fromkeys(settings.backtest.yardstick_zone_rule)),
        reserved=tuple(settings.backtest.yardstick_reserved),
    )
    lead = lead_steps_for(setup.sim.boot_s, setup.sim.policy_interval_s, setup.sim.step_s)
    tick = max(1, round(setup.sim.policy_interval_s / setup.sim.step_s))

    def with_hedge(hedge: Hedge) -> BacktestResult:
        policy = demand_policy(
            setup.catalog, setup.sim.slo, setup.demand, lead, hedge, scored_from=setup.warmup_steps
        )
        policy.tick_steps = tick
        return replay(policy)

    target = settings.slo.target_attainment
    scores = settings.backtest.yardstick_scores
    hedge, result, runs = cheapest_hedge(family, with_hedge, target, scores)
    judged = " on both scores" if scores == "both" else ""
    missed = hedge_score(result, scores) < target
    held = f"; none of the family reached {target:.3%}{judged}" if missed else ""
    return result, f"hedge{judged}: {hedge.label()} ({runs} runs){held}"


def _foresight(
    setup: Setup, reserved: dict[str, int], replay: Callable[[Policy], BacktestResult]
) -> BacktestResult:
    """Yardstick (ii): knows the demand and every reclaim to come; reserved nodes as hindsight chose."""
    lead = lead_steps_for(setup.sim.boot_s, setup.sim.policy_interval_s, setup.sim.step_s)
    policy = ForesightPolicy(
        setup.catalog,
        setup.sim.slo,
        setup.demand,
        lead,
        reserved={k: v for k, v in reserved.items() if v > 0},
        market=setup.market,
        tick_steps=max(1, round(setup.sim.policy_interval_s / setup.sim.step_s)),
    )
    return replay(policy)


def _hindsight(setup: Setup, slo: SloConfig) -> tuple[StrategyReport, HindsightPlan]:
    started = time.perf_counter()
    scored = setup.demand[setup.warmup_steps :]
    types = list(setup.catalog.types)
    columns = {t: [j for j, k in enumerate(setup.market.pools) if k[0] == t] for t in types}
    spot = np.stack(
        [setup.market.available[setup.warmup_steps :, columns[t]].sum(axis=1) for t in types], axis=1
    )
    step_h = setup.sim.step_s / 3600
    block = max(1, round(setup.sim.policy_interval_s / setup.sim.step_s))
    plan = hindsight_plan(setup.catalog, scored, spot, step_h, slo, block_steps=block)
    tokens = sum(d.rps * (d.prompt_tokens + d.output_tokens) for d in scored) * setup.sim.step_s
    queue = _hindsight_queue(setup, scored, plan, block, slo)
    report = StrategyReport(
        name="hindsight",
        cost=plan.cost,
        monthly_cost=plan.cost * 730 / plan.hours if plan.hours else 0.0,
        cost_per_mtok=plan.cost / (tokens / 1e6) if tokens > 0 else None,
        slo_attainment=1.0,
        slo_queue=queue.served_within,
        queue_delay_s=queue.delay_s,
        queue_p99_delay_s=queue.p99_delay_s,
        shortfall_minutes=0.0,
        preemptions=0,
        ondemand_hours=plan.node_hours["ondemand"],
        reserved={k: v for k, v in plan.reserved.items() if v},
        seconds=time.perf_counter() - started,
    )
    return report, plan


def _hindsight_queue(
    setup: Setup, scored: Sequence[Demand], plan: HindsightPlan, block: int, slo: SloConfig
) -> QueueScore:
    """The hindsight plan's capacity at every scored step (its reserved nodes plus its block's spot and
    on-demand ones, each at its type's rate for the step's token mix), scored as a queue like the others."""
    types = list(setup.catalog.types.values())
    reserved = np.array([plan.reserved[t.name] for t in types], dtype=float)
    blocks = np.arange(len(scored)) // block
    nodes = reserved + plan.spot[blocks] + plan.ondemand[blocks]
    # Token mixes repeat from step to step: one rate per mix and type.
    rates: dict[tuple[float, float], list[float]] = {}
    for d in scored:
        mix = (d.prompt_tokens, d.output_tokens)
        if mix not in rates:
            rates[mix] = [rps_per_instance(t, *mix, slo) for t in types]
    per_node = np.array([rates[(d.prompt_tokens, d.output_tokens)] for d in scored])
    tokens = np.array([d.prompt_tokens + d.output_tokens for d in scored])
    arrivals = np.array([d.rps for d in scored]) * tokens
    capacity = (nodes * per_node).sum(axis=1) * tokens
    return queue_score(arrivals, capacity, setup.sim.step_s, setup.sim.queue_delay_s)


def _skyserve_at_slo(
    setup: Setup, target: float, replay: Callable[[Policy], BacktestResult]
) -> tuple[BacktestResult, int]:
    """SkyServe-style with the fewest base on-demand replicas whose SLO attainment reaches ``target``.

    SkyServe has one knob for reliability, its always-on on-demand replicas; this is that knob turned
    until the SLO holds (or up to the peak's replicas, where it is all on-demand), so that ``rolling`` is
    also compared with SkyServe at the same SLO, not only with its default of one replica.
    """
    catalog, slo = setup.catalog, setup.sim.slo
    most = peak_nodes(catalog, setup.demand[setup.warmup_steps :], slo) + 1
    base = 1
    result = replay(SkyServePolicy(catalog, slo, name="skyserve-slo", base_ondemand=base))
    while result.slo_attainment < target and base < most:
        base += 1
        result = replay(SkyServePolicy(catalog, slo, name="skyserve-slo", base_ondemand=base))
    return result, base


def run_strategies(
    setup: Setup,
    strategies: Sequence[str],
    settings: Settings,
    *,
    keep_records: Sequence[str] = (),
    progress: Callable[[str, int, int], None] | None = None,
) -> BacktestRun:
    """Every strategy on the same inputs; ``progress(name, step, total)`` after every scored step."""
    # The rolling policy and its variants (elastic-ondemand, reserved-spot): the agent's [optimizer].
    cfg = settings.optimizer.to_core()
    run = BacktestRun(setup)
    total = len(setup.demand)
    hindsight: tuple[StrategyReport, HindsightPlan] | None = None
    for name in strategies:
        if name == "hindsight" or (name == "foresight" and hindsight is None):
            # foresight commits to the reserved nodes hindsight chose: the same plan, solved once.
            hindsight = hindsight or _hindsight(setup, setup.sim.slo)
            run.hindsight = hindsight[1]
        if name == "hindsight":
            assert hindsight is not None
            run.reports.append(hindsight[0])
            if progress:
                progress(name, total, total)
            continue
        started = time.perf_counter()

        def tick(i: int, label: str = name) -> None:
            if progress:
                progress(label, i + 1, total)

        def replay(policy: Policy, keep: bool = name in keep_records) -> BacktestResult:
            return run_backtest(
                setup.catalog,
                setup.demand,
                setup.market,
                policy,
                setup.sim,
                start_epoch=setup.start_epoch,
                keep_records=keep,
                progress=tick if progress else None,
            )

        detail = ""
        if name == "skyserve-slo":
            result, base = _skyserve_at_slo(setup, settings.slo.target_attainment, replay)
            detail = f"{base} always-on on-demand replica{'s' if base != 1 else ''}"
        elif name == "foresight-demand":
            result, detail = _foresight_demand(setup, settings, replay)
        elif name == "foresight":
            assert hindsight is not None
            result = _foresight(setup, hindsight[1].reserved, replay)
        else:
            result = replay(make_policy(name, setup, settings, cfg))
        run.reports.append(_report(result, time.perf_counter() - started, detail))
        if result.records:
            run.records[name] = result.records
    if hindsight is not None and "hindsight" not in strategies:
        run.hindsight = None  # solved for foresight's reserved nodes only: not a strategy asked for
    hindsight_cost = next((r.cost for r in run.reports if r.name == "hindsight"), None)
    foresight_cost = next((r.cost for r in run.reports if r.name == "foresight-demand"), None)
    run.reports = [
        dataclasses.replace(
            r,
            ratio_to_hindsight=r.cost / hindsight_cost if hindsight_cost else None,
            ratio_to_foresight_demand=r.cost / foresight_cost if foresight_cost else None,
        )
        for r in run.reports
    ]
    return run
