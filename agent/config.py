"""Settings: a TOML file, then environment overrides; and the instance catalogs by name or path.

File sections: ``catalog`` (a built-in name or a path), ``[slo]``, ``[optimizer]``, ``[limits]``,
``[profiler]``, ``[planner]``, and for ``cost-agent run`` ``[bus]``, ``[metrics]``, ``[reporter]``,
``[supervisor]``, ``[spot_monitor]``, ``[migration]``, ``[dynamo]``, ``[state]`` and ``[leader]``;
every field has a default a user can defend (see ``deploy/agent.example.toml``).
Environment: ``COST_AGENT_CATALOG`` and ``COST_AGENT_<SECTION>__<FIELD>`` (for example
``COST_AGENT_OPTIMIZER__MAX_STEP_UP=3``), values read as TOML literals, except for text fields (a
password, a URL, a name), which take the variable's text as it is. Anything invalid raises
:class:`ConfigError` with one line naming the file (or variable) and the field.
"""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import msgspec.inspect

from agent.actuators.settings import ActuatorSettings
from agent.core.capacity import SloConfig
from agent.core.catalog import Catalog, CatalogError, load_catalog
from agent.core.demand_policy import (
    ARRIVALS_SAMPLE_S,
    AUTO,
    ROLLING_STEP_S,
    ROLLING_WINDOW_S,
    Auto,
    DemandPolicyConfig,
)
from agent.core.lease import (
    MAX_LEASE_SECONDS,
    MAX_REPLICA_ID_LENGTH,
    MIN_LEASE_SECONDS,
    REPLICA_ID_PATTERN,
    LeaseTiming,
    default_replica_id,
)
from agent.core.optimizer_config import (
    DiscountSpot,
    FleetLimits,
    OptimizerConfig,
    PoolShare,
    SurviveZoneLoss,
)
from agent.core.profiler import DemandProfiler
from agent.core.rolling_demand import RollingDemand
from agent.core.validation import split_error
from agent.providers.dynamo.event_plane import DYNAMO_NAME_PATTERN
from agent.providers.dynamo.frontend_metrics import MAX_FRONTENDS
from agent.runtime.bus_security import BusSecurity

CATALOG_DIR = Path(__file__).parent / "catalogs"
ENV_PREFIX = "COST_AGENT_"


class ConfigError(ValueError):
    """A setting that cannot be used: one line naming where it came from and the field."""


