"""``bench/policy_variants.py`` runs ``rolling`` with one part changed, on a README input, and prints one JSON
report. Its figures are the bench's business; here only what must hold whatever the figures: a variant
that overrules the commitment with the planner's own count changes nothing, and a fixed count is held.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from cli import run_bench

pytestmark = pytest.mark.usefixtures("demo_traces")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return run_bench("policy_variants.py", *args, timeout_s=300)


def test_a_fixed_commitment_equal_to_the_planners_replays_the_same_and_another_count_is_held() -> None:
    done = run("--inputs", "m-mid", "--variants", "shipped,reserved_3,reserved_1", "--jobs", "1")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    rows = report["results"]["m-mid"]
    assert set(rows) == {"shipped", "reserved_3", "reserved_1"}
    assert rows["reserved_1"]["reserved"] == {"h100_8x": 1}
    assert rows["reserved_3"]["reserved"] == {"h100_8x": 3}
    if rows["shipped"]["reserved"] == {"h100_8x": 3}:
        for key in ("cost", "slo_attainment", "slo_queue", "shortfall_minutes"):
            assert rows["reserved_3"][key] == rows["shipped"][key], key
    for row in rows.values():
        assert 0 <= row["slo_queue"] <= 1
        assert 0 <= row["slo_attainment"] <= 1
        assert row["cost"] > 0


def test_an_unknown_variant_is_refused_naming_it() -> None:
    done = run("--variants", "reserved_99")
    assert done.returncode == 2
    assert "unknown variant 'reserved_99'" in done.stderr
    assert done.stdout == ""
