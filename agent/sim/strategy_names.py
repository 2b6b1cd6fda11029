"""The names of the capacity strategies a backtest compares, in the order it reports them.

Apart from the strategies themselves (``agent.sim.strategies``, ``agent.backtest``) so that the command
line can list and check them without loading numpy or scipy.
"""

from __future__ import annotations

STRATEGIES: tuple[str, ...] = (
    "all-ondemand",
    "all-reserved",
    "elastic-ondemand",
    "reserved-spot",
    "seed-hybrid",
    "skyserve",
    "skyserve-slo",
    "rolling",
    "foresight-demand",
    "foresight",
    "hindsight",
)


def parse_strategies(text: str) -> list[str]:
    """A comma-separated list of strategy names; ``ValueError`` names any unknown one."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in STRATEGIES]
    if unknown:
        raise ValueError(f"unknown {', '.join(unknown)} (have: {', '.join(STRATEGIES)})")
    return names