class _Section(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    pass


class SloSettings(_Section, frozen=True):
    utilization_target: Annotated[
        float,
        msgspec.Meta(gt=0, le=1, description="utilization a node may run at and still meet the latency SLO"),
    ] = 0.70
    target_attainment: Annotated[
        float,
        msgspec.Meta(
            gt=0,
            lt=1,
            description=(
                "share of demand (token-weighted) to serve within its minute; the rolling policy sizes its "
                "headroom so that, on the observed history, demand surprises would use no more than half "
                "the allowed miss"
            ),
        ),
    ] = 0.999
    queue_delay_seconds: Annotated[
        float,
        msgspec.Meta(
            ge=1,
            le=3600,
            description=(
                "the backtest's queue score: share of tokens served within this many seconds of arrival, "
                "capacity replayed as a FIFO queue"
            ),
        ),
    ] = 60.0


_Seconds = Annotated[float, msgspec.Meta(ge=0, le=86_400)]  # up to a day: beyond, the profile knows better
# A timer's period or a positive duration: below 50 ms a timer busies the event loop (1e-300 hung the agent,
# SIGTERM ignored), beyond a day it never ticks (inf); NaN and infinities are refused by the same bounds.
_Interval = Annotated[float, msgspec.Meta(ge=0.05, le=86_400)]


class OptimizerSettings(OptimizerConfig, _Section, frozen=True, kw_only=True):
    """The optimizer's fields (defined once, in agent/core/optimizer_config.py), then what only the
    service reads: when to plan, and how it reads demand and prices.

    The agent and the backtest's ``rolling`` plan with these same settings. Four defaults differ from the
    bare optimizer's (``OptimizerConfig``), measured on the backtest (issues 3 and 15): spot spread so
    that any one zone's loss leaves demand served (``survive_zone_loss`` 1) instead of a cap per pool
    (``max_pool_share`` 1: the zone rule is the spread), spot counted at full capacity (reclaims are
    carried by the zone rule and the non-spot floor, not discounted twice), and a launch charged an hour
    of its price (its boot is paid and serves nothing: no node swapped for a barely cheaper one).
    """

    max_pool_share: PoolShare = 1.0
    survive_zone_loss: SurviveZoneLoss = 1.0
    discount_spot_by_reliability: DiscountSpot = False
    switching_cost_hours: Annotated[
        float,
        msgspec.Meta(
            ge=0,
            description="charge each launch this many hours of its price (boot time is paid, not useful)",
        ),
    ] = 1.0

    interval_seconds: Annotated[_Interval, msgspec.Meta(description="the tick")] = 300.0
    # Each of the next three: seconds, or "auto" (agent.core.demand_policy: by the kind of demand seen).
    base_window_seconds: Annotated[
        _Seconds | Auto,
        msgspec.Meta(
            description=(
                "size to the busiest demand observed over this window, not the latest observation. "
                f"\"{AUTO}\": {ROLLING_WINDOW_S:g} (the ten minutes' peak, as the backtest's rolling policy) "
                "while "
                "the agent sees arrivals (a Dynamo frontend's request counter, [dynamo] frontend_urls), 0 "
                "while it sees worker reports only, which count completions, not arrivals (holding their "
                "peak over-provisioned the emulated demo 1.3-2.3x). A number applies whatever the demand, "
                "here and in the next two"
            )
        ),
    ] = AUTO
    surge_check_seconds: Annotated[
        _Seconds | Auto,
        msgspec.Meta(
            description=(
                "between ticks, plan at once when demand passes what the last plan covered, checked this "
                f'often (0: off). "{AUTO}": {ROLLING_STEP_S:g} with arrivals (each step, as the backtest; '
                f"arrivals are sampled every {ARRIVALS_SAMPLE_S:g} s for the peak and the mean), off with "
                "worker reports only (they are sampled at each check)"
            )
        ),
    ] = AUTO
    demand_smoothing_seconds: Annotated[
        _Seconds | Auto,
        msgspec.Meta(
            description=(
                f'the observed demand is the mean of its samples over this window. "{AUTO}": '
                f"{ROLLING_STEP_S:g} with arrivals (a minute's mean, what each step of the backtest "
                "observes), 0 with worker reports only"
            )
        ),
    ] = AUTO
    spot_price_max_age_seconds: Annotated[
        _Interval,
        msgspec.Meta(description="a price older than this is ignored (the catalog's price is used)"),
    ] = 1800.0
    boot_seconds: Annotated[
        _Interval,
        msgspec.Meta(
            description=(
                "how long a launched node takes to serve: with the tick, the lead time the headroom "
                "covers (the backtest uses its own --boot)"
            )
        ),
    ] = 360.0
    headroom_share_of_miss: Annotated[
        float,
        msgspec.Meta(
            gt=0,
            lt=1,
            description=(
                "share of the SLO's allowed miss the headroom may spend on demand surprises (sized on the "
                "observed history); the rest is left to reclaims"
            ),
        ),
    ] = 0.5
    headroom_history_days: Annotated[
        float,
        msgspec.Meta(ge=1 / 24, le=28, description="days of one-minute demand the headroom is fitted on"),
    ] = 7.0
    outage_share: Annotated[
        float,
        msgspec.Meta(
            ge=0,
            lt=1,
            description=(
                "arrivals below this share of what the demand profile expects over the coming lead time "
                "are an outage upstream, not users leaving: the plan holds the expectation for their "
                "return (0: off)"
            ),
        ),
    ] = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        self.demand_policy()  # refuses what is neither "auto" nor seconds ≥ 0 (settings built in code)

    def demand_policy(self) -> DemandPolicyConfig:
        """The observed demand's base, surge check and smoothing as configured (``"auto"`` included)."""
        return DemandPolicyConfig(
            self.base_window_seconds, self.surge_check_seconds, self.demand_smoothing_seconds
        )

    def to_core(self) -> OptimizerConfig:
        """The optimizer's own fields, without the service's."""
        return OptimizerConfig(**{name: getattr(self, name) for name in OptimizerConfig.__struct_fields__})


class LimitsSettings(FleetLimits, _Section, frozen=True, kw_only=True):
    """Guardrails on every plan, whatever demand the bus reports: nodes per tier and in total, and dollars
    per hour (the fields are defined once, in agent/core/optimizer_config.py). The defaults, the fields'
    upper bounds, are no limit. A plan they clamp names them in its binding, is counted in
    costagent_plan_limited_total and logged (plan_limited)."""


class ProfilerSettings(_Section, frozen=True):
    bin_minutes: Annotated[
        int, msgspec.Meta(ge=1, le=1440, description="width of a demand bin; divides a day")
    ] = 5
    history_days: Annotated[int, msgspec.Meta(ge=1, description="days of history the profile keeps")] = 28
    timezone: Annotated[
        str, msgspec.Meta(description="IANA name; day-of-week and time-of-day are taken in this zone")
    ] = "UTC"
    neighbour_bins: Annotated[
        int, msgspec.Meta(ge=0, description="a cell pools its own bin and this many neighbours on each side")
    ] = 2
    residual_spread: Annotated[
        bool, msgspec.Meta(description="widen P75/P95 by the spread of the history's own forecast errors")
    ] = True
    close_delay_seconds: Annotated[
        _Seconds,
        msgspec.Meta(description="a bin is recorded this long after it ends (late worker reports)"),
    ] = 15.0
    stale_after_seconds: Annotated[
        _Interval,
        msgspec.Meta(description="a worker silent this long no longer counts towards current demand"),
    ] = 60.0

    def build(self) -> DemandProfiler:
        return DemandProfiler(
            bin_minutes=self.bin_minutes,
            history_days=self.history_days,
            timezone=self.timezone,
            neighbour_bins=self.neighbour_bins,
            residual_spread=self.residual_spread,
        )


class BacktestSettings(_Section, frozen=True):
    """The backtest's own settings: the hedges its ``foresight-demand`` yardstick may choose from.

    Policy settings are not here: the backtest's ``rolling`` plans with the [optimizer] settings, as the
    agent does.
    """

    yardstick_floors: Annotated[
        list[Annotated[float, msgspec.Meta(ge=0, le=1)]],
        msgspec.Meta(
            min_length=1,
            max_length=20,
            description="foresight-demand's non-spot floors to try (share of its window's peak need)",
        ),
    ] = msgspec.field(default_factory=lambda: [0.0, 0.25, 0.5])
    yardstick_zone_rule: Annotated[
        list[bool],
        msgspec.Meta(
            min_length=1,
            max_length=2,
            description="foresight-demand with and/or without spot spread to survive any one zone's loss",
        ),
    ] = msgspec.field(default_factory=lambda: [False, True])
    yardstick_reserved: Annotated[
        list[Annotated[int, msgspec.Meta(ge=0, le=1000)]],
        msgspec.Meta(
            min_length=1,
            max_length=20,
            description="foresight-demand's reserved nodes to try (of the type cheapest per capacity)",
        ),
    ] = msgspec.field(default_factory=lambda: [0, 2])
    yardstick_scores: Annotated[
        Literal["minute", "both"],
        msgspec.Meta(
            description=(
                "what foresight-demand's hedge must hold: minute (the per-minute SLO) or both (also the "
                "queue score, as rolling must)"
            )
        ),
    ] = "minute"


class PlannerSettings(_Section, frozen=True):
    horizon_days: Annotated[float, msgspec.Meta(gt=0, le=366, description="commitment planning horizon")] = (
        30.0
    )
    levels: Annotated[
        int, msgspec.Meta(ge=1, le=1000, description="demand levels the horizon is grouped into")
    ] = 48


class SpotMonitorSettings(_Section, frozen=True):
    health_check_seconds: Annotated[
        _Interval, msgspec.Meta(description="how often workers are checked for silence")
    ] = 10.0
    missed_intervals: Annotated[
        float,
        msgspec.Meta(
            gt=0, description="a worker silent this many of its report intervals is lost: requeue, replace"
        ),
    ] = 3.0
    prelaunch_on_rebalance: Annotated[
        bool, msgspec.Meta(description="on a rebalance recommendation, plan a replacement before any notice")
    ] = False
    max_notices_per_minute: Annotated[
        int,
        msgspec.Meta(
            ge=1,
            le=100_000,
            description=(
                "notices that become drains, per minute; a burst of this many is let through at once (a "
                "zone-wide reclaim), more are held and released at this rate, the earliest deadline first"
            ),
        ),
    ] = 120
    max_held_notices: Annotated[
        int,
        msgspec.Meta(
            ge=1, le=100_000, description="notices held above the rate (one per instance); beyond, dropped"
        ),
    ] = 10_000
    notice_batch_seconds: Annotated[
        float,
        msgspec.Meta(
            ge=0.05,
            le=60,
            description=(
                "the nodes going (notices, silent workers) within this window are replanned in one plan, "
                "not one per node; drains are ordered at once"
            ),
        ),
    ] = 1.0


class MigrationSettings(_Section, frozen=True):
    policy: Annotated[
        Literal["deadline", "migrate_top_n", "let_short_finish"],
        msgspec.Meta(description="deadline (default), or the seed's migrate_top_n / let_short_finish"),
    ] = "deadline"
    safety_margin_seconds: Annotated[
        _Seconds,
        msgspec.Meta(description="whatever needs the reclaimed node is done this long before its deadline"),
    ] = 5.0
    same_node_gbytes_per_s: Annotated[
        float, msgspec.Meta(gt=0, description="KV transfer rate between GPUs of one node")
    ] = 100.0
    cross_node_gbytes_per_s: Annotated[
        float,
        msgspec.Meta(
            gt=0, description="the node's network egress for KV (25 Gbit/s), shared by its transfers"
        ),
    ] = 3.125
    kv_bytes_per_token: Annotated[
        float, msgspec.Meta(gt=0, description="320 KiB: a 70B model with GQA in fp16")
    ] = 327_680.0
    block_tokens: Annotated[int, msgspec.Meta(ge=1, description="tokens per KV (prefix) block")] = 16
    max_concurrency: Annotated[
        int, msgspec.Meta(ge=1, description="migration commands in flight at once, per drained node")
    ] = 32
    command_timeout_seconds: Annotated[
        _Interval, msgspec.Meta(description="per worker or router command (never past the deadline)")
    ] = 2.0
    hot_blocks: Annotated[
        int, msgspec.Meta(ge=0, description="hot prefix blocks copied to survivors with the time left")
    ] = 100


class BusSettings(BusSecurity, _Section, frozen=True, kw_only=True):
    """The rest is for `cost-agent run`, the service. Credentials and TLS files are checked at start-up:
    a pairing that cannot work or a missing file stops it with one line naming the field. Secrets are
    better set in the environment (COST_AGENT_BUS__PASSWORD); they are never logged."""

    namespace: Annotated[
        str,
        msgspec.Meta(
            pattern=r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*$",
            description="the first token of every subject, so that permissions and streams scope by it",
        ),
    ] = "costagent"
    url: Annotated[
        str,
        msgspec.Meta(
            description="empty: NATS_URL, else an embedded nats-server from the virtual environment"
        ),
    ] = ""
    source: Annotated[
        str,
        msgspec.Meta(
            min_length=1, description="the envelope's source field on everything the agent publishes"
        ),
    ] = "cost-agent"


class MetricsSettings(_Section, frozen=True):
    enabled: Annotated[bool, msgspec.Meta(description="serve GET /metrics (Prometheus) and /healthz")] = True
    host: Annotated[str, msgspec.Meta(description="the address to listen on")] = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535, description="0 picks a free port (logged)")] = 9464


