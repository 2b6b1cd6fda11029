"""``bench/fuzz_wire.py`` runs end to end with a tiny count: its own ``cost-agent run``, the fuzz, one JSON
report. Only that it runs and reports is checked here, never its rates: a benchmark's figures are not a
test (the fuzz's own checks run inside it, and ``tests/e2e/test_wire_fuzz.py`` is the fuzz test)."""

from __future__ import annotations

import json
import subprocess
import sys

from cli import ROOT

BENCH = ROOT / "bench" / "fuzz_wire.py"


def test_the_bench_fuzzes_a_real_agent_and_prints_one_json_report() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--messages", "400", "--examples", "4", "--batch", "200"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)

    assert report["messages"] == 400
    assert report["crashes"] == 0
    assert report["healthy_after"] is True
    assert 0 < report["malformed_sent"] <= report["rejections_counted"]["malformed"]
    assert report["error_replies"] <= report["requests"]
    assert report["plan_after"]["largest_target"] <= report["plan_after"]["target_limit"]
    memory = report["agent_memory_mib"]
    assert memory["after"]["peak"] >= memory["before"]["rss"] > 0
    assert report["messages_per_second"] > 0
