"""What the tick optimizer (and the commitment planner, which covers each step as the tick would) is told."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OptimizerConfig:
    min_non_spot_instances: int = 1
    min_non_spot_fraction: float = 0.0
    max_pool_share: float = 0.5
    max_step_up: int | None = 2
    max_step_down: int | None = 1
    relax_step_limits: bool = True
    switching_cost_hours: float = 0.0
    """Charge each launch this many hours of its price (boot time is paid but not useful)."""
    discount_spot_by_reliability: bool = True
    allow_ondemand: bool = True
    """False for a reserved + spot-only fleet (the backtest's reserved-spot baseline)."""
    time_limit_s: float = 5.0
    """Per solve; the best allocation found by then is used (ticks take milliseconds: bench/optimizer.py)."""
    survive_zone_loss: float = 0.0
    """Share of current demand still covered if every spot node of any one zone (pool name, all types)
    were reclaimed at once; 0 turns the rule off. Reclaims come in waves per zone. Applies when the
    catalog has two zones or more (with one, ``min_non_spot_fraction`` is what survives a wave)."""

    def __post_init__(self) -> None:
        if self.min_non_spot_instances < 0:
            raise ValueError("min_non_spot_instances must be ≥ 0")
        if not 0 <= self.min_non_spot_fraction <= 1:
            raise ValueError("min_non_spot_fraction must be in [0, 1]")
        if not 0 < self.max_pool_share <= 1:
            raise ValueError("max_pool_share must be in (0, 1]")
        for name in ("max_step_up", "max_step_down"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be ≥ 0 or unset")
        if not 0 <= self.survive_zone_loss <= 1:
            raise ValueError("survive_zone_loss must be in [0, 1]")
        if not self.time_limit_s > 0:
            raise ValueError("time_limit_s must be > 0")
        if self.switching_cost_hours < 0:
            raise ValueError("switching_cost_hours must be ≥ 0")