class ReporterSettings(_Section, frozen=True):
    interval_seconds: Annotated[
        _Interval, msgspec.Meta(description="a cost report is published this often")
    ] = 60.0


class SupervisorSettings(_Section, frozen=True):
    max_restarts: Annotated[
        int,
        msgspec.Meta(
            ge=0,
            description=(
                "an actor crashing more often than this within window_seconds stops the agent (exit 1)"
            ),
        ),
    ] = 5
    window_seconds: Annotated[_Interval, msgspec.Meta(description="the window max_restarts counts in")] = 60.0
    shutdown_grace_seconds: Annotated[
        _Interval, msgspec.Meta(description="on SIGTERM: drain, then cancel what is left after this long")
    ] = 4.0


class StateSettings(_Section, frozen=True):
    """Durable state: what the actors know (demand profile, ledger, fleet, last plan, drains in progress)
    is saved in a NATS JetStream key-value bucket named after [bus] namespace, so that a restarted agent,
    or a replica taking over as leader, resumes it."""

    store: Annotated[
        Literal["jetstream", "none"],
        msgspec.Meta(
            description=(
                'jetstream: saved in the NATS server\'s JetStream (it must have JetStream); "none": nothing '
                "is saved, a restart starts from nothing"
            )
        ),
    ] = "jetstream"
    snapshot_seconds: Annotated[
        _Interval,
        msgspec.Meta(
            description=(
                "state that changed is saved this often (what kill -9 can lose); drains, notices, fleet "
                "events and plans are saved at once"
            )
        ),
    ] = 10.0
    history: Annotated[
        int, msgspec.Meta(ge=1, le=64, description="snapshots kept per key (JetStream allows up to 64)")
    ] = 1
    replicas: Annotated[
        int, msgspec.Meta(ge=1, le=5, description="copies of the bucket in a JetStream cluster (1 to 5)")
    ] = 1
    store_dir: Annotated[
        str,
        msgspec.Meta(
            description=(
                "the embedded nats-server's JetStream directory (no [bus] url nor NATS_URL); empty: a "
                "temporary one, gone when the agent stops. The same directory lets a restarted "
                "cost-agent run resume"
            )
        ),
    ] = ""


