"""Settings, read as a specification: defaults, the example file, file and environment overrides, errors.

Every test passes ``env=`` explicitly, so the environment the tests run in never leaks into them.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import msgspec
import pytest

import agent
from agent.config import (
    BacktestSettings,
    ConfigError,
    OptimizerSettings,
    ProfilerSettings,
    Settings,
    builtin_catalogs,
    load_settings,
    resolve_catalog,
)
from agent.core.catalog import CatalogError
from agent.core.optimizer import OptimizerConfig
from agent.core.optimizer_config import check_ranges
from agent.settings_example import description, example_toml

ROOT = Path(agent.__file__).resolve().parent.parent
EXAMPLE = ROOT / "deploy" / "agent.example.toml"
NO_ENV: dict[str, str] = {}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path: Path | None, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env=NO_ENV if env is None else env)
    message = str(caught.value)
    assert len(message.splitlines()) == 1, message
    if path is not None:
        assert f"config {path}" in message
    return message


# -- defaults -----------------------------------------------------------------------------------------


def test_no_file_and_no_environment_gives_the_defaults() -> None:
    settings = load_settings(env=NO_ENV)
    assert settings == Settings()
    assert settings.catalog == "seed"
    assert settings.slo.utilization_target == 0.70
    assert settings.slo_config().utilization_target == 0.70
    assert settings.optimizer.interval_seconds == 300.0
    assert settings.profiler.timezone == "UTC"
    assert (settings.planner.horizon_days, settings.planner.levels) == (30.0, 48)


def test_default_optimizer_settings_become_the_seeds_damping_and_the_measured_rolling_rules() -> None:
    assert Settings().optimizer.to_core() == OptimizerConfig(
        min_non_spot_instances=1,
        min_non_spot_fraction=0.5,
        max_pool_share=1.0,
        survive_zone_loss=1.0,
        max_step_up=2,
        max_step_down=1,
        switching_cost_hours=1.0,
        discount_spot_by_reliability=False,
    )


def test_the_agent_differs_from_the_bare_optimizer_only_by_the_four_rules_the_backtest_measured() -> None:
    core = msgspec.structs.asdict(OptimizerConfig())
    agent = msgspec.structs.asdict(Settings().optimizer.to_core())
    differ = {name for name in core if core[name] != agent[name]}
    assert differ == {
        "max_pool_share",
        "survive_zone_loss",
        "discount_spot_by_reliability",
        "switching_cost_hours",
    }


def test_the_optimizer_section_is_the_core_config_plus_the_services_own_fields() -> None:
    core = set(OptimizerConfig.__struct_fields__)
    service = set(OptimizerSettings.__struct_fields__) - core
    assert core <= set(OptimizerSettings.__struct_fields__)
    assert service == {
        "interval_seconds",
        "base_window_seconds",
        "surge_check_seconds",
        "demand_smoothing_seconds",
        "spot_price_max_age_seconds",
        "boot_seconds",
        "headroom_share_of_miss",
        "headroom_history_days",
        "outage_share",
    }


def test_the_rolling_rule_comes_from_the_same_settings_for_the_backtest_and_the_agent() -> None:
    settings = Settings()
    agent = settings.rolling_demand()
    backtest = settings.rolling_demand(boot_s=360.0, step_s=60.0)
    assert (agent.lead_steps, agent.boot_steps, agent.base_window_steps) == (11, 6, 10)
    assert agent.headroom_budget == pytest.approx(0.0005)  # half a 99.9% SLO's allowed miss
    assert (agent.history_steps, agent.outage_share) == (7 * 1440, 0.1)
    assert (backtest.lead_steps, backtest.headroom_budget) == (agent.lead_steps, agent.headroom_budget)


def test_the_backtest_section_holds_the_yardsticks_hedges_not_optimizer_overrides() -> None:
    backtest = Settings().backtest
    assert set(BacktestSettings.__struct_fields__) == {
        "yardstick_floors",
        "yardstick_zone_rule",
        "yardstick_reserved",
        "yardstick_scores",
    }
    assert (backtest.yardstick_floors, backtest.yardstick_zone_rule) == ([0.0, 0.25, 0.5], [False, True])
    assert backtest.yardstick_reserved == [0, 2]
    assert backtest.yardstick_scores == "minute"  # issue 15's definition of the yardstick


def test_the_yardstick_scores_are_minute_or_both_and_anything_else_is_refused_with_its_name(
    tmp_path: Path,
) -> None:
    both = load_settings(write(tmp_path, '[backtest]\nyardstick_scores = "both"\n'))
    assert both.backtest.yardstick_scores == "both"
    message = config_error(write(tmp_path, '[backtest]\nyardstick_scores = "queue"\n'))
    assert "yardstick_scores" in message


def test_an_old_backtest_override_is_refused_with_its_name(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, "[backtest]\nmax_pool_share = 1.0\n"))
    assert "max_pool_share" in message


def test_a_yardstick_floor_out_of_its_range_is_refused_with_its_path(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, "[backtest]\nyardstick_floors = [0.0, 1.5]\n"))
    assert "backtest.yardstick_floors" in message


def test_every_setting_is_described_and_every_number_has_a_range() -> None:
    def fields(cls: type[msgspec.Struct]) -> list[msgspec.inspect.Field]:
        info = msgspec.inspect.type_info(cls)
        assert isinstance(info, msgspec.inspect.StructType)
        return list(info.fields)

    def check(cls: type[msgspec.Struct], prefix: str) -> None:
        for field in fields(cls):
            where = f"{prefix}{field.name}"
            if isinstance(field.type, msgspec.inspect.StructType):  # a sub-section: [section.sub]
                check(field.type.cls, f"{where}.")
                continue
            assert description(field), where
            inner = field.type.type if isinstance(field.type, msgspec.inspect.Metadata) else field.type
            members = inner.types if isinstance(inner, msgspec.inspect.UnionType) else (inner,)
            for member in members:
                if isinstance(member, msgspec.inspect.IntType | msgspec.inspect.FloatType):
                    assert (member.ge, member.gt) != (None, None), where

    check(Settings, "")


def test_a_config_built_in_code_is_checked_against_the_same_ranges() -> None:
    with pytest.raises(ValueError, match="min_non_spot_fraction must be ≤ 1"):
        OptimizerConfig(min_non_spot_fraction=1.5)
    with pytest.raises(ValueError, match="max_pool_share must be > 0"):
        msgspec.structs.replace(OptimizerConfig(), max_pool_share=0.0)
    with pytest.raises(ValueError, match="max_step_up must be ≥ 0"):
        OptimizerConfig(max_step_up=-1)
    check_ranges(OptimizerConfig(max_step_up=None, max_step_down=None))


def test_the_demand_readings_are_auto_or_seconds_from_a_file_or_the_environment(tmp_path: Path) -> None:
    # "auto" (the default) follows the kind of demand seen (agent.core.demand_policy); a number is kept.
    assert Settings().optimizer.base_window_seconds == "auto"
    path = write(tmp_path, '[optimizer]\nbase_window_seconds = 1800\nsurge_check_seconds = "auto"\n')
    env = {"COST_AGENT_OPTIMIZER__DEMAND_SMOOTHING_SECONDS": "0"}
    optimizer = load_settings(path, env=env).optimizer
    assert (optimizer.base_window_seconds, optimizer.surge_check_seconds) == (1800.0, "auto")
    assert optimizer.demand_smoothing_seconds == 0.0
    bare = load_settings(env={"COST_AGENT_OPTIMIZER__SURGE_CHECK_SECONDS": "auto"}).optimizer
    assert bare.surge_check_seconds == "auto"  # a bare word in the environment, as for the catalog


@pytest.mark.parametrize(
    "text",
    [
        '[optimizer]\nbase_window_seconds = "sometimes"\n',
        "[optimizer]\nbase_window_seconds = -60\n",
        "[optimizer]\nbase_window_seconds = 604800\n",  # a week: the profile's job, not a peak's
    ],
)
def test_a_demand_reading_neither_auto_nor_seconds_in_range_is_refused_naming_it(
    tmp_path: Path, text: str
) -> None:
    assert "'optimizer.base_window_seconds'" in config_error(write(tmp_path, text))


def test_a_demand_reading_built_in_code_is_checked_too() -> None:
    with pytest.raises(ValueError, match="surge_check_s must be ≥ 0 seconds or 'auto'"):
        OptimizerSettings(surge_check_seconds="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="base_window_seconds must be ≤ 86400"):
        OptimizerSettings(base_window_seconds=604_800.0)


def test_step_limits_false_lifts_both_limits_in_the_core_too() -> None:
    lifted = OptimizerConfig(step_limits=False)
    assert (lifted.step_up_limit, lifted.step_down_limit) == (None, None)
    assert (OptimizerConfig().step_up_limit, OptimizerConfig().step_down_limit) == (2, 1)


def test_the_example_file_loads_to_exactly_the_defaults() -> None:
    assert load_settings(EXAMPLE, env=NO_ENV) == Settings()


def test_the_example_file_spells_out_every_field_with_its_default_value() -> None:
    written = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    assert written == msgspec.to_builtins(Settings())


def test_the_example_file_is_written_from_the_settings_definitions() -> None:
    assert EXAMPLE.read_text(encoding="utf-8") == example_toml(), (
        "deploy/agent.example.toml is stale: run `cost-agent schemas`"
    )


# -- overrides ----------------------------------------------------------------------------------------


def test_a_file_overrides_only_the_fields_it_sets(tmp_path: Path) -> None:
    path = write(tmp_path, '[optimizer]\nmax_step_up = 4\n\n[profiler]\ntimezone = "America/New_York"\n')
    defaults = Settings()
    assert load_settings(path, env=NO_ENV) == msgspec.structs.replace(
        defaults,
        optimizer=msgspec.structs.replace(defaults.optimizer, max_step_up=4),
        profiler=msgspec.structs.replace(defaults.profiler, timezone="America/New_York"),
    )


def test_environment_variables_override_the_catalog_and_section_fields() -> None:
    env = {
        "COST_AGENT_OPTIMIZER__MAX_STEP_UP": "3",
        "COST_AGENT_CATALOG": "gcp-2026-07",
        "COST_AGENT_PROFILER__TIMEZONE": "Europe/Berlin",
    }
    settings = load_settings(env=env)
    assert settings.catalog == "gcp-2026-07"
    assert settings.optimizer == OptimizerSettings(max_step_up=3)
    assert settings.profiler == ProfilerSettings(timezone="Europe/Berlin")
    assert (settings.slo, settings.planner) == (Settings().slo, Settings().planner)


def test_environment_values_are_read_as_toml_literals() -> None:
    env = {"COST_AGENT_OPTIMIZER__STEP_LIMITS": "false", "COST_AGENT_SLO__UTILIZATION_TARGET": "0.6"}
    settings = load_settings(env=env)
    assert settings.optimizer.step_limits is False
    assert settings.slo.utilization_target == 0.6


def test_the_environment_wins_over_the_file_field_by_field(tmp_path: Path) -> None:
    path = write(tmp_path, 'catalog = "gcp-2026-07"\n[optimizer]\nmax_step_up = 4\nmax_step_down = 3\n')
    settings = load_settings(path, env={"COST_AGENT_OPTIMIZER__MAX_STEP_UP": "3"})
    assert settings.catalog == "gcp-2026-07"
    assert (settings.optimizer.max_step_up, settings.optimizer.max_step_down) == (3, 3)


def test_variables_without_the_prefix_and_the_data_dir_variable_are_not_settings() -> None:
    env = {"HOME": "/root", "OPTIMIZER__MAX_STEP_UP": "9", "COST_AGENT_DATA_DIR": "/srv/data"}
    assert load_settings(env=env) == Settings()


def test_step_limits_false_gives_an_optimizer_without_step_limits(tmp_path: Path) -> None:
    path = write(tmp_path, "[optimizer]\nstep_limits = false\n")
    core = load_settings(path, env=NO_ENV).optimizer.to_core()
    assert (core.step_up_limit, core.step_down_limit) == (None, None)
    assert core.min_non_spot_instances == 1


# -- errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "names"),
    [
        pytest.param('[optimizer]\nmax_step_up = "three"\n', ["'optimizer.max_step_up'"], id="wrong-type"),
        pytest.param("[slo]\nutilization_target = 1.5\n", ["'slo.utilization_target'"], id="out-of-range"),
        pytest.param("[optimizer]\nmax_step_upp = 3\n", ["'optimizer.max_step_upp'"], id="unknown-field"),
        pytest.param("[optimiser]\nmax_step_up = 3\n", ["optimiser"], id="unknown-section"),
        pytest.param('catalogue = "seed"\n', ["catalogue"], id="unknown-top-level-field"),
        pytest.param("slo = 0.7\n", ["'slo'"], id="section-given-as-a-value"),
        pytest.param(
            '[profiler]\ntimezone = "Mars/Olympus_Mons"\n',
            ["'profiler'", "timezone", "Mars/Olympus_Mons"],
            id="bad-time-zone",
        ),
        pytest.param(
            "[profiler]\nbin_minutes = 7\n", ["'profiler'", "bin_minutes"], id="bin-not-dividing-a-day"
        ),
    ],
)
def test_a_bad_setting_in_a_file_is_one_line_naming_the_file_and_the_field(
    tmp_path: Path, text: str, names: list[str]
) -> None:
    message = config_error(write(tmp_path, text))
    for name in names:
        assert name in message


def test_a_bad_environment_value_is_one_line_naming_the_environment_and_the_field() -> None:
    message = config_error(None, env={"COST_AGENT_SLO__UTILIZATION_TARGET": "1.5"})
    assert "environment COST_AGENT_" in message
    assert "'slo.utilization_target'" in message


def test_an_unreadable_file_is_one_line_naming_the_file(tmp_path: Path) -> None:
    message = config_error(tmp_path / "missing.toml")
    assert "cannot read" in message


def test_invalid_toml_is_one_line_naming_the_file_and_the_position(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, "[slo]\nutilization_target = \n"))
    assert "not valid TOML" in message
    assert "line 2" in message


def test_the_field_slot_names_an_unknown_section(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, "[optimiser]\nmax_step_up = 3\n"))
    assert "field 'optimiser'" in message


# -- catalogs by name or path -------------------------------------------------------------------------


def test_the_built_in_catalogs_are_seed_and_gcp_2026_07() -> None:
    assert builtin_catalogs() == ["gcp-2026-07", "seed"]


@pytest.mark.parametrize("name", ["seed", "gcp-2026-07"])
def test_a_built_in_catalog_resolves_by_its_name(name: str) -> None:
    assert resolve_catalog(name).name == name


def test_a_catalog_resolves_by_path(tmp_path: Path) -> None:
    seed_text = (ROOT / "agent" / "catalogs" / "seed.toml").read_text(encoding="utf-8")
    path = tmp_path / "mine.toml"
    path.write_text(seed_text.replace('name = "seed"', 'name = "mine"'), encoding="utf-8")
    catalog = resolve_catalog(str(path))
    assert catalog.name == "mine"
    assert list(catalog.types) == ["h100_8x", "a100_8x"]


def test_a_missing_catalog_path_is_a_catalog_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    with pytest.raises(CatalogError, match="cannot read") as caught:
        resolve_catalog(str(path))
    assert str(path) in str(caught.value)


def test_an_unknown_catalog_name_is_one_line_listing_the_built_ins() -> None:
    with pytest.raises(CatalogError) as caught:
        resolve_catalog("nosuch")
    message = str(caught.value)
    assert len(message.splitlines()) == 1
    assert "'nosuch'" in message
    assert "gcp-2026-07, seed" in message


def test_a_bad_environment_value_names_its_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(
            write(tmp_path, "[slo]\nutilization_target = 0.6\n"),
            env={"COST_AGENT_OPTIMIZER__MAX_STEP_UP": "lots"},
        )
    assert "environment COST_AGENT_OPTIMIZER__MAX_STEP_UP" in str(info.value)
    assert "field 'optimizer.max_step_up'" in str(info.value)


def test_a_frontend_scraped_less_often_than_demand_goes_stale_stops_start_up(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[dynamo]\nfrontend_urls = ["http://127.0.0.1:8000"]\nscrape_interval_seconds = 120\n\n'
        "[profiler]\nstale_after_seconds = 60\n",
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env=NO_ENV)
    assert "dynamo.scrape_interval_seconds" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_without_frontends_the_scrape_interval_is_not_checked_against_the_profiler(tmp_path: Path) -> None:
    path = write(tmp_path, "[dynamo]\nscrape_interval_seconds = 120\n")
    assert load_settings(path, env=NO_ENV).dynamo.scrape_interval_seconds == 120


# --- [bus]: credentials and TLS ------------------------------------------------------------------------


def bus_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f"[bus]\n{body}\n")
    return path


def test_bus_credentials_come_from_the_file_and_the_password_from_the_environment(tmp_path: Path) -> None:
    path = bus_file(tmp_path, 'user = "agent"')
    bus = load_settings(path, env={"COST_AGENT_BUS__PASSWORD": "s3cret"}).bus
    assert (bus.user, bus.password) == ("agent", "s3cret")
    assert bus.connect_options() == {"connect_timeout": 5.0, "user": "agent", "password": "s3cret"}


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ('password = "x"', "password: a password needs a user"),
        ('user = "agent"', "user: a user needs a password"),
        ('user = "a"\npassword = "b"\ntoken = "t"', "token: give one of"),
        ('tls_key_file = "KEY"', "tls_key_file: needs tls_cert_file too"),
        ('tls_cert_file = "KEY"', "tls_cert_file: needs tls_key_file too"),
        ('creds_file = "/nonexistent/agent.creds"', "creds_file: no such file: /nonexistent/agent.creds"),
        ('tls_ca_file = "/nonexistent/ca.pem"', "tls_ca_file: no such file"),
        ("connect_timeout_seconds = 0", "connect_timeout_seconds"),
        ("connect_timeout_seconds = 1e9", "connect_timeout_seconds"),
    ],
)
def test_bus_security_that_cannot_work_stops_start_up_in_one_line_naming_the_field(
    tmp_path: Path, body: str, named: str
) -> None:
    (tmp_path / "KEY").write_text("")
    body = body.replace('"KEY"', f'"{tmp_path / "KEY"}"')
    with pytest.raises(ConfigError) as caught:
        load_settings(bus_file(tmp_path, body), env={})
    assert named in str(caught.value)
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith(f"config {tmp_path / 'agent.toml'}: field 'bus")


def test_the_bus_password_is_not_part_of_a_settings_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(bus_file(tmp_path, 'password = "hunter2-secret"'), env={})
    assert "hunter2-secret" not in str(caught.value)


_TIMERS_AND_DURATIONS = [
    "optimizer.interval_seconds",
    "optimizer.spot_price_max_age_seconds",
    "profiler.stale_after_seconds",
    "spot_monitor.health_check_seconds",
    "migration.command_timeout_seconds",
    "reporter.interval_seconds",
    "supervisor.window_seconds",
    "supervisor.shutdown_grace_seconds",
]


@pytest.mark.parametrize("field", _TIMERS_AND_DURATIONS)
@pytest.mark.parametrize("value", ["1e-300", "0.04", "inf", "nan", "86401"])
def test_a_timer_or_duration_outside_50_ms_to_a_day_is_refused_naming_it(
    tmp_path: Path, field: str, value: str
) -> None:
    section, name = field.split(".")
    message = config_error(write(tmp_path, f"[{section}]\n{name} = {value}\n"))
    assert f"'{field}'" in message


@pytest.mark.parametrize("field", _TIMERS_AND_DURATIONS)
def test_a_timer_or_duration_at_either_end_of_its_range_is_accepted(tmp_path: Path, field: str) -> None:
    section, name = field.split(".")
    for value in ("0.05", "86400"):
        # Cross-section rules (the frontends' scrape against the profiler's staleness) need no frontend.
        load_settings(write(tmp_path, f"[{section}]\n{name} = {value}\n"), env=NO_ENV)


def test_a_settings_file_that_is_not_utf8_is_one_line_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_bytes(b"[slo]\n# caf\xe9\n")
    message = config_error(path)
    assert "not UTF-8 text: invalid byte at offset 11" in message
