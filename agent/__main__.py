"""The ``cost-agent`` command line. The only module that reads argv.

Each subcommand is two functions, one that declares its arguments and one that runs it; options that
several subcommands share are declared once. A subcommand imports what it needs inside the function that
runs it, so parsing loads nothing heavy and ``cost-agent sidecar`` on a spot node loads no numpy or scipy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from agent.backtest import BacktestRun
    from agent.core.comparison import ComparisonRow

_DESCRIPTION: Final = "The ``cost-agent`` command line. The only module that reads argv."
_DEFAULT_TRACE: Final = "servegen:m-large"
_DEFAULT_SPOT: Final = "skypilot:availability/16-node/aws-08-27-2023"


class UsageError(Exception):
    """A command-line value the command refuses: one line on stderr, exit 2."""


# The errors that end a command with one line on stderr rather than a traceback, by the module that
# defines each. A command imports only what it needs, and an error whose module was never imported
# cannot have been raised: so they are looked up only among the modules loaded.
_ONE_LINE_ERRORS: Final = (
    ("agent.config", "ConfigError"),
    ("agent.core.catalog", "CatalogError"),
    ("agent.planning", "DemandSourceError"),
    ("agent.sim.traces", "TraceError"),
)


def _one_line_errors() -> tuple[type[BaseException], ...]:
    loaded = (getattr(sys.modules[m], name) for m, name in _ONE_LINE_ERRORS if m in sys.modules)
    return (UsageError, *loaded)


# --- options shared by several subcommands ------------------------------------------------------------


def _catalog_option(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument(
        "--catalog", default=default, help="built-in catalog name (seed, gcp-2026-07) or a catalog TOML path"
    )


def _settings_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="settings TOML file (see deploy/agent.example.toml)")
    _catalog_option(parser)


def _log_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default="info", help="debug, info, warning or error")
    parser.add_argument(
        "--log-format",
        choices=["auto", "json", "console"],
        default="auto",
        help="JSON lines, or readable lines (auto: readable on a terminal)",
    )


def _configure_logging(args: argparse.Namespace) -> None:
    """Logging as ``--log-level`` and ``--log-format`` say (see :func:`_log_options`)."""
    from agent.runtime.logs import configure_logging

    fmt = {"auto": None, "json": True, "console": False}[args.log_format]
    try:
        configure_logging(json=fmt, level=args.log_level)
    except ValueError as exc:
        raise UsageError(f"--log-level: {exc}") from None


def _trace_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trace",
        default=_DEFAULT_TRACE,
        help="demand: servegen:<model>, azure2023:code|conv, mooncake, burstgpt, csv:PATH",
    )
    parser.add_argument(
        "--spot",
        default=_DEFAULT_SPOT,
        help="spot availability: skypilot:<dir>, spothedge-gcp, file:PATH",
    )


def _serve(main: Coroutine[Any, Any, int], *unreachable: type[Exception]) -> int:
    """Run a long-lived service to its exit code; a server it cannot reach is one line and exit 2."""
    import asyncio

    errors: tuple[type[Exception], ...] = (ConnectionError, OSError, *unreachable)
    try:
        return asyncio.run(main)
    except errors as exc:
        print(f"cost-agent: {exc}", file=sys.stderr)
        return 2


# --- plan ---------------------------------------------------------------------------------------------


def _plan_arguments(plan: argparse.ArgumentParser) -> None:
    _settings_options(plan)
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


def _plan(args: argparse.Namespace) -> int:
    from agent.config import load_settings, resolve_catalog
    from agent.core.catalog import HOURS_PER_MONTH
    from agent.core.comparison import monthly_comparison
    from agent.planning import build_horizon

    settings = load_settings(args.config)
    catalog = resolve_catalog(args.catalog or settings.catalog)
    if args.peak_nodes < 0:
        raise UsageError("--peak-nodes: must be ≥ 0")
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


def _padded(
    header: Sequence[str], body: Sequence[Sequence[str]]
) -> tuple[list[str], list[list[str]], list[int]]:
    """Header and rows with every cell padded to its column's width (and the widths)."""
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    return (
        [h.ljust(w) for h, w in zip(header, widths, strict=True)],
        [[c.ljust(w) for c, w in zip(b, widths, strict=True)] for b in body],
        widths,
    )


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
    head, cells, widths = _padded(header, body)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    lines += [f"  {r.strategy}: {r.detail}" for r in rows if r.detail]
    return "\n".join(lines)


