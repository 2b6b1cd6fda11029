"""Settings: a TOML file, then environment overrides; and the instance catalogs by name or path.

File sections: ``catalog`` (a built-in name or a path), ``[slo]``, ``[optimizer]``, ``[profiler]``,
``[planner]``, and for ``cost-agent run`` ``[bus]``, ``[metrics]``, ``[reporter]``, ``[supervisor]``,
``[spot_monitor]`` and ``[migration]``;
every field has a default a user can defend (see ``deploy/agent.example.toml``).
Environment: ``COST_AGENT_CATALOG`` and ``COST_AGENT_<SECTION>__<FIELD>`` (for example
``COST_AGENT_OPTIMIZER__MAX_STEP_UP=3``), values read as TOML literals. Anything invalid raises
:class:`ConfigError` with one line naming the file (or variable) and the field.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from agent.core.capacity import SloConfig
from agent.core.catalog import Catalog, CatalogError, load_catalog
from agent.core.optimizer import OptimizerConfig
from agent.core.profiler import DemandProfiler
from agent.core.validation import split_error

CATALOG_DIR = Path(__file__).parent / "catalogs"
ENV_PREFIX = "COST_AGENT_"


class ConfigError(ValueError):
    """A setting that cannot be used: one line naming where it came from and the field."""


class _Section(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    pass


class SloSettings(_Section, frozen=True):
    utilization_target: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.70
    target_attainment: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 0.999
    """Share of demand (token-weighted) to serve within its step; half the miss sizes the headroom."""


class OptimizerSettings(_Section, frozen=True):
    interval_seconds: Annotated[float, msgspec.Meta(gt=0)] = 300.0
    min_non_spot_instances: Annotated[int, msgspec.Meta(ge=0)] = 1
    min_non_spot_fraction: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.5
    max_pool_share: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5
    survive_zone_loss: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    step_limits: bool = True
    max_step_up: Annotated[int, msgspec.Meta(ge=0)] = 2
    max_step_down: Annotated[int, msgspec.Meta(ge=0)] = 1
    switching_cost_hours: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    discount_spot_by_reliability: bool = True
    base_window_seconds: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    surge_check_seconds: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    demand_smoothing_seconds: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    spot_price_max_age_seconds: Annotated[float, msgspec.Meta(gt=0)] = 1800.0

    def to_core(self) -> OptimizerConfig:
        return OptimizerConfig(
            min_non_spot_instances=self.min_non_spot_instances,
            min_non_spot_fraction=self.min_non_spot_fraction,
            max_pool_share=self.max_pool_share,
            max_step_up=self.max_step_up if self.step_limits else None,
            max_step_down=self.max_step_down if self.step_limits else None,
            switching_cost_hours=self.switching_cost_hours,
            discount_spot_by_reliability=self.discount_spot_by_reliability,
            survive_zone_loss=self.survive_zone_loss,
        )


class ProfilerSettings(_Section, frozen=True):
    bin_minutes: Annotated[int, msgspec.Meta(ge=1, le=1440)] = 5
    history_days: Annotated[int, msgspec.Meta(ge=1)] = 28
    timezone: str = "UTC"
    neighbour_bins: Annotated[int, msgspec.Meta(ge=0)] = 2
    residual_spread: bool = True
    close_delay_seconds: Annotated[float, msgspec.Meta(ge=0)] = 15.0
    stale_after_seconds: Annotated[float, msgspec.Meta(gt=0)] = 60.0

    def build(self) -> DemandProfiler:
        return DemandProfiler(
            bin_minutes=self.bin_minutes,
            history_days=self.history_days,
            timezone=self.timezone,
            neighbour_bins=self.neighbour_bins,
            residual_spread=self.residual_spread,
        )


class BacktestSettings(_Section, frozen=True):
    """The optimizer settings of the backtest's ``rolling`` policy, where they differ from the agent's.

    Measured on the backtest (issue 3): spreading spot so that any one zone's loss leaves demand served,
    with a 50% non-spot floor, holds 99.9% on m-large for 1-17% less than before. The agent keeps its
    own defaults until the zone rule's plans, which flapped between spot and on-demand in the live demo,
    are understood there.
    """

    min_non_spot_fraction: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.5
    max_pool_share: Annotated[float, msgspec.Meta(gt=0, le=1)] = 1.0
    discount_spot_by_reliability: bool = False
    survive_zone_loss: Annotated[float, msgspec.Meta(ge=0, le=1)] = 1.0

    def apply(self, cfg: OptimizerConfig) -> OptimizerConfig:
        return dataclasses.replace(
            cfg,
            min_non_spot_fraction=self.min_non_spot_fraction,
            max_pool_share=self.max_pool_share,
            discount_spot_by_reliability=self.discount_spot_by_reliability,
            survive_zone_loss=self.survive_zone_loss,
        )


class PlannerSettings(_Section, frozen=True):
    horizon_days: Annotated[float, msgspec.Meta(gt=0, le=366)] = 30.0
    levels: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 48


class SpotMonitorSettings(_Section, frozen=True):
    health_check_seconds: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    missed_intervals: Annotated[float, msgspec.Meta(gt=0)] = 3.0
    prelaunch_on_rebalance: bool = False


class MigrationSettings(_Section, frozen=True):
    policy: Literal["deadline", "migrate_top_n", "let_short_finish"] = "deadline"
    safety_margin_seconds: Annotated[float, msgspec.Meta(ge=0)] = 5.0
    same_node_gbytes_per_s: Annotated[float, msgspec.Meta(gt=0)] = 100.0
    cross_node_gbytes_per_s: Annotated[float, msgspec.Meta(gt=0)] = 3.125
    kv_bytes_per_token: Annotated[float, msgspec.Meta(gt=0)] = 327_680.0
    block_tokens: Annotated[int, msgspec.Meta(ge=1)] = 16
    max_concurrency: Annotated[int, msgspec.Meta(ge=1)] = 32
    command_timeout_seconds: Annotated[float, msgspec.Meta(gt=0)] = 2.0
    hot_blocks: Annotated[int, msgspec.Meta(ge=0)] = 100


class BusSettings(_Section, frozen=True):
    namespace: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*$")] = "costagent"
    url: str = ""
    """Empty: the NATS_URL environment variable, else an embedded nats-server."""
    source: Annotated[str, msgspec.Meta(min_length=1)] = "cost-agent"


class MetricsSettings(_Section, frozen=True):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 9464


class ReporterSettings(_Section, frozen=True):
    interval_seconds: Annotated[float, msgspec.Meta(gt=0)] = 60.0


class SupervisorSettings(_Section, frozen=True):
    max_restarts: Annotated[int, msgspec.Meta(ge=0)] = 5
    window_seconds: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    shutdown_grace_seconds: Annotated[float, msgspec.Meta(gt=0)] = 4.0


class Settings(_Section, frozen=True):
    catalog: str = "seed"
    slo: SloSettings = msgspec.field(default_factory=SloSettings)
    optimizer: OptimizerSettings = msgspec.field(default_factory=OptimizerSettings)
    profiler: ProfilerSettings = msgspec.field(default_factory=ProfilerSettings)
    planner: PlannerSettings = msgspec.field(default_factory=PlannerSettings)
    backtest: BacktestSettings = msgspec.field(default_factory=BacktestSettings)
    bus: BusSettings = msgspec.field(default_factory=BusSettings)
    metrics: MetricsSettings = msgspec.field(default_factory=MetricsSettings)
    reporter: ReporterSettings = msgspec.field(default_factory=ReporterSettings)
    supervisor: SupervisorSettings = msgspec.field(default_factory=SupervisorSettings)
    spot_monitor: SpotMonitorSettings = msgspec.field(default_factory=SpotMonitorSettings)
    migration: MigrationSettings = msgspec.field(default_factory=MigrationSettings)

    def slo_config(self) -> SloConfig:
        return SloConfig(utilization_target=self.slo.utilization_target)


def _env_overrides(env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The overrides as a nested dict, and the variable each dotted field came from."""
    out: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, raw in env.items():
        if not key.startswith(ENV_PREFIX) or key == ENV_PREFIX + "DATA_DIR":
            continue
        path = key[len(ENV_PREFIX) :].lower().split("__")
        try:
            value: Any = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw  # a bare word such as a catalog name or a time zone
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
        sources[".".join(path)] = key
    return out, sources


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
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    overrides, sources = _env_overrides(env)
    try:
        settings = msgspec.convert(_merge(raw, overrides), Settings)
    except msgspec.ValidationError as exc:
        field, reason = split_error(exc)
        if field in sources:
            where = f"environment {sources[field]}"
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
