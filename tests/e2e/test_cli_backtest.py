"""``cost-agent backtest`` run as a real process on a short real slice: the table, the JSON, the plot, and
a clean error for an unknown strategy.

The slice: ServeGen's ``m-small`` (14 days, the first one warming up) against the default AWS 16-node
spot traces, at 5-minute steps, with four strategies. One run takes about 27 s here (the per-test timeout
bounds it; no test asserts on wall time), so it is shared by every test that reads its output. Skipped
when the shared data directory is absent.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cli import run_cost_agent

from agent.sim.traces import TraceError, find_data_dir

RUN_TIMEOUT_S = 110
STRATEGIES = ["all-ondemand", "skyserve", "rolling", "hindsight"]
REPORT_KEYS = {
    "name",
    "cost",
    "monthly_cost",
    "cost_per_mtok",
    "slo_attainment",
    "slo_queue",
    "queue_delay_s",
    "queue_p99_delay_s",
    "shortfall_minutes",
    "preemptions",
    "ratio_to_hindsight",
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# hindsight_plan stops its MILP within a relative gap of 1e-3: "never below" holds up to that.
SOLVER_GAP = 1e-3


def cost_agent(*args: str) -> subprocess.CompletedProcess[str]:
    """``cost-agent backtest ARGS`` from the project root."""
    return run_cost_agent("backtest", *args, timeout_s=RUN_TIMEOUT_S)


@dataclass(frozen=True)
class Run:
    result: subprocess.CompletedProcess[str]
    json_path: Path
    png_path: Path

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.json_path.read_text(encoding="utf-8"))
        return doc

    def reports(self) -> dict[str, dict[str, Any]]:
        return {r["name"]: r for r in self.document()["strategies"]}


@pytest.fixture(scope="module")
def data_dir() -> Path:
    try:
        directory = find_data_dir()
    except TraceError as exc:
        pytest.skip(f"shared data directory not found: {exc}")
    needed = (
        directory / "traces" / "servegen" / "m-small_rate_10min.csv",
        directory / "spot" / "skypilot" / "availability" / "16-node" / "aws-08-27-2023",
    )
    for path in needed:
        if not path.exists():
            pytest.skip(f"{path} not present")
    return directory


@pytest.fixture(scope="module")
def run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    out = tmp_path_factory.mktemp("backtest")
    json_path, png_path = out / "out.json", out / "out.png"
    result = cost_agent(
        "--trace",
        "servegen:m-small",
        "--warmup-days",
        "1",
        "--strategies",
        ",".join(STRATEGIES),
        "--step",
        "300",
        "--no-progress",
        "--json",
        str(json_path),
        "--plot",
        str(png_path),
    )
    return Run(result, json_path, png_path)


def test_the_backtest_exits_0_and_prints_a_row_per_strategy(run: Run) -> None:
    assert run.result.returncode == 0, run.result.stderr
    lines = run.result.stdout.splitlines()
    assert lines[0].startswith("Backtest: servegen:m-small × skypilot:availability/16-node/aws-08-27-2023")
    for name in STRATEGIES:
        assert any(line.startswith(f"{name} ") for line in lines), name
    header = next(line for line in lines if line.startswith("Strategy "))
    assert "| ≤60 s " in header
    assert "| p99 wait " in header
    assert f"wrote {run.json_path}" in lines
    assert f"wrote {run.png_path}" in lines


def test_the_json_has_every_strategy_with_its_figures_and_the_inputs(run: Run) -> None:
    assert run.result.returncode == 0, run.result.stderr
    doc = run.document()
    assert [r["name"] for r in doc["strategies"]] == STRATEGIES
    for r in doc["strategies"]:
        assert set(r) >= REPORT_KEYS, r["name"]
        assert r["cost"] > 0
        assert 0 <= r["slo_attainment"] <= 1
        assert 0 <= r["slo_queue"] <= 1
        assert r["queue_delay_s"] == 60
        assert r["queue_p99_delay_s"] is None or r["queue_p99_delay_s"] >= 0
        assert r["shortfall_minutes"] >= 0
        assert r["preemptions"] >= 0
    inputs = doc["inputs"]
    assert inputs["trace"] == "servegen:m-small"
    assert inputs["spot"] == "skypilot:availability/16-node/aws-08-27-2023"
    assert inputs["catalog"] == "seed"
    assert inputs["step_s"] == 300
    assert inputs["warmup_days"] == 1
    assert inputs["days"] == pytest.approx(14)


def test_hindsight_is_the_unit_and_no_strategy_that_served_all_demand_beats_it(run: Run) -> None:
    assert run.result.returncode == 0, run.result.stderr
    reports = run.reports()
    assert reports["hindsight"]["ratio_to_hindsight"] == 1.0
    assert reports["hindsight"]["slo_attainment"] == 1.0
    assert reports["hindsight"]["slo_queue"] >= 0.999
    full = [r for r in reports.values() if r["shortfall_minutes"] == 0 and r["name"] != "hindsight"]
    assert "all-ondemand" in {r["name"] for r in full}  # sized for the peak: the check is not empty
    for r in full:
        assert r["ratio_to_hindsight"] >= 1 - SOLVER_GAP, r["name"]


def test_the_plot_is_a_png(run: Run) -> None:
    assert run.result.returncode == 0, run.result.stderr
    assert run.png_path.read_bytes().startswith(PNG_SIGNATURE)


def test_an_unknown_strategy_exits_2_with_one_line_on_stderr(data_dir: Path) -> None:
    result = cost_agent("--strategies", "all-ondemand,spot-only", "--no-progress")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cost-agent: ")
    assert "spot-only" in lines[0]


# --- a CSV of time_s,rps only, with the token lengths on the command line ---------------------------------
# Self-contained (its own demand and spot files), so it runs with or without the shared data directory.


def two_column_inputs(directory: Path) -> tuple[Path, Path]:
    """Two days of hourly demand (``time_s,rps``, a day/night cycle) and one spot pool of 4 nodes."""
    demand = directory / "demand.csv"
    rates = [2.0 + (1.5 if 8 <= hour % 24 < 20 else 0.0) for hour in range(48)]
    demand.write_text(
        "time_s,rps\n" + "".join(f"{hour * 3600},{rps}\n" for hour, rps in enumerate(rates)),
        encoding="utf-8",
    )
    spot = directory / "zone-a.json"
    spot.write_text(json.dumps({"metadata": {"gap_seconds": 3600}, "data": [4] * 48}), encoding="utf-8")
    return demand, spot


def csv_backtest(directory: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    demand, spot = two_column_inputs(directory)
    return cost_agent(
        "--trace",
        f"csv:{demand}",
        "--spot",
        f"file:{spot}",
        "--warmup-days",
        "1",
        "--step",
        "300",
        "--strategies",
        "all-ondemand,hindsight",
        "--no-progress",
        *extra,
    )


def test_a_two_column_csv_replays_with_token_lengths_from_the_command_line(tmp_path: Path) -> None:
    json_path = tmp_path / "out.json"
    result = csv_backtest(
        tmp_path, "--prompt-tokens", "1500", "--output-tokens", "300", "--json", str(json_path)
    )

    assert result.returncode == 0, result.stderr
    doc = json.loads(json_path.read_text(encoding="utf-8"))
    assert doc["inputs"]["tokens"] == [1500, 300]
    assert doc["inputs"]["days"] == pytest.approx(2)
    reports = {r["name"]: r for r in doc["strategies"]}
    assert reports["all-ondemand"]["cost"] > 0
    assert reports["hindsight"]["slo_attainment"] == 1.0


def test_longer_requests_from_the_command_line_cost_more_per_request(tmp_path: Path) -> None:
    def hindsight_cost(prompt: str, output: str) -> float:
        json_path = tmp_path / f"{prompt}-{output}.json"
        result = csv_backtest(
            tmp_path,
            "--prompt-tokens",
            prompt,
            "--output-tokens",
            output,
            "--peak-nodes",
            "0",
            "--json",
            str(json_path),
        )
        assert result.returncode == 0, result.stderr
        doc = json.loads(json_path.read_text(encoding="utf-8"))
        return float(next(r for r in doc["strategies"] if r["name"] == "hindsight")["cost"])

    # Same request rate (--peak-nodes 0 keeps it), ten times the tokens: the fleet must be bigger.
    assert hindsight_cost("15000", "3000") > hindsight_cost("1500", "300")


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--prompt-tokens", "1500"], "--output-tokens"),
        (["--output-tokens", "300"], "--prompt-tokens"),
        (["--prompt-tokens", "0", "--output-tokens", "300"], "--prompt-tokens"),
        (["--prompt-tokens", "1500", "--output-tokens", "nan"], "--output-tokens"),
        (["--prompt-tokens", "1e12", "--output-tokens", "300"], "--prompt-tokens"),
        ([], "prompt_tokens"),  # neither: the CSV's missing columns are named, with the flags to pass
    ],
)
def test_token_lengths_are_both_or_neither_and_physical(tmp_path: Path, flags: list[str], named: str) -> None:
    result = csv_backtest(tmp_path, *flags)

    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cost-agent: ")
    assert named in lines[0]