# --- backtest -----------------------------------------------------------------------------------------


def _backtest_arguments(bt: argparse.ArgumentParser) -> None:
    from agent.sim.strategy_names import STRATEGIES

    _settings_options(bt)
    _trace_options(bt)
    bt.add_argument(
        "--peak-nodes",
        type=int,
        default=8,
        help="scale demand so its busiest step needs N main-type nodes (0: use --scale)",
    )
    bt.add_argument("--scale", type=float, default=1.0, help="demand scale factor when --peak-nodes is 0")
    bt.add_argument(
        "--prompt-tokens",
        type=float,
        help="mean prompt tokens per request, for a trace without token lengths (with --output-tokens)",
    )
    bt.add_argument(
        "--output-tokens",
        type=float,
        help="mean output tokens per request, for a trace without token lengths (with --prompt-tokens)",
    )
    bt.add_argument("--spot-scale", type=float, default=1.0, help="multiply spot availability counts")
    bt.add_argument(
        "--strategies",
        default=",".join(STRATEGIES),
        help="comma-separated subset of: " + ", ".join(STRATEGIES),
    )
    bt.add_argument(
        "--notice", type=float, default=120.0, help="preemption notice, seconds (30 for GCP/Azure)"
    )
    bt.add_argument("--boot", type=float, default=360.0, help="seconds from launch to serving")
    bt.add_argument("--step", type=float, default=60.0, help="simulation step, seconds")
    bt.add_argument("--warmup-days", type=float, default=7.0, help="days that only warm up the profiler")
    bt.add_argument("--json", dest="json_path", help="write the results as JSON to this file")
    bt.add_argument("--plot", help="write a PNG of demand vs capacity (rolling and hindsight)")
    bt.add_argument("--no-progress", action="store_true", help="no progress bar")


# A mean over requests, so fractions are fine; above ten million tokens is no model's context window.
_MAX_MEAN_TOKENS = 10_000_000


def _token_lengths(prompt: float | None, output: float | None) -> tuple[float, float] | None:
    """``--prompt-tokens``/``--output-tokens``: both or neither, each a physical mean length."""
    if prompt is None and output is None:
        return None
    if prompt is None or output is None:
        missing = "--prompt-tokens" if prompt is None else "--output-tokens"
        raise UsageError(f"{missing}: give --prompt-tokens and --output-tokens together, or neither")
    for flag, value in (("--prompt-tokens", prompt), ("--output-tokens", output)):
        if not (math.isfinite(value) and 1 <= value <= _MAX_MEAN_TOKENS):
            raise UsageError(f"{flag}: must be a mean of 1 to {_MAX_MEAN_TOKENS:,} tokens, got {value:g}")
    return (prompt, output)


