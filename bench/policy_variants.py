"""The backtest's ``rolling`` policy with one part changed at a time: what each part buys.

Variants, each against the policy as shipped (``[backtest]`` settings, the hour's peak, the surge
re-plan, the boot-aware headroom):

- ``shipped``; ``floor_0.4`` and ``no_floor`` (``min_non_spot_fraction`` 0.4 and 0);
- ``no_zone_rule``: the agent's own optimizer defaults (no zone rule, pool share and reliability
  discount as the agent uses them);
- ``last_minute``: sized to the last minute's demand rather than the hour's peak;
- ``no_surge``: acts only on the 5-minute tick and on notices.

Inputs: the issue's command (``servegen:m-large`` × the AWS 16-node traces, seed catalog, 8 peak nodes,
120 s notice) and ``servegen:m-mid`` on the same market. Prints one JSON object: per input and variant,
cost, SLO attainment and shortfall minutes. About 90 s here.

Run: ``.venv/bin/python bench/policy_variants.py``
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

import msgspec

from agent.backtest import Setup, build_setup, make_policy, sim_config
from agent.config import Settings, load_settings, resolve_catalog
from agent.sim.replay import run_backtest
from agent.sim.strategies import RollingPolicy

SPOT = "skypilot:availability/16-node/aws-08-27-2023"
INPUTS = {"m-large": "servegen:m-large", "m-mid": "servegen:m-mid"}


def _with_backtest(settings: Settings, **changes: object) -> Settings:
    return msgspec.structs.replace(settings, backtest=msgspec.structs.replace(settings.backtest, **changes))


def _variants(settings: Settings) -> dict[str, tuple[Settings, bool, Callable[[RollingPolicy], None]]]:
    """name → (settings, use the [backtest] section, change to the built policy)."""

    def same(_policy: RollingPolicy) -> None:
        return None

    def last_minute(policy: RollingPolicy) -> None:
        policy.base_window_steps = 1

    def no_surge(policy: RollingPolicy) -> None:
        policy.replan_on_surge = False

    return {
        "shipped": (settings, True, same),
        "floor_0.4": (_with_backtest(settings, min_non_spot_fraction=0.4), True, same),
        "no_floor": (_with_backtest(settings, min_non_spot_fraction=0.0), True, same),
        "no_zone_rule": (settings, False, same),
        "last_minute": (settings, True, last_minute),
        "no_surge": (settings, True, no_surge),
    }


def _run(
    setup: Setup, settings: Settings, backtest: bool, change: Callable[[RollingPolicy], None]
) -> dict[str, object]:
    cfg = settings.optimizer.to_core()
    if backtest:
        cfg = settings.backtest.apply(cfg)
    policy = make_policy("rolling", setup, settings, cfg)
    assert isinstance(policy, RollingPolicy)
    change(policy)
    started = time.perf_counter()
    result = run_backtest(
        setup.catalog, setup.demand, setup.market, policy, setup.sim, start_epoch=setup.start_epoch
    )
    return {
        "cost": round(result.cost, 2),
        "slo_attainment": round(result.slo_attainment, 6),
        "shortfall_minutes": result.shortfall_minutes,
        "reserved": result.reserved,
        "seconds": round(time.perf_counter() - started, 2),
    }


def main() -> None:
    settings = load_settings()
    sim = sim_config(settings, step_s=60.0, notice_s=120.0, boot_s=360.0, warmup_days=7.0)
    out: dict[str, object] = {"benchmark": "policy_variants", "spot": SPOT, "catalog": "seed", "inputs": {}}
    for label, trace in INPUTS.items():
        setup = build_setup(resolve_catalog("seed"), trace, SPOT, sim, peak=8)
        rows = {}
        for name, (variant, backtest, change) in _variants(settings).items():
            print(f"{label}: {name}", file=sys.stderr)
            rows[name] = _run(setup, variant, backtest, change)
        out["inputs"][label] = rows  # type: ignore[index]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
