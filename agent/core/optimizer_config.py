"""What the tick optimizer (and the commitment planner, which covers each step as a tick would) is told.

:class:`OptimizerConfig` is the one definition of each optimizer field: its type, its physical range, its
default (what ``cost-agent run`` plans with) and its description. The ``[optimizer]`` settings section
extends it with the settings that only the service reads, the ``[backtest]`` section overrides some of
these fields by the same types (:data:`NonSpotFraction` ...), and ``deploy/agent.example.toml`` is written
from them.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any

import msgspec
import msgspec.inspect

# The field types the ``[backtest]`` override table reuses: its fields are these very fields.
NonSpotFraction = Annotated[
    float,
    msgspec.Meta(
        ge=0,
        le=1,
        description="reserved + on-demand cover this share of next-hour P95 demand if all spot vanished",
    ),
]
PoolShare = Annotated[
    float,
    msgspec.Meta(
        gt=0,
        le=1,
        description="at most this share of the spot fleet (plus one node) in one pool (zone × type)",
    ),
]
SurviveZoneLoss = Annotated[
    float,
    msgspec.Meta(
        ge=0,
        le=1,
        description=(
            "share of current demand still covered if every spot node of any one zone (pool name, all "
            "types) were reclaimed at once, as reclaims come in waves per zone; 0 turns the rule off. "
            "Applies with two zones or more (with one, min_non_spot_fraction is what survives a wave)"
        ),
    ),
]
DiscountSpot = Annotated[bool, msgspec.Meta(description="count spot capacity at (1 - reclaim rate per hour)")]


class OptimizerConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the tick optimizer plans: the reliability rules, the damping, the solver's budget."""

    min_non_spot_instances: Annotated[
        int,
        msgspec.Meta(ge=0, description="never a spot-only fleet: at least this many reserved + on-demand"),
    ] = 1
    min_non_spot_fraction: NonSpotFraction = 0.5
    max_pool_share: PoolShare = 0.5
    survive_zone_loss: SurviveZoneLoss = 0.0
    step_limits: Annotated[
        bool,
        msgspec.Meta(description="damp changes per tick by max_step_up / max_step_down (false: no limits)"),
    ] = True
    max_step_up: Annotated[
        Annotated[int, msgspec.Meta(ge=0)] | None,
        msgspec.Meta(
            description="at most this many more nodes per tier per tick (lifted when demand needs more)"
        ),
    ] = 2
    max_step_down: Annotated[
        Annotated[int, msgspec.Meta(ge=0)] | None,
        msgspec.Meta(
            description="at most this many fewer nodes per tier per tick (reclaimed spot does not count)"
        ),
    ] = 1
    relax_step_limits: Annotated[
        bool,
        msgspec.Meta(
            description=(
                "lift the step limits for a tick whose demand they would leave uncovered, or that "
                "conflict with quotas, spot availability or pool shares"
            )
        ),
    ] = True
    switching_cost_hours: Annotated[
        float,
        msgspec.Meta(
            ge=0,
            description="charge each launch this many hours of its price (boot time is paid, not useful)",
        ),
    ] = 0.0
    discount_spot_by_reliability: DiscountSpot = True
    allow_ondemand: Annotated[
        bool,
        msgspec.Meta(
            description="false: a reserved + spot-only fleet (the backtest's reserved-spot baseline)"
        ),
    ] = True
    time_limit_s: Annotated[
        float,
        msgspec.Meta(
            gt=0,
            description="per solve; the best allocation found by then is used (ticks take milliseconds)",
        ),
    ] = 5.0

    def __post_init__(self) -> None:
        check_ranges(self)

    @property
    def step_up_limit(self) -> int | None:
        """Nodes a tier may grow by in one tick (None: no limit)."""
        return self.max_step_up if self.step_limits else None

    @property
    def step_down_limit(self) -> int | None:
        """Nodes a tier may shrink by in one tick (None: no limit)."""
        return self.max_step_down if self.step_limits else None


# A fleet of a hundred thousand nodes or a million dollars an hour is beyond any team's: a larger figure is a
# typo (or 2^64 - 1), not a limit. At these bounds (the defaults) a limit is off: the program leaves it out.
NO_NODE_LIMIT = 100_000
NO_COST_LIMIT = 1_000_000.0