class LeaderSettings(_Section, frozen=True):
    """Several `cost-agent run` replicas may share one namespace: one leads (only it plans, drains, commands
    the router and answers requests), through a lease in a NATS JetStream key-value bucket named after
    [bus] namespace; the others follow, serving /healthz (status "follower") and /metrics, and one takes
    over when the leader stops renewing (killed: within lease_seconds and a second or two)."""

    enabled: Annotated[
        bool | Literal["auto"],
        msgspec.Meta(
            description=(
                '"auto": on when [state] store = "jetstream" (a replica taking over resumes the saved '
                "state); on, the NATS server must have JetStream; off: this agent acts alone, and a second "
                "one on the namespace would double every plan"
            )
        ),
    ] = "auto"
    lease_seconds: Annotated[
        float,
        msgspec.Meta(
            ge=MIN_LEASE_SECONDS,
            le=MAX_LEASE_SECONDS,
            description=(
                "a follower takes over a lease it has itself seen unrenewed this long; the leader renews "
                "every third of it and, unable to, stops its actors after two thirds, before anyone can "
                "take over"
            ),
        ),
    ] = 10.0
    replica_id: Annotated[
        str,
        msgspec.Meta(
            max_length=MAX_REPLICA_ID_LENGTH,
            pattern=f"^({REPLICA_ID_PATTERN})?$",
            description="this replica's name in the lease and the logs; empty: hostname-pid",
        ),
    ] = ""

    def active(self, state_store: str) -> bool:
        """Whether this agent campaigns for the lease, given [state] store."""
        return self.enabled if isinstance(self.enabled, bool) else state_store == "jetstream"

    def timing(self) -> LeaseTiming:
        return LeaseTiming(self.lease_seconds)

    def replica(self) -> str:
        return self.replica_id or default_replica_id(socket.gethostname(), os.getpid())


