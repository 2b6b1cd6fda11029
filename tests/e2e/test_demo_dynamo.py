"""``cost-agent demo --engine dynamo`` as a user runs it: an hour and a half of a real trace through NVIDIA
Dynamo's own frontend, the mocker workers started and stopped by the agent's local actuator, a reclaim
storm of 30 s notices on the spot workers that have been serving for ten minutes, and the agent process
killed mid-load and started again; judged from its JSON summary: every request the client sent succeeded,
the frontend migrated streams that could not finish before their node died, and planning resumed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli import run_cost_agent

# The demos run at many times real speed, so a starved CPU stretches their simulated minutes (a request
# was lost once beside another test process): `make unit` runs them on their own, after the rest.
pytestmark = [pytest.mark.usefixtures("demo_traces"), pytest.mark.accelerated_demo]


def test_a_short_dynamo_demo_migrates_streams_off_reclaimed_nodes_and_no_request_fails(
    tmp_path: Path,
) -> None:
    summary_path, plot_path = tmp_path / "summary.json", tmp_path / "demo.png"
    result = run_cost_agent(
        "demo",
        "--engine",
        "dynamo",
        "--duration",
        "1.5",
        "--speed",
        "90",
        "--storm-at",
        "0",
        "--storm-hours",
        "1.5",
        "--storm-rate",
        "1",
        "--short-notice-share",
        "1",
        "--long-share",
        "0.1",
        "--kill-agent-at",
        "0.75",
        "--no-live",
        "--json",
        str(summary_path),
        "--plot",
        str(plot_path),
        timeout_s=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    s = json.loads(summary_path.read_text())
    print(json.dumps({k: v for k, v in s.items() if k != "cost_table"}, indent=1))

    assert s["engine"] == "dynamo"
    assert s["requests_sent"] > 500
    assert s["requests_failed"] == 0, s["client_errors"]
    assert s["requests_ok"] + s["requests_unfinished"] == s["requests_sent"]
    assert s["preemptions"] >= 1
    assert s["short_notices"] == s["preemptions"]  # every notice 30 s, as asked
    assert s["migrations"] >= 1  # the frontend re-sent streams whose node died under them
    assert s["migrations_reported"] <= s["migrations"]  # the reports count the frontend's, never more
    assert s["migration_reports"] >= 1  # one per reclaimed node the actuator drained, once it was gone
    assert s["plans"] >= 1
    assert s["plans_applied"] >= 1
    assert s["workers_max"] >= 2  # the agent started workers beside the reserved one
    # The agent was killed (SIGKILL) 45 minutes in and started again: its workers served on, it adopted them
    # (none launched twice: at most the nodes its plans asked for, and the reserved one) and planned again.
    assert s["agent_restarted"] is True
    assert s["plans_after_restart"] >= 1
    assert s["agent_cost"] is not None
    assert 0 < s["agent_cost"] <= s["cloud_bill"]
    assert plot_path.exists()
    for line in ("cost-agent demo on NVIDIA Dynamo", "| Strategy | Cost for the period |", "failed"):
        assert line in result.stdout
