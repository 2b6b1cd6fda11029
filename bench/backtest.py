"""Wall time of ``cost-agent backtest``: every strategy on a 14-day real trace, and what each one scores.

(Named ``bench/backtest_speed.py`` before issue 15.)

Builds the inputs once with :func:`agent.backtest.build_setup` (by default ``servegen:m-large`` ×
``skypilot:availability/16-node/aws-08-27-2023`` on the ``seed`` catalog, demand scaled so that its
busiest step needs 8 main-type nodes, a 120 s notice, 1-minute steps and 7 warm-up days, as the CLI's
defaults), then runs :func:`agent.backtest.run_strategies` once for all the strategies, as the CLI does
(the hindsight program is solved once, for ``foresight``'s reserved nodes and for ``hindsight``); each
strategy's seconds are its report's (policy construction included). Settings come from
:func:`agent.config.load_settings` (``--config`` and ``COST_AGENT_*`` as for the CLI).

Figures: wall seconds for the setup, per strategy and in total (target: ≤ 60 s for the whole run), the
machine, and each strategy's cost, both SLO scores, cost ÷ hindsight and cost ÷ foresight-demand
(``foresight``'s time excludes the hindsight program's solve, which is ``hindsight``'s).

Run: ``.venv/bin/python bench/backtest.py`` (``--catalog gcp-2026-07 --notice 30``, ``--trace``,
``--spot``, ``--peak-nodes``, ``--strategies``, ``--out PATH`` to also write the JSON to a file); prints
one JSON object, progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import scipy

from agent.backtest import (
    STRATEGIES,
    StrategyReport,
    build_setup,
    parse_strategies,
    run_strategies,
    sim_config,
)
from agent.config import load_settings, resolve_catalog

TARGET_SECONDS = 60.0


def _machine() -> dict[str, object]:
    affinity = getattr(os, "sched_getaffinity", None)
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(affinity(0)) if affinity else None,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
    }


def _figures(
    report: StrategyReport, hindsight_cost: float | None, foresight_cost: float | None, seconds: float
) -> dict[str, object]:
    return {
        "name": report.name,
        "seconds": round(seconds, 3),
        "cost": round(report.cost, 2),
        "slo_attainment": report.slo_attainment,
        "slo_queue": report.slo_queue,
        "shortfall_minutes": report.shortfall_minutes,
        "preemptions": report.preemptions,
        "ratio_to_hindsight": round(report.cost / hindsight_cost, 4) if hindsight_cost else None,
        "ratio_to_foresight_demand": round(report.cost / foresight_cost, 4) if foresight_cost else None,
        "detail": report.detail,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--config", help="settings TOML file (default: built-in defaults)")
    parser.add_argument("--catalog", default="seed", help="built-in catalog name or catalog TOML path")
    parser.add_argument("--trace", default="servegen:m-large", help="demand trace spec")
    parser.add_argument(
        "--spot", default="skypilot:availability/16-node/aws-08-27-2023", help="spot availability spec"
    )
    parser.add_argument("--peak-nodes", type=int, default=8, help="busiest step needs N main-type nodes")
    parser.add_argument("--notice", type=float, default=120.0, help="preemption notice, seconds")
    parser.add_argument("--boot", type=float, default=360.0, help="seconds from launch to serving")
    parser.add_argument("--step", type=float, default=60.0, help="simulation step, seconds")
    parser.add_argument("--warmup-days", type=float, default=7.0, help="days that only warm up")
    parser.add_argument(
        "--strategies", default=",".join(STRATEGIES), help="comma-separated subset (default: all)"
    )
    parser.add_argument("--out", type=Path, help="also write the JSON to this file")
    args = parser.parse_args(argv)
    try:
        strategies = parse_strategies(args.strategies)
    except ValueError as exc:
        parser.error(f"--strategies: {exc}")

    settings = load_settings(args.config)
    catalog = resolve_catalog(args.catalog)
    sim = sim_config(
        settings, step_s=args.step, notice_s=args.notice, boot_s=args.boot, warmup_days=args.warmup_days
    )
    started = time.perf_counter()
    setup = build_setup(catalog, args.trace, args.spot, sim, peak=args.peak_nodes or None)
    setup_seconds = time.perf_counter() - started
    print(f"setup: {setup_seconds:.2f} s, {len(setup.demand)} steps", file=sys.stderr)

    # One run, as the CLI does (the hindsight program is solved once for foresight and hindsight); each
    # strategy's own seconds are its report's.
    done: set[str] = set()

    def progress(name: str, step: int, total: int) -> None:
        if step == total and name not in done:
            done.add(name)
            print(f"{name}: done at {time.perf_counter() - started:.1f} s", file=sys.stderr)

    run = run_strategies(setup, strategies, settings, progress=progress)
    timed: list[tuple[StrategyReport, float]] = [(r, r.seconds) for r in run.reports]
    total = time.perf_counter() - started

    hindsight = next((r.cost for r, _ in timed if r.name == "hindsight"), None)
    foresight = next((r.cost for r, _ in timed if r.name == "foresight-demand"), None)
    result = {
        "benchmark": "backtest",
        "inputs": setup.inputs,
        "steps": len(setup.demand),
        "scored_steps": len(setup.demand) - setup.warmup_steps,
        "machine": _machine(),
        "seconds": {
            "setup": round(setup_seconds, 3),
            "strategies": {r.name: round(s, 3) for r, s in timed},
            "total": round(total, 3),
        },
        "target_seconds": TARGET_SECONDS,
        "within_target": total <= TARGET_SECONDS,
        "strategies": [_figures(r, hindsight, foresight, s) for r, s in timed],
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
