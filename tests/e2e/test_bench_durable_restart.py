"""``bench/durable_restart.py`` runs end to end on a tiny fleet: its own nats-server, a ``cost-agent run``
killed with SIGKILL and started again, one JSON report.

Only that it runs, resumes and reports is checked here, never its times: a benchmark's figures are not a test.
"""

from __future__ import annotations

import json
import subprocess
import sys

from cli import ROOT

BENCH = ROOT / "bench" / "durable_restart.py"


def test_the_bench_kills_an_agent_restarts_it_and_reports_what_it_resumed() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--runs", "1", "--nodes", "2", "--no-leader"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["nodes"], report["leader"]) == (2, False)
    (run,) = report["runs"]
    assert {"cost_reporter", "spot_monitor", "optimizer"} <= set(run["load_ms"]) <= set(run["snapshot_bytes"])
    assert run["gap_billed"] > 0.9  # the reserved node was billed across the kill
    assert run["first_plan_s"] >= run["ready_s"] > 0