_FRONTEND_URL = r"^https?://[^\s/?#@]+(/[^\s?#]*)?$"
FrontendUrl = Annotated[str, msgspec.Meta(pattern=_FRONTEND_URL)]
DynamoName = Annotated[str, msgspec.Meta(pattern=DYNAMO_NAME_PATTERN)]


class DynamoSettings(_Section, frozen=True):
    """NVIDIA Dynamo beside the agent: the frontends whose /metrics give the demand, and the endpoint whose
    workers publish their load on Dynamo's event plane."""

    frontend_urls: Annotated[
        list[FrontendUrl],
        msgspec.Meta(
            max_length=MAX_FRONTENDS,
            description=(
                "Dynamo frontends' base URLs (http://host:port), each scraped at <url>/metrics and summed; "
                "empty: no frontend is read"
            ),
        ),
    ] = msgspec.field(default_factory=list)
    namespace: Annotated[DynamoName, msgspec.Meta(description="Dynamo's namespace (its DYN_NAMESPACE)")] = (
        "dynamo"
    )
    component: Annotated[DynamoName, msgspec.Meta(description="the workers' Dynamo component")] = "backend"
    endpoint: Annotated[DynamoName, msgspec.Meta(description="the workers' Dynamo endpoint")] = "generate"
    nats_url: Annotated[
        str,
        msgspec.Meta(
            pattern=r"^((nats|tls|ws|wss)://[^\s,]+)?$",
            description="the NATS server of Dynamo's event plane (its NATS_SERVER); empty: the agent's bus",
        ),
    ] = ""
    scrape_interval_seconds: Annotated[
        float, msgspec.Meta(ge=0.5, le=3600, description="each frontend's /metrics is read this often")
    ] = 5.0

    def __post_init__(self) -> None:
        urls = self.urls()
        if len(set(urls)) != len(urls):
            raise ValueError("frontend_urls: a frontend listed twice would count its demand twice")

    def urls(self) -> tuple[str, ...]:
        """The frontends' base URLs, without a trailing slash."""
        return tuple(url.rstrip("/") for url in self.frontend_urls)


