"""The ``cost-agent`` command line. The only module that reads argv."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from agent.config import ConfigError, load_settings, resolve_catalog
from agent.core.catalog import HOURS_PER_MONTH, CatalogError
from agent.core.comparison import ComparisonRow, monthly_comparison
from agent.planning import DemandSourceError, build_horizon
from agent.sim.traces import TraceError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cost-agent", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    plan = sub.add_parser(
        "plan", help="monthly cost comparison of capacity strategies from a demand forecast"
    )
    plan.add_argument("--config", help="settings TOML file (see deploy/agent.example.toml)")
    plan.add_argument("--catalog", help="built-in catalog name (seed, gcp-2026-07) or a catalog TOML path")
    plan.add_argument(
        "--demand",
        default="seed-example",
        help="seed-example (default) or servegen:<model>, e.g. servegen:m-large",
    )
    plan.add_argument(
        "--peak-nodes",
        type=int,
        default=4,
        help="scale demand so its busiest hour needs this many nodes of the catalog's main type "
        "(default 4, as the seed; 0 keeps the trace's own scale)",
    )
    plan.add_argument("--json", action="store_true", help="print the rows as JSON")
    return parser


def _table(rows: Sequence[ComparisonRow]) -> str:
    header = ("Strategy", "Reserved", "Spot (avg)", "On-demand (avg)", "Monthly cost", "Savings")
    body = [
        (
            r.strategy,
            str(r.reserved),
            f"{r.spot:.2f}",
            f"{r.ondemand:.2f}",
            f"${r.monthly_cost:,.0f}",
            "baseline" if r.strategy == "all on-demand" else f"{r.savings:.0%}",
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)) + " |" for b in body]
    lines += [f"  {r.strategy}: {r.detail}" for r in rows if r.detail]
    return "\n".join(lines)


def _plan(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    catalog = resolve_catalog(args.catalog or settings.catalog)
    if args.peak_nodes < 0:
        raise ConfigError("--peak-nodes: must be ≥ 0")
    horizon = build_horizon(args.demand, settings, catalog, args.peak_nodes or None)
    rows = monthly_comparison(
        catalog,
        horizon.steps,
        settings.slo_config(),
        settings.optimizer.to_core(),
        levels=settings.planner.levels,
    )
    if args.json:
        keys = ("strategy", "reserved", "spot", "ondemand", "monthly_cost", "savings")
        print(json.dumps([{k: getattr(r, k) for k in keys} for r in rows], indent=2))
        return 0
    print(
        f"Monthly cost comparison: catalog {catalog.name}; demand {horizon.description}; "
        f"{settings.planner.horizon_days:g}-day forecast; {HOURS_PER_MONTH:g} h/month\n"
    )
    print(_table(rows))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "plan":
            return _plan(args)
    except (ConfigError, CatalogError, DemandSourceError, TraceError) as exc:
        print(f"cost-agent: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader (e.g. `| head`) went away: not an error of ours
        sys.stderr.close()
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