def _backtest(args: argparse.Namespace) -> int:
    from agent.backtest import build_setup, run_strategies, sim_config
    from agent.config import load_settings, resolve_catalog
    from agent.sim.strategy_names import parse_strategies

    settings = load_settings(args.config)
    catalog = resolve_catalog(args.catalog or settings.catalog)
    try:
        strategies = parse_strategies(args.strategies)
    except ValueError as exc:
        raise UsageError(f"--strategies: {exc}") from None
    try:
        sim = sim_config(
            settings, step_s=args.step, notice_s=args.notice, boot_s=args.boot, warmup_days=args.warmup_days
        )
    except ValueError as exc:
        raise UsageError(f"backtest: {exc}") from None
    tokens = _token_lengths(args.prompt_tokens, args.output_tokens)
    try:
        setup = build_setup(
            catalog,
            args.trace,
            args.spot,
            sim,
            peak=args.peak_nodes or None,
            scale=args.scale,
            spot_scale=args.spot_scale,
            tokens=tokens,
        )
    except ValueError as exc:
        raise UsageError(f"backtest: {exc}") from None
    keep = ["rolling"] if args.plot else []
    if args.no_progress or not sys.stderr.isatty():
        run = run_strategies(setup, strategies, settings, keep_records=keep)
    else:
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            tasks = {s: bar.add_task(s, total=len(setup.demand)) for s in strategies}

            def advance(name: str, step: int, total: int) -> None:
                if step % 200 == 0 or step == total:
                    bar.update(tasks[name], completed=step)

            run = run_strategies(setup, strategies, settings, keep_records=keep, progress=advance)
    print(_backtest_table(run))
    if args.json_path:
        with open(args.json_path, "w", encoding="utf-8") as fh:
            json.dump(run.document(), fh, indent=2)
        print(f"wrote {args.json_path}")
    if args.plot:
        from agent.sim.plot import plot_backtest

        scored = setup.demand[setup.warmup_steps :]
        path = plot_backtest(
            args.plot, setup.catalog, scored, sim.step_s, sim.slo, run.records, run.hindsight
        )
        print(f"wrote {path}")
    return 0