_Nodes = Annotated[int, msgspec.Meta(ge=0, le=NO_NODE_LIMIT)]
_NO_LIMIT = f" ({NO_NODE_LIMIT}: no limit)"


class FleetLimits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Guardrails a team sets on every plan (the ``[limits]`` settings section); the defaults are no limit.

    The tick optimizer never plans above them, whatever the demand says (a few made-up workers reporting
    100 req/s took a plan from $19/h to $872/h); a plan they clamp names them in its ``binding``
    (``limit:<name>``). Reserved nodes are a commitment the tick cannot change: they count towards
    ``max_total_instances`` and ``max_hourly_cost``, and reserved nodes above ``max_reserved_instances``
    are reported, not released.
    """

    max_reserved_instances: Annotated[
        _Nodes,
        msgspec.Meta(
            description="reserved nodes a plan may hold; the tick only reports an excess" + _NO_LIMIT
        ),
    ] = NO_NODE_LIMIT
    max_spot_instances: Annotated[
        _Nodes, msgspec.Meta(description="spot nodes a plan may hold, all types and pools" + _NO_LIMIT)
    ] = NO_NODE_LIMIT
    max_ondemand_instances: Annotated[
        _Nodes, msgspec.Meta(description="on-demand nodes a plan may hold, all types and pools" + _NO_LIMIT)
    ] = NO_NODE_LIMIT
    max_total_instances: Annotated[
        _Nodes, msgspec.Meta(description="nodes a plan may hold, reserved included" + _NO_LIMIT)
    ] = NO_NODE_LIMIT
    max_hourly_cost: Annotated[
        float,
        msgspec.Meta(
            gt=0,
            le=NO_COST_LIMIT,
            description=(
                f"dollars per hour the planned fleet may cost, reserved included ({NO_COST_LIMIT:.0f}: no "
                "limit)"
            ),
        ),
    ] = NO_COST_LIMIT

    def __post_init__(self) -> None:
        check_ranges(self)

    def nodes(self, which: str) -> int | None:
        """The node limit ``reserved``, ``spot``, ``ondemand`` or ``total`` (None: no limit)."""
        most: int = getattr(self, f"max_{which}_instances")
        return most if most < NO_NODE_LIMIT else None

    def hourly_cost(self) -> float | None:
        """The cost limit in dollars per hour (None: no limit)."""
        return self.max_hourly_cost if self.max_hourly_cost < NO_COST_LIMIT else None

    def any(self) -> bool:
        return self.hourly_cost() is not None or any(
            self.nodes(which) is not None for which in ("reserved", "spot", "ondemand", "total")
        )


def check_ranges(struct: msgspec.Struct) -> None:
    """Raise ValueError naming the first field outside the range its type declares.

    msgspec checks ranges when it decodes (a settings file); this checks a Struct built in code the same
    way, from the same declarations.
    """
    for name, bounds in _ranges(type(struct)).items():
        value = getattr(struct, name)
        if value is None or isinstance(value, bool | str):
            continue  # no number: nothing to range (a string is a Literal its type already names)
        for op, limit in bounds:
            if not _OPS[op](value, limit):
                raise ValueError(f"{name} must be {_SYMBOLS[op]} {limit:g} (got {value!r})")


_OPS = {
    "ge": lambda v, lim: v >= lim,
    "gt": lambda v, lim: v > lim,
    "le": lambda v, lim: v <= lim,
    "lt": lambda v, lim: v < lim,
}
_SYMBOLS = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}


@functools.cache
def _ranges(cls: type[msgspec.Struct]) -> dict[str, list[tuple[str, float]]]:
    """Per field, the numeric bounds its declared type carries (through Annotated and ``| None``)."""
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    return {field.name: _bounds(field.type) for field in info.fields}


def _bounds(t: Any) -> list[tuple[str, float]]:
    if isinstance(t, msgspec.inspect.Metadata):
        return _bounds(t.type)
    if isinstance(t, msgspec.inspect.UnionType):
        return [b for member in t.types for b in _bounds(member)]
    if isinstance(t, msgspec.inspect.IntType | msgspec.inspect.FloatType):
        return [(op, getattr(t, op)) for op in _OPS if getattr(t, op) is not None]
    return []
