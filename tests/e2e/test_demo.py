"""``cost-agent demo`` as CI runs it: two simulated hours of the whole system, with a reclaim storm, judged
from its JSON summary; and the same with the agent process killed mid-run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli import run_cost_agent

from agent.sim.traces import TraceError, find_data_dir


@pytest.fixture(scope="module", autouse=True)
def shared_data() -> None:
    """The demo replays the shared traces; without them (a clone outside the workspace) it cannot run."""
    try:
        directory = find_data_dir()
    except TraceError as exc:
        pytest.skip(f"shared data directory not found: {exc}")
    for path in (
        directory / "traces" / "servegen",
        directory / "spot" / "skypilot" / "availability" / "16-node" / "aws-08-27-2023",
    ):
        if not path.exists():
            pytest.skip(f"{path} not present")


def demo(tmp_path: Path, *extra: str) -> dict[str, object]:
    summary_path = tmp_path / "summary.json"
    plot_path = tmp_path / "demo.png"
    result = run_cost_agent(
        "demo",
        "--duration",
        "2",
        "--speed",
        "240",
        "--storm-at",
        "0.25",
        "--no-live",
        "--json",
        str(summary_path),
        "--plot",
        str(plot_path),
        *extra,
        timeout_s=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    summary: dict[str, object] = json.loads(summary_path.read_text())
    assert summary["plot"] == str(plot_path)
    assert plot_path.stat().st_size > 10_000
    return summary


def test_two_hours_with_a_reclaim_storm_lose_nothing_and_the_costs_agree(tmp_path: Path) -> None:
    summary = demo(tmp_path)
    assert summary["requests_served"] > 100
    assert summary["requests_lost"] == 0
    assert summary["preemptions"] >= 1
    assert summary["migration_reports"] >= 1
    assert summary["migration_lost"] == 0
    assert summary["plans"] >= 10
    assert summary["plans_applied"] == summary["plans"]
    assert summary["plan_violations"] == 0
    assert summary["cost_agreement"] is not None
    assert summary["cost_agreement"] <= 0.01


def test_the_system_keeps_serving_while_the_agent_is_down_and_the_restarted_agent_plans_again(
    tmp_path: Path,
) -> None:
    summary = demo(tmp_path, "--kill-agent-at", "1.0")
    assert summary["agent_restarts"] == 1
    assert summary["requests_lost"] == 0
    assert summary["plans_after_agent_restart"] >= 1
    assert summary["requests_served"] > 100


@pytest.mark.usefixtures("shared_data")
@pytest.mark.parametrize("flag", ["--speed=0", "--duration=-1"])
def test_bad_options_stop_the_demo_with_one_line(flag: str) -> None:
    result = run_cost_agent("demo", flag, "--no-live", timeout_s=60)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
