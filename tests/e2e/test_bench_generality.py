"""``bench/generality.py`` replays the policy on inputs it was not developed on and prints one JSON report.
Its figures are the bench's business; here: the made-up trace has the shape its docstring promises, a run
reports every strategy with both scores and ratios, and an unknown input is refused naming it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from cli import load_bench, run_bench


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench("generality.py")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return run_bench("generality.py", *args, timeout_s=300)


def test_the_synthetic_trace_has_a_daily_wave_quieter_weekends_growth_and_bursts(
    bench: ModuleType, tmp_path: Path
) -> None:
    path = tmp_path / "t.csv"
    bench.synthetic_trace(path, seed=3)
    lines = path.read_text().splitlines()
    assert lines[0] == "time_s,rps"
    rows = np.array([[float(v) for v in line.split(",")] for line in lines[1:]])
    assert rows.shape == (14 * 1440, 2)
    assert np.all(np.diff(rows[:, 0]) == 60)
    rps = rows[:, 1]
    assert rps.min() > 0
    days = rps.reshape(14, 1440)
    by_hour = np.median(days.reshape(14, 24, 60), axis=(0, 2))
    assert 13 <= int(np.argmax(by_hour)) <= 17  # peaks mid-afternoon
    weekday, weekend = np.median(days[[0, 1, 2, 3, 4]]), np.median(days[[5, 6]])
    assert 0.6 < weekend / weekday < 0.8
    assert np.median(days[7:12]) > np.median(days[0:5])  # it grows
    # Bursts: minutes at least 1.5x the same minute's median over the two weeks.
    assert (days > 1.5 * np.median(days, axis=0)).sum() > 100
    # Seeded: the same seed, the same trace.
    again = tmp_path / "again.csv"
    bench.synthetic_trace(again, seed=3)
    assert again.read_text() == path.read_text()


@pytest.mark.usefixtures("demo_traces")
def test_a_run_reports_every_strategy_with_both_scores_and_both_ratios() -> None:
    done = run("--inputs", "synthetic", "--jobs", "1")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    row = report["results"]["synthetic"]
    assert set(row["strategies"]) == {"rolling", "foresight-demand", "skyserve-slo", "hindsight"}
    for figures in row["strategies"].values():
        assert figures["cost"] > 0
        assert 0 <= figures["slo_attainment"] <= 1
        assert 0 <= figures["slo_queue"] <= 1
        assert figures["ratio_to_hindsight"] >= 1 - 1e-9
    assert row["strategies"]["foresight-demand"]["ratio_to_foresight_demand"] == pytest.approx(1.0)
    assert "hedge on both scores" in row["strategies"]["foresight-demand"]["detail"]
    rolling = row["strategies"]["rolling"]
    assert row["holds_both"] == (rolling["slo_attainment"] >= 0.999 and rolling["slo_queue"] >= 0.999)


def test_an_unknown_input_is_refused_naming_it() -> None:
    done = run("--inputs", "mars")
    assert done.returncode == 2
    assert "unknown input 'mars'" in done.stderr
    assert done.stdout == ""
