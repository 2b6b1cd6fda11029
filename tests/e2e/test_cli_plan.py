"""``cost-agent plan`` run as a real process: the table, the JSON rows, the seed's figures, and clean errors.

Each plan run takes several seconds, so the default ``--json`` run is shared by every test that reads it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cli import run_cost_agent

from agent.sim.traces import TraceError, find_data_dir

RUN_TIMEOUT_S = 90

STRATEGIES = [
    "all on-demand",
    "all reserved (1yr)",
    "reserved + spot burst",
    "hybrid optimized",
    "seed rule (P25/P75/P99)",
]
ROW_KEYS = {"strategy", "reserved", "spot", "ondemand", "monthly_cost", "savings"}

# The seed sketch's monthly table for 4 × h100_8x, 24/7.
SEED_ALL_ONDEMAND = 94_700.0
SEED_ALL_RESERVED = 55_000.0

# plan_commitment stops the MILP within a relative gap of 1e-4: "no more than" holds up to that.
SOLVER_GAP = 1e-4

Row = dict[str, Any]


def cost_agent(*args: str) -> subprocess.CompletedProcess[str]:
    """``cost-agent plan ARGS`` from the project root."""
    return run_cost_agent("plan", *args, timeout_s=RUN_TIMEOUT_S)


def json_rows(*args: str) -> list[Row]:
    result = cost_agent(*args, "--json")
    assert result.returncode == 0, result.stderr
    rows: list[Row] = json.loads(result.stdout)
    return rows


def by_strategy(rows: list[Row]) -> dict[str, Row]:
    return {row["strategy"]: row for row in rows}


@pytest.fixture(scope="module")
def default_rows() -> list[Row]:
    return json_rows()


# -- the default run ----------------------------------------------------------------------------------


def test_plan_prints_a_table_with_the_five_strategies() -> None:
    result = cost_agent()
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Monthly cost comparison: catalog seed; demand seed-example")
    table = [line for line in lines if line.startswith("| ")]
    header, *body = [[cell.strip() for cell in line.strip("|").split("|")] for line in table]
    assert header == ["Strategy", "Reserved", "Spot (avg)", "On-demand (avg)", "Monthly cost", "Savings"]
    assert [cells[0] for cells in body] == STRATEGIES
    assert body[0][-1] == "baseline"
    assert all(cells[4].startswith("$") for cells in body)


def test_json_rows_have_exactly_the_documented_keys_in_strategy_order(default_rows: list[Row]) -> None:
    assert [row["strategy"] for row in default_rows] == STRATEGIES
    for row in default_rows:
        assert set(row) == ROW_KEYS
        assert isinstance(row["reserved"], int)
        assert all(isinstance(row[k], int | float) for k in ("spot", "ondemand", "monthly_cost", "savings"))


def test_the_static_fleets_match_the_seeds_table_within_2_percent(default_rows: list[Row]) -> None:
    rows = by_strategy(default_rows)
    all_ondemand, all_reserved = rows["all on-demand"], rows["all reserved (1yr)"]
    assert (all_ondemand["ondemand"], all_ondemand["reserved"]) == (4, 0)
    assert (all_reserved["reserved"], all_reserved["ondemand"]) == (4, 0)
    assert all_ondemand["monthly_cost"] == pytest.approx(SEED_ALL_ONDEMAND, rel=0.02)
    assert all_reserved["monthly_cost"] == pytest.approx(SEED_ALL_RESERVED, rel=0.02)


def test_hybrid_costs_no_more_than_spot_burst_and_less_than_all_reserved(default_rows: list[Row]) -> None:
    rows = by_strategy(default_rows)
    hybrid = rows["hybrid optimized"]["monthly_cost"]
    assert hybrid <= rows["reserved + spot burst"]["monthly_cost"] * (1 + SOLVER_GAP)
    assert hybrid < rows["all reserved (1yr)"]["monthly_cost"]


def test_savings_are_measured_against_all_on_demand(default_rows: list[Row]) -> None:
    baseline = by_strategy(default_rows)["all on-demand"]["monthly_cost"]
    for row in default_rows:
        assert row["savings"] == pytest.approx(1 - row["monthly_cost"] / baseline), row["strategy"]


# -- a real catalog and a real trace ------------------------------------------------------------------


def test_plan_runs_on_the_gcp_catalog_and_a_servegen_trace() -> None:
    try:
        find_data_dir()
    except TraceError as exc:
        pytest.skip(f"no shared data directory: {exc}")
    rows = json_rows("--catalog", "gcp-2026-07", "--demand", "servegen:m-large")
    assert [row["strategy"] for row in rows] == STRATEGIES
    assert all(set(row) == ROW_KEYS for row in rows)
    named = by_strategy(rows)
    # Four a3-highgpu-8g nodes at $88.49 an hour, 730 hours a month.
    assert named["all on-demand"]["monthly_cost"] == pytest.approx(4 * 88.49 * 730)
    hybrid = named["hybrid optimized"]["monthly_cost"]
    assert hybrid <= named["reserved + spot burst"]["monthly_cost"] * (1 + SOLVER_GAP)
    assert hybrid < named["all reserved (1yr)"]["monthly_cost"]


# -- errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        pytest.param(["--config", "{bad_config}"], "{bad_config}", id="bad-config-file"),
        pytest.param(["--catalog", "nosuch"], "'nosuch'", id="unknown-catalog"),
        pytest.param(["--demand", "nosuch"], "'nosuch'", id="unknown-demand"),
    ],
)
def test_a_usage_error_exits_2_with_one_line_on_stderr_and_no_traceback(
    tmp_path: Path, args: list[str], mentions: str
) -> None:
    bad_config = tmp_path / "agent.toml"
    bad_config.write_text("[slo]\nutilization_target = 1.5\n", encoding="utf-8")
    args = [arg.format(bad_config=bad_config) for arg in args]

    result = cost_agent(*args)

    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cost-agent: ")
    assert mentions.format(bad_config=bad_config) in lines[0]
