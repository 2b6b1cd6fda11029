"""Settings that would hang the agent stop `cost-agent run` at start-up: exit 2, one line naming it."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli import run_cost_agent


@pytest.mark.parametrize(
    ("text", "field"),
    [
        # A timer this short never yields (the agent hung, SIGTERM ignored); one this long never ticks.
        ("[spot_monitor]\nhealth_check_seconds = 1e-300\n", "spot_monitor.health_check_seconds"),
        ("[optimizer]\ninterval_seconds = inf\n", "optimizer.interval_seconds"),
        ("[reporter]\ninterval_seconds = nan\n", "reporter.interval_seconds"),
    ],
)
def test_a_timer_setting_that_would_hang_the_agent_stops_start_up(
    tmp_path: Path, text: str, field: str
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(text)
    result = run_cost_agent("run", "--config", str(config), timeout_s=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert field in lines[0]


def test_a_settings_file_that_is_not_utf8_stops_start_up_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_bytes(b"[optimizer]\n# caf\xe9 in Latin-1\ninterval_seconds = 60\n")
    result = run_cost_agent("run", "--config", str(config), timeout_s=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "not UTF-8" in lines[0]
    assert "Traceback" not in result.stderr