class Settings(_Section, frozen=True):
    """cost-agent settings. Every field is optional; the values below are the defaults.
    Environment overrides: COST_AGENT_CATALOG, COST_AGENT_<SECTION>__<FIELD> (e.g.
    COST_AGENT_SLO__UTILIZATION_TARGET=0.6)."""

    catalog: Annotated[
        str,
        msgspec.Meta(description="a built-in catalog (seed, gcp-2026-07) or a path to your own catalog TOML"),
    ] = "seed"
    slo: SloSettings = msgspec.field(default_factory=SloSettings)
    optimizer: OptimizerSettings = msgspec.field(default_factory=OptimizerSettings)
    limits: LimitsSettings = msgspec.field(default_factory=LimitsSettings)
    profiler: ProfilerSettings = msgspec.field(default_factory=ProfilerSettings)
    backtest: BacktestSettings = msgspec.field(default_factory=BacktestSettings)
    planner: PlannerSettings = msgspec.field(default_factory=PlannerSettings)
    bus: BusSettings = msgspec.field(default_factory=BusSettings)
    metrics: MetricsSettings = msgspec.field(default_factory=MetricsSettings)
    reporter: ReporterSettings = msgspec.field(default_factory=ReporterSettings)
    supervisor: SupervisorSettings = msgspec.field(default_factory=SupervisorSettings)
    spot_monitor: SpotMonitorSettings = msgspec.field(default_factory=SpotMonitorSettings)
    migration: MigrationSettings = msgspec.field(default_factory=MigrationSettings)
    dynamo: DynamoSettings = msgspec.field(default_factory=DynamoSettings)
    actuator: ActuatorSettings = msgspec.field(default_factory=ActuatorSettings)
    state: StateSettings = msgspec.field(default_factory=StateSettings)
    leader: LeaderSettings = msgspec.field(default_factory=LeaderSettings)

    def __post_init__(self) -> None:
        # The profiler forgets an entry that has not reported for stale_after_seconds: a frontend scraped
        # less often would drop out of the current demand between its scrapes.
        if self.dynamo.frontend_urls and not (
            self.dynamo.scrape_interval_seconds < self.profiler.stale_after_seconds
        ):
            raise ValueError(
                f"dynamo.scrape_interval_seconds: {self.dynamo.scrape_interval_seconds:g} must be below "
                f"profiler.stale_after_seconds ({self.profiler.stale_after_seconds:g}), or each "
                "frontend's demand goes stale between scrapes"
            )

    def slo_config(self) -> SloConfig:
        return SloConfig(utilization_target=self.slo.utilization_target)

    def rolling_demand(self, *, boot_s: float | None = None, step_s: float = 60.0) -> RollingDemand:
        """The rolling policy's demand rule (``agent.core.rolling_demand``) in steps of ``step_s``, for
        arrivals (a frontend's, a trace's): the backtest's ``rolling`` and the agent apply this one."""
        opt = self.optimizer
        boot = opt.boot_seconds if boot_s is None else boot_s
        window = opt.demand_policy().resolve("arrivals").base_window_s
        lead = max(1, round((boot + opt.interval_seconds) / step_s))
        return RollingDemand(
            step_s=step_s,
            lead_steps=lead,
            boot_steps=min(max(1, round(boot / step_s)), lead),
            base_window_steps=max(1, round(window / step_s)),
            history_steps=max(1, round(opt.headroom_history_days * 86400 / step_s)),
            headroom_budget=(1 - self.slo.target_attainment) * opt.headroom_share_of_miss,
            outage_share=opt.outage_share,
        )