def _backtest_table(run: BacktestRun) -> str:
    header = (
        "Strategy",
        "Cost",
        "$/month",
        "$/1M tok",
        "SLO",
        f"≤{run.setup.sim.queue_delay_s:g} s",
        "p99 wait",
        "Short min",
        "Preempt",
        "OD hours",
        "× hindsight",
        "× f-demand",
    )
    body = [
        (
            r.name,
            f"${r.cost:,.0f}",
            f"${r.monthly_cost:,.0f}",
            f"{r.cost_per_mtok:.3f}" if r.cost_per_mtok is not None else "-",
            f"{r.slo_attainment:.4%}",
            f"{r.slo_queue:.3%}",
            "inf" if math.isinf(r.queue_p99_delay_s) else f"{r.queue_p99_delay_s:,.0f}",
            f"{r.shortfall_minutes:,.0f}",
            str(r.preemptions),
            f"{r.ondemand_hours:,.0f}",
            f"{r.ratio_to_hindsight:.2f}" if r.ratio_to_hindsight is not None else "-",
            f"{r.ratio_to_foresight_demand:.2f}" if r.ratio_to_foresight_demand is not None else "-",
        )
        for r in run.reports
    ]
    head, cells, widths = _padded(header, body)
    lines = [" | ".join(head), "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(row) for row in cells]
    lines += [f"{r.name}: {r.detail}" for r in run.reports if r.detail]
    inputs = run.setup.inputs
    lines.insert(
        0,
        f"Backtest: {inputs['trace']} × {inputs['spot']} on {inputs['catalog']}, "
        f"{inputs['days']:.1f} days ({inputs['warmup_days']:g} warm-up), notice {inputs['notice_s']:g} s, "
        f"boot {inputs['boot_s']:g} s\n",
    )
    return "\n".join(lines)


# --- run ----------------------------------------------------------------------------------------------


def _run_arguments(run: argparse.ArgumentParser) -> None:
    _settings_options(run)
    run.add_argument(
        "--nats-url",
        help="NATS server URL (default: [bus] url, then NATS_URL, else an embedded nats-server)",
    )
    run.add_argument(
        "--clock-speed",
        type=float,
        help="simulation only: run the agent's clock this many times faster than the wall clock",
    )
    run.add_argument(
        "--clock-start",
        type=float,
        help="simulation only: the clock's UNIX time at --clock-anchor (default: the anchor)",
    )
    run.add_argument(
        "--clock-anchor",
        type=float,
        help="simulation only: the wall-clock UNIX time when the clock reads --clock-start (default: now)",
    )
    _log_options(run)


def _run(args: argparse.Namespace) -> int:
    from agent.config import load_settings, resolve_catalog
    from agent.runtime.clock import Clock, RealClock, ScaledClock
    from agent.runtime.nats_server import NatsServerError
    from agent.service import serve

    settings = load_settings(args.config)
    catalog = resolve_catalog(args.catalog or settings.catalog)
    _configure_logging(args)
    clock: Clock = RealClock()
    if args.clock_speed is not None:
        try:
            clock = ScaledClock(args.clock_speed, start=args.clock_start, anchor=args.clock_anchor)
        except ValueError as exc:
            raise UsageError(f"--clock-speed: {exc}") from None
    elif args.clock_start is not None or args.clock_anchor is not None:
        raise UsageError("--clock-start and --clock-anchor need --clock-speed")
    return _serve(serve(settings, catalog, args.nats_url, clock=clock), NatsServerError)


# --- sidecar ------------------------------------------------------------------------------------------


def _sidecar_arguments(sidecar: argparse.ArgumentParser) -> None:
    sidecar.add_argument("--provider", required=True, choices=["aws", "gcp", "azure"], help="the cloud")
    sidecar.add_argument(
        "--metadata-url",
        help="metadata service base URL (default: http://169.254.169.254 for aws and azure, "
        "http://metadata.google.internal for gcp)",
    )
    sidecar.add_argument(
        "--instance-id",
        help="this node's instance id (default: from the metadata service: AWS instance-id, "
        "GCP instance name, Azure VM name)",
    )
    sidecar.add_argument("--nats-url", help="NATS server URL (default: NATS_URL)")
    sidecar.add_argument("--namespace", help="subject namespace (default costagent)")
    sidecar.add_argument("--poll-seconds", type=float, help="seconds between metadata reads (default 2)")
    sidecar.add_argument(
        "--gcp-notice-seconds",
        type=float,
        help="GCP: seconds from the preemption notice to shutdown (default 30; 120 for Spot VMs "
        "created with a 120 s preemption notice)",
    )
    sidecar.add_argument(
        "--grace-seconds",
        type=float,
        help="on SIGTERM: how long a notice NATS has not confirmed yet may wait for NATS (default 10; "
        "a normal stop ends at once)",
    )
    _log_options(sidecar)


def _sidecar(args: argparse.Namespace) -> int:
    import os

    from agent.providers.sidecar import SidecarConfig, run_sidecar

    given = {
        "metadata_url": args.metadata_url,
        "instance_id": args.instance_id,
        "namespace": args.namespace,
        "poll_s": args.poll_seconds,
        "gcp_notice_s": args.gcp_notice_seconds,
        "grace_s": args.grace_seconds,
    }
    try:
        config = SidecarConfig(
            provider=args.provider,
            nats_url=args.nats_url or os.environ.get("NATS_URL", ""),
            **{k: v for k, v in given.items() if v is not None},
        )
    except ValueError as exc:
        raise UsageError(f"sidecar: {exc}") from None
    _configure_logging(args)
    return _serve(run_sidecar(config))


# --- demo ---------------------------------------------------------------------------------------------


def _demo_arguments(demo: argparse.ArgumentParser) -> None:
    _trace_options(demo)
    _catalog_option(demo, default="seed")
    demo.add_argument(
        "--engine",
        choices=("emulated", "dynamo"),
        default="emulated",
        help=(
            "emulated: the project's own workers and router; dynamo: NVIDIA Dynamo's frontend and mocker "
            "workers, started and stopped by the agent's local actuator (default emulated)"
        ),
    )
    demo.add_argument(
        "--speed",
        type=float,
        help="simulated seconds per second (default 480 emulated: a day in 3 min; 60 dynamo)",
    )
    demo.add_argument("--duration", type=float, help="simulated hours (default 24 emulated, 3 dynamo)")
    demo.add_argument(
        "--peak-nodes", type=int, default=4, help="scale demand so its peak needs this many nodes"
    )
    demo.add_argument("--notice", type=float, default=120.0, help="spot reclaim notice, seconds (AWS: 120)")
    demo.add_argument(
        "--short-notice", type=float, default=30.0, help="the short spot notice, seconds (GCP, Azure: 30)"
    )
    demo.add_argument(
        "--short-notice-share",
        type=float,
        default=0.5,
        help="share of the spot notices that are short, drawn from the seed (default 0.5)",
    )
    demo.add_argument(
        "--long-share",
        type=float,
        help="share of the requests that are long generations (default 0.01; 0.1 with --engine dynamo)",
    )
    demo.add_argument(
        "--long-tokens",
        type=int,
        default=4000,
        help="output tokens of a long generation, ±50%% (default 4000: two minutes of decoding)",
    )
    demo.add_argument("--boot", type=float, default=120.0, help="seconds from launch to serving")
    demo.add_argument("--storm-at", type=float, help="hour of a one-hour reclaim storm (default 40%% in)")
    demo.add_argument(
        "--storm-rate",
        type=float,
        help=(
            "share of the spot nodes the storm reclaims in an hour, the busiest first (default 0.2 emulated, "
            "0.8 dynamo: a few hours' storm must find spot workers serving)"
        ),
    )
    demo.add_argument(
        "--storm-hours", type=float, help="with --engine dynamo: how long the reclaim storm lasts (default 2)"
    )
    demo.add_argument(
        "--kill-agent-at", type=float, help="chaos: kill the agent process at this hour, restart it"
    )
    demo.add_argument("--json", dest="json_path", help="write the summary as JSON here")
    demo.add_argument("--plot", help="PNG plot path (default demo.png; demo-dynamo.png with --engine dynamo)")
    demo.add_argument("--no-live", action="store_true", help="no live view (for logs and CI)")
    demo.add_argument("--seed", type=int, default=7)


def _demo(args: argparse.Namespace) -> int:
    from agent.config import resolve_catalog
    from agent.demo import DemoError, DemoOptions, print_summary, run_demo
    from agent.runtime.logs import configure_logging

    configure_logging(json=True, level="error")  # the live view is the output; errors only in the log
    if args.engine == "dynamo":
        return _demo_dynamo(args)
    if args.storm_hours is not None:
        raise UsageError("--storm-hours: only with --engine dynamo (the emulated demo's storm lasts an hour)")
    catalog = resolve_catalog(args.catalog)
    try:
        opts = DemoOptions(
            trace=args.trace,
            spot=args.spot,
            catalog=catalog,
            speed=480.0 if args.speed is None else args.speed,
            duration_h=24.0 if args.duration is None else args.duration,
            peak_nodes=args.peak_nodes,
            notice_s=args.notice,
            short_notice_s=args.short_notice,
            short_notice_share=args.short_notice_share,
            long_share=0.01 if args.long_share is None else args.long_share,
            long_tokens=args.long_tokens,
            boot_s=args.boot,
            storm_at_h=args.storm_at,
            storm_rate_per_hour=0.2 if args.storm_rate is None else args.storm_rate,
            kill_agent_at_h=args.kill_agent_at,
            json_path=args.json_path,
            plot_path="demo.png" if args.plot is None else args.plot,
            live=not args.no_live and sys.stdout.isatty(),  # a live view into a file is only noise
            seed=args.seed,
        )
    except DemoError as exc:
        raise UsageError(str(exc)) from None

    try:
        summary = _run_demo_live(lambda render, stop: run_demo(opts, render, stop), opts.live)
    except DemoError as exc:
        print(f"cost-agent: demo: {exc}", file=sys.stderr)
        return 2
    print_summary(summary)
    if args.json_path:
        print(f"summary: {args.json_path}")
    return 0


def _demo_dynamo(args: argparse.Namespace) -> int:
    """``cost-agent demo --engine dynamo``: the agent running a real Dynamo deployment."""
    from agent.demo import DemoError
    from agent.demo_dynamo import DynamoDemoOptions, print_dynamo_summary, run_dynamo_demo, write_json

    if args.catalog != "seed":
        raise UsageError("--catalog: the Dynamo demo runs the seed catalog (its scaling is fitted to it)")
    try:
        opts = DynamoDemoOptions(
            trace=args.trace,
            spot=args.spot,
            speed=60.0 if args.speed is None else args.speed,
            duration_h=3.0 if args.duration is None else args.duration,
            peak_nodes=args.peak_nodes,
            notice_s=args.notice,
            short_notice_s=args.short_notice,
            short_notice_share=args.short_notice_share,
            boot_s=args.boot,
            storm_at_h=args.storm_at,
            storm_hours=2.0 if args.storm_hours is None else args.storm_hours,
            storm_rate_per_hour=0.8 if args.storm_rate is None else args.storm_rate,
            long_share=0.1 if args.long_share is None else args.long_share,
            long_tokens=args.long_tokens,
            kill_agent_at_h=args.kill_agent_at,
            seed=args.seed,
            json_path=args.json_path,
            plot_path="demo-dynamo.png" if args.plot is None else args.plot,
        )
    except DemoError as exc:
        raise UsageError(str(exc)) from None
    live = not args.no_live and sys.stdout.isatty()

    try:
        summary = _run_demo_live(lambda render, stop: run_dynamo_demo(opts, render, stop), live)
    except DemoError as exc:
        print(f"cost-agent: demo: {exc}", file=sys.stderr)
        return 2
    print_dynamo_summary(summary)
    if args.json_path:
        write_json(args.json_path, summary)
        print(f"summary: {args.json_path}")
    return 0


def _run_demo_live(
    run: Callable[[Callable[[dict[str, Any]], None] | None, asyncio.Event], Awaitable[dict[str, Any]]],
    live: bool,
) -> dict[str, Any]:
    """Run a demo to its summary, with the live view if ``live``; SIGINT/SIGTERM end it early, cleanly."""
    from agent.demo_view import LiveView

    async def main() -> dict[str, Any]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        view = LiveView() if live else None
        try:
            if view is not None:
                view.start()
            return await run(view.update if view is not None else None, stop)
        finally:
            if view is not None:
                view.stop()

    return asyncio.run(main())


# --- schemas ------------------------------------------------------------------------------------------


def _schemas_arguments(schemas: argparse.ArgumentParser) -> None:
    schemas.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a generated file differs from the code"
    )


