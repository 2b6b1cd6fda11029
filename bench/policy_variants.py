"""The backtest's ``rolling`` policy with one part changed at a time: what each part buys, on four inputs.

Variants, each against the policy as shipped (the [optimizer] settings the agent plans with, the rolling
rule of ``agent.core.rolling_demand`` with the ten minutes' peak as its base, the surge re-plan):

- ``shipped``;
- ``no_outage_rule``: the measured rate followed down through a zero-traffic outage (``outage_share`` 0);
- ``no_launch_cost``: a launch costs nothing more than its hours (``switching_cost_hours`` 0);
- ``floor_0.25`` and ``no_floor``: ``min_non_spot_fraction`` 0.25 and 0;
- ``waves_floor``: no fixed floor; the non-spot share learned from the reclaim waves seen
  (``agent.core.spot_loss``);
- ``learned_hazard``: spot discounted by each pool's reclaim rate learned from the drops seen;
- ``no_zone_rule``: spot capped at half the spot fleet per pool instead of spread to survive a zone's loss;
- ``last_minute``, ``window_20min``, ``hour_peak``: sized to the last minute's demand, or the peak of the
  last 20 or 60 minutes, rather than the peak of the last 10;
- ``headroom_quarter``, ``headroom_tenth``: the headroom sized to leave a quarter, a tenth of the SLO's
  allowed miss unserved on the history instead of half (``headroom_share_of_miss``);
- ``no_surge``: acts only on the 5-minute tick and on notices;
- ``commit_p50``, ``commit_0.75``: reserved nodes sized to the profile's P50 (× 0.75) without the headroom;
- ``reserved_0`` … ``reserved_7``: the commitment planner overruled, a fixed count of the main type
  reserved (the planner's choice is then the cheapest such count that holds both scores, or not).

Inputs: the README's four backtest commands (m-large × AWS traces with the seed catalog, 120 s notice; the
same with GCP prices and a 30 s notice; m-mid × AWS; m-large × the SpotHedge GCP traces, 30 s notice), 8
peak nodes. Prints one JSON object: per input and variant, cost, per-minute SLO attainment, the queue score
(share served within 60 s), shortfall minutes and reserved nodes; with ``--yardsticks``, also
``foresight-demand``'s cost per input (its hedge judged on ``--yardstick-scores``: minute or both).
Runs the variants on two processes (``--jobs``); about 10 minutes here for the 56 runs before the
reserved counts, 3 minutes for the 32 of ``reserved_*``.

Run: ``.venv/bin/python bench/policy_variants.py [--inputs seed,gcp,m-mid,spothedge] [--variants ...]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, fields
from typing import Any

import msgspec

from agent.backtest import Setup, build_setup, make_policy, run_strategies, sim_config
from agent.config import Settings, load_settings, resolve_catalog
from agent.sim.replay import Market, run_backtest
from agent.sim.strategies import RollingPolicy

AWS = "skypilot:availability/16-node/aws-08-27-2023"


@dataclass(frozen=True)
class Input:
    catalog: str
    trace: str
    spot: str
    notice_s: float


INPUTS = {
    "seed": Input("seed", "servegen:m-large", AWS, 120.0),
    "gcp": Input("gcp-2026-07", "servegen:m-large", AWS, 30.0),
    "m-mid": Input("seed", "servegen:m-mid", AWS, 120.0),
    "spothedge": Input("seed", "servegen:m-large", "spothedge-gcp", 30.0),
}


@dataclass(frozen=True)
class Variant:
    optimizer: dict[str, Any] = field(default_factory=dict)
    """[optimizer] settings changed."""
    policy: Callable[[RollingPolicy], None] | None = None
    """A change to the built policy."""
    reserved: int | None = None
    """Main-type nodes reserved instead of what the commitment planner chooses."""


@dataclass(slots=True)
class FixedCommitment(RollingPolicy):
    """``rolling`` with the commitment planner overruled: ``nodes`` of the main type reserved, the rest of
    the policy as shipped (it still reads the market at commit time, as shipped)."""

    nodes: int = 0

    def commit(self, t: float, market: Market) -> dict[str, int]:
        RollingPolicy.commit(self, t, market)
        return {self.catalog.main_type.name: self.nodes} if self.nodes else {}

    @classmethod
    def of(cls, policy: RollingPolicy, nodes: int) -> FixedCommitment:
        return cls(**{f.name: getattr(policy, f.name) for f in fields(policy)}, nodes=nodes)


def _set(**changes: Any) -> Callable[[RollingPolicy], None]:
    def change(policy: RollingPolicy) -> None:
        for path, value in changes.items():
            target: Any = policy
            *parents, name = path.split("__")
            for parent in parents:
                target = getattr(target, parent)
            setattr(target, name, value)

    return change


VARIANTS = {
    "shipped": Variant(),
    "no_outage_rule": Variant({"outage_share": 0.0}),
    "no_launch_cost": Variant({"switching_cost_hours": 0.0}),
    "floor_0.25": Variant({"min_non_spot_fraction": 0.25}),
    "no_floor": Variant({"min_non_spot_fraction": 0.0}),
    "waves_floor": Variant({"min_non_spot_fraction": 0.0}, _set(floor_rule="waves")),
    "learned_hazard": Variant({"discount_spot_by_reliability": True}),
    "no_zone_rule": Variant({"survive_zone_loss": 0.0, "max_pool_share": 0.5}),
    "last_minute": Variant(policy=_set(demand__base_window_steps=1)),
    "hour_peak": Variant({"base_window_seconds": 3600.0}),
    "window_20min": Variant({"base_window_seconds": 1200.0}),
    "headroom_quarter": Variant({"headroom_share_of_miss": 0.25}),
    "headroom_tenth": Variant({"headroom_share_of_miss": 0.1}),
    "no_surge": Variant(policy=_set(replan_on_surge=False)),
    "commit_p50": Variant(policy=_set(commit_headroom=1.0)),
    "commit_0.75": Variant(policy=_set(commit_headroom=0.75)),
    **{f"reserved_{n}": Variant(reserved=n) for n in range(8)},
}

_setups: dict[str, tuple[Settings, Setup]] = {}


def _setup(label: str) -> tuple[Settings, Setup]:
    if label not in _setups:
        spec = INPUTS[label]
        settings = load_settings()
        sim = sim_config(settings, step_s=60.0, notice_s=spec.notice_s, boot_s=360.0, warmup_days=7.0)
        catalog = resolve_catalog(spec.catalog)
        _setups[label] = settings, build_setup(catalog, spec.trace, spec.spot, sim, peak=8)
    return _setups[label]


def _run(job: tuple[str, str]) -> tuple[str, str, dict[str, object]]:
    label, name = job
    settings, setup = _setup(label)
    variant = VARIANTS[name]
    settings = msgspec.structs.replace(
        settings, optimizer=msgspec.structs.replace(settings.optimizer, **variant.optimizer)
    )
    policy = make_policy("rolling", setup, settings, settings.optimizer.to_core())
    assert isinstance(policy, RollingPolicy)
    if variant.policy is not None:
        variant.policy(policy)
    if variant.reserved is not None:
        policy = FixedCommitment.of(policy, variant.reserved)
    started = time.perf_counter()
    result = run_backtest(
        setup.catalog, setup.demand, setup.market, policy, setup.sim, start_epoch=setup.start_epoch
    )
    return (
        label,
        name,
        {
            "cost": round(result.cost, 2),
            "slo_attainment": round(result.slo_attainment, 6),
            "slo_queue": round(result.queue.served_within, 6),
            "shortfall_minutes": result.shortfall_minutes,
            "reserved": result.reserved,
            "seconds": round(time.perf_counter() - started, 2),
        },
    )


def _yardstick(job: tuple[str, str]) -> tuple[str, dict[str, object]]:
    label, scores = job
    settings, setup = _setup(label)
    backtest = msgspec.structs.replace(settings.backtest, yardstick_scores=scores)
    settings = msgspec.structs.replace(settings, backtest=backtest)
    report = run_strategies(setup, ["foresight-demand"], settings).reports[0]
    return label, {
        "cost": round(report.cost, 2),
        "slo_attainment": round(report.slo_attainment, 6),
        "slo_queue": round(report.slo_queue, 6),
        "detail": report.detail,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", default=",".join(INPUTS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--yardsticks", action="store_true", help="also run foresight-demand per input")
    parser.add_argument(
        "--yardstick-scores",
        choices=["minute", "both"],
        default="minute",
        help="what foresight-demand's hedge must hold ([backtest] yardstick_scores)",
    )
    args = parser.parse_args()
    labels = [s for s in args.inputs.split(",") if s]
    names = [s for s in args.variants.split(",") if s]
    for label in labels:
        if label not in INPUTS:
            parser.error(f"unknown input {label!r} (have: {', '.join(INPUTS)})")
    for name in names:
        if name not in VARIANTS:
            parser.error(f"unknown variant {name!r} (have: {', '.join(VARIANTS)})")
    out: dict[str, Any] = {
        "benchmark": "policy_variants",
        "inputs": {label: vars(INPUTS[label]) for label in labels},
        "results": {label: {} for label in labels},
    }
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        jobs = [(label, name) for label in labels for name in names]
        for label, name, row in pool.map(_run, jobs):
            print(f"{label}: {name} {row}", file=sys.stderr)
            out["results"][label][name] = row
        if args.yardsticks:
            jobs_y = [(label, args.yardstick_scores) for label in labels]
            out["foresight_demand"] = dict(pool.map(_yardstick, jobs_y))
            out["yardstick_scores"] = args.yardstick_scores
    out["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