def _env_overrides(env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The overrides as a nested dict, and the variable each dotted field came from."""
    out: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, raw in env.items():
        if not key.startswith(ENV_PREFIX) or key == ENV_PREFIX + "DATA_DIR":
            continue
        path = key[len(ENV_PREFIX) :].lower().split("__")
        value: Any = raw
        if not _is_text_field(path):  # a password of digits stays the text it is
            try:
                value = tomllib.loads(f"v = {raw}")["v"]
            except tomllib.TOMLDecodeError:
                value = raw  # a bare word such as "auto"
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
        sources[".".join(path)] = key
    return out, sources


def _is_text_field(path: list[str]) -> bool:
    """Whether the settings field at ``path`` holds only text: its variable is taken as it is, not read as
    a TOML literal (``COST_AGENT_BUS__PASSWORD=12345`` is the password "12345", not a number)."""
    info: Any = msgspec.inspect.type_info(Settings)
    for part in path:
        if isinstance(info, msgspec.inspect.Metadata):
            info = info.type
        if not isinstance(info, msgspec.inspect.StructType):
            return False
        field = next((f for f in info.fields if f.name == part), None)
        if field is None:
            return False
        info = field.type
    if isinstance(info, msgspec.inspect.Metadata):
        info = info.type
    return isinstance(info, msgspec.inspect.StrType)


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        where = f"config {path}"
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{where}: not UTF-8 text: invalid byte at offset {exc.start}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    overrides, sources = _env_overrides(env)
    try:
        settings = msgspec.convert(_merge(raw, overrides), Settings)
    except msgspec.ValidationError as exc:
        field, reason = split_error(exc)
        if field in sources:
            where = f"environment {sources[field]}"
        if field == "?":  # a rule across sections (Settings.__post_init__): its reason names the fields
            raise ConfigError(f"{where}: {reason}") from None
        raise ConfigError(f"{where}: field {field!r}: {reason}") from None
    try:
        settings.profiler.build()
    except ValueError as exc:
        culprit = [v for f, v in sources.items() if f.startswith("profiler.")]
        where = f"environment {', '.join(culprit)}" if culprit and path is None else where
        raise ConfigError(f"{where}: section 'profiler': {exc}") from None
    return settings


def builtin_catalogs() -> list[str]:
    return sorted(p.stem for p in CATALOG_DIR.glob("*.toml"))


def resolve_catalog(name_or_path: str) -> Catalog:
    """A built-in catalog by name (``seed``, ``gcp-2026-07``) or a catalog file by path."""
    builtin = CATALOG_DIR / f"{name_or_path}.toml"
    if "/" not in name_or_path and not name_or_path.endswith(".toml"):
        if not builtin.is_file():
            raise CatalogError(
                f"catalog {name_or_path!r}: no such built-in catalog "
                f"(have: {', '.join(builtin_catalogs())}); give a path to a .toml file for your own"
            )
        return load_catalog(builtin)
    return load_catalog(name_or_path)