def _schemas(args: argparse.Namespace) -> int:
    from agent.generated import drift, write

    if args.check:
        stale = drift()
        if stale:
            print(f"cost-agent: generated files out of date: {', '.join(stale)}", file=sys.stderr)
            print("run `cost-agent schemas` and commit the result", file=sys.stderr)
            return 1
        print(
            "generated files (JSON Schemas, docs/protocol.md tables, example settings, Kubernetes manifests) "
            "match the code"
        )
        return 0
    for path in write():
        print(f"wrote {path}")
    return 0


# --- the command line ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Command:
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


_COMMANDS: Final[dict[str, _Command]] = {
    "plan": _Command(
        "monthly cost comparison of capacity strategies from a demand forecast", _plan_arguments, _plan
    ),
    "run": _Command("run the agent on NATS until SIGTERM/SIGINT", _run_arguments, _run),
    "sidecar": _Command(
        "on a spot node: watch the cloud metadata service, publish preemption notices on NATS",
        _sidecar_arguments,
        _sidecar,
    ),
    "demo": _Command(
        "the whole system on one machine: agent, simulated cloud, workers, traffic", _demo_arguments, _demo
    ),
    "schemas": _Command(
        "write the generated files: wire JSON Schemas, docs/protocol.md tables, example settings, "
        "Kubernetes manifests",
        _schemas_arguments,
        _schemas,
    ),
    "backtest": _Command(
        "replay real demand and spot traces through every strategy", _backtest_arguments, _backtest
    ),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cost-agent", description=_DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in _COMMANDS.items():
        command.arguments(sub.add_parser(name, help=command.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command].run(args)
    except _one_line_errors() as exc:
        print(f"cost-agent: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader (e.g. `| head`) went away: not an error of ours
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
