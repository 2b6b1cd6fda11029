"""The ServeGen trace loader: the real files, the data directory search, and one-line errors on bad files."""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.core.demand import Demand
from agent.sim.traces import (
    DATA_DIR_ENV,
    DEFAULT_START_EPOCH,
    DemandStep,
    DemandTrace,
    TraceError,
    find_data_dir,
    load_servegen,
    servegen_models,
)

RATE_HEADER = "window_start_s,total_rate_rps"
TOKENS_HEADER = (
    "window_start_s,requests_total,requests_covered_share,in_mean,in_p50,in_p90,in_p99,"
    "out_mean,out_p50,out_p90,out_p99"
)


def tokens_row(start: int, in_mean: str = "500.0", out_mean: str = "100.0") -> str:
    return f"{start},1000,0.5,{in_mean},1,2,3,{out_mean},1,2,3"


def write(directory: Path, model: str, rates: list[str], tokens: list[str] | None) -> None:
    (directory / f"{model}_rate_10min.csv").write_text("\n".join(rates) + "\n", encoding="utf-8")
    if tokens is not None:
        (directory / f"{model}_tokens_6h.csv").write_text("\n".join(tokens) + "\n", encoding="utf-8")


@pytest.fixture
def data_dir() -> Path:
    try:
        directory = find_data_dir()
    except TraceError as exc:
        pytest.skip(f"shared data directory not found: {exc}")
    if not (directory / "traces" / "servegen" / "m-large_rate_10min.csv").is_file():
        pytest.skip("ServeGen m-large trace not present")
    return directory


# -- the real traces ----------------------------------------------------------------------------------


def test_m_large_is_fourteen_days_of_ten_minute_steps(data_dir: Path) -> None:
    servegen = data_dir / "traces" / "servegen"
    with (servegen / "m-large_rate_10min.csv").open(newline="") as handle:
        rates = [(float(r["window_start_s"]), float(r["total_rate_rps"])) for r in csv.DictReader(handle)]
    with (servegen / "m-large_tokens_6h.csv").open(newline="") as handle:
        tokens = {float(r["window_start_s"]): r for r in csv.DictReader(handle)}

    trace = load_servegen("m-large")

    assert trace.name == "servegen/m-large"
    assert len(trace.steps) == len(rates) == 14 * 144
    assert trace.duration_s == 14 * 86400
    assert trace.peak_rps == max(rps for _, rps in rates)
    first = trace.steps[0]
    assert first.time_s == DEFAULT_START_EPOCH
    assert datetime.fromtimestamp(first.time_s, UTC).strftime("%A %H:%M") == "Monday 00:00"
    for step, (offset, rps) in zip(trace.steps, rates, strict=True):
        window = tokens[offset // 21600 * 21600]
        assert step.time_s == DEFAULT_START_EPOCH + offset
        assert step.duration_s == 600
        assert step.demand == Demand(rps, float(window["in_mean"]), float(window["out_mean"]))


def test_token_means_change_at_six_hour_boundaries(data_dir: Path) -> None:
    trace = load_servegen("m-large", data_dir)
    last_of_first, first_of_second = trace.steps[35], trace.steps[36]
    assert (last_of_first.demand.prompt_tokens, last_of_first.demand.output_tokens) == (359.8, 301.1)
    assert (first_of_second.demand.prompt_tokens, first_of_second.demand.output_tokens) == (442.5, 255.7)


def test_start_epoch_shifts_the_whole_trace(data_dir: Path) -> None:
    trace = load_servegen("m-large", data_dir, start_epoch=1000.0)
    assert (trace.steps[0].time_s, trace.steps[1].time_s) == (1000.0, 1600.0)


def test_outage_windows_are_kept_as_zero_demand(data_dir: Path) -> None:
    if "m-mid" not in servegen_models(data_dir):
        pytest.skip("ServeGen m-mid trace not present")
    trace = load_servegen("m-mid", data_dir)
    assert sum(step.demand.rps == 0 for step in trace.steps) == 84


def test_rate_only_trace_needs_explicit_token_lengths(data_dir: Path) -> None:
    if "deepseek-r1" not in servegen_models(data_dir):
        pytest.skip("ServeGen deepseek-r1 trace not present")
    with pytest.raises(TraceError, match="token file missing"):
        load_servegen("deepseek-r1", data_dir)

    trace = load_servegen("deepseek-r1", data_dir, prompt_tokens=1200.0, output_tokens=400.0)

    assert len(trace.steps) == 144
    assert {(s.demand.prompt_tokens, s.demand.output_tokens) for s in trace.steps} == {(1200.0, 400.0)}


def test_models_are_listed(data_dir: Path) -> None:
    assert {"m-large", "m-mid", "m-small"} <= set(servegen_models())


# -- the data directory -------------------------------------------------------------------------------


def test_data_dir_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    servegen = tmp_path / "traces" / "servegen"
    servegen.mkdir(parents=True)
    write(servegen, "tiny", [RATE_HEADER, "0,1.5", "600,2.5"], [TOKENS_HEADER, tokens_row(0)])
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))

    assert find_data_dir() == tmp_path
    assert servegen_models() == ("tiny",)
    trace = load_servegen("tiny")
    assert [s.demand for s in trace.steps] == [Demand(1.5, 500.0, 100.0), Demand(2.5, 500.0, 100.0)]


def test_data_dir_from_the_environment_must_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "missing"))
    with pytest.raises(TraceError, match=DATA_DIR_ENV):
        find_data_dir()


def test_unknown_model_lists_what_exists(tmp_path: Path) -> None:
    write(tmp_path, "tiny", [RATE_HEADER, "0,1"], [TOKENS_HEADER, tokens_row(0)])
    with pytest.raises(TraceError, match=r"no such trace file .*available: tiny"):
        load_servegen("huge", tmp_path)


@pytest.mark.parametrize("model", ["../etc/passwd", "", "a/b", ".hidden"])
def test_model_names_are_plain_names(tmp_path: Path, model: str) -> None:
    with pytest.raises(TraceError, match="model name"):
        load_servegen(model, tmp_path)


# -- bad files ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rates", "where"),
    [
        ([RATE_HEADER, "0,1.0", "600,fast"], r"m_rate_10min\.csv:3: column 'total_rate_rps': not a number"),
        ([RATE_HEADER, "0,1.0", "600,-2"], r"m_rate_10min\.csv:3: column 'total_rate_rps': must be .*≥ 0"),
        ([RATE_HEADER, "0,nan"], r"m_rate_10min\.csv:2: column 'total_rate_rps'"),
        (["window_start_s,rate", "0,1.0"], r"m_rate_10min\.csv:1: missing column 'total_rate_rps'"),
        (
            [RATE_HEADER, "0,1.0", "1200,1.0", "600,1.0"],
            r"m_rate_10min\.csv:4: column 'window_start_s'.*order",
        ),
        ([RATE_HEADER, "0,1.0", "300,1.0"], r"m_rate_10min\.csv:3: column 'window_start_s'.*overlaps"),
        ([RATE_HEADER, "0,1.0", "600"], r"m_rate_10min\.csv:3: expected 2 fields, got 1"),
        ([RATE_HEADER, "0,1.0", "", "x,1.0"], r"m_rate_10min\.csv:4: column 'window_start_s': not a number"),
        ([RATE_HEADER], r"m_rate_10min\.csv:2: no data rows"),
        ([""], r"m_rate_10min\.csv:1: empty file"),
    ],
)
def test_bad_rate_file_names_file_line_and_column(tmp_path: Path, rates: list[str], where: str) -> None:
    write(tmp_path, "m", rates, [TOKENS_HEADER, tokens_row(0)])
    with pytest.raises(TraceError, match=where) as caught:
        load_servegen("m", tmp_path)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("tokens", "where"),
    [
        (
            [TOKENS_HEADER, tokens_row(0, in_mean="lots")],
            r"m_tokens_6h\.csv:2: column 'in_mean': not a number",
        ),
        ([TOKENS_HEADER, tokens_row(0, out_mean="-1")], r"m_tokens_6h\.csv:2: column 'out_mean'"),
        (["window_start_s,in_mean", "0,1"], r"m_tokens_6h\.csv:1: missing column 'out_mean'"),
        (
            [TOKENS_HEADER, tokens_row(21600), tokens_row(0)],
            r"m_tokens_6h\.csv:3: column 'window_start_s'.*order",
        ),
        (
            [TOKENS_HEADER, tokens_row(21600)],
            r"m_rate_10min\.csv:2: column 'window_start_s': no 6-hour window",
        ),
    ],
)
def test_bad_token_file_names_file_line_and_column(tmp_path: Path, tokens: list[str], where: str) -> None:
    write(tmp_path, "m", [RATE_HEADER, "0,1.0", "600,2.0"], tokens)
    with pytest.raises(TraceError, match=where) as caught:
        load_servegen("m", tmp_path)
    assert "\n" not in str(caught.value)


def test_missing_token_file_is_explained(tmp_path: Path) -> None:
    write(tmp_path, "m", [RATE_HEADER, "0,1.0"], None)
    with pytest.raises(TraceError, match=r"m_tokens_6h\.csv: token file missing; pass prompt_tokens="):
        load_servegen("m", tmp_path)


def test_default_token_lengths_fill_windows_the_token_file_lacks(tmp_path: Path) -> None:
    write(tmp_path, "m", [RATE_HEADER, "0,1.0", "21600,2.0"], [TOKENS_HEADER, tokens_row(0)])
    trace = load_servegen("m", tmp_path, prompt_tokens=7.0, output_tokens=3.0)
    assert [s.demand for s in trace.steps] == [Demand(1.0, 500.0, 100.0), Demand(2.0, 7.0, 3.0)]


@pytest.mark.parametrize(
    "kwargs",
    [{"prompt_tokens": 1.0}, {"output_tokens": 1.0}, {"prompt_tokens": -1.0, "output_tokens": 1.0}],
)
def test_default_token_lengths_come_in_valid_pairs(tmp_path: Path, kwargs: dict[str, float]) -> None:
    write(tmp_path, "m", [RATE_HEADER, "0,1.0"], None)
    with pytest.raises(ValueError, match="tokens"):
        load_servegen("m", tmp_path, **kwargs)


def test_gaps_between_windows_are_allowed(tmp_path: Path) -> None:
    write(tmp_path, "m", [RATE_HEADER, "0,1.0", "1800,2.0"], [TOKENS_HEADER, tokens_row(0)])
    trace = load_servegen("m", tmp_path)
    assert [s.time_s - DEFAULT_START_EPOCH for s in trace.steps] == [0.0, 1800.0]
    assert trace.duration_s == 2400.0


# -- the trace types ----------------------------------------------------------------------------------


def test_trace_rejects_overlapping_steps() -> None:
    demand = Demand(1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="before the previous one ends"):
        DemandTrace("t", (DemandStep(0.0, 600.0, demand), DemandStep(300.0, 600.0, demand)))


def test_empty_trace_has_no_peak_and_no_duration() -> None:
    trace = DemandTrace("empty", ())
    assert (trace.peak_rps, trace.duration_s) == (0.0, 0.0)


def test_step_duration_must_be_positive() -> None:
    with pytest.raises(ValueError, match="duration_s"):
        DemandStep(0.0, 0.0, Demand(1.0, 1.0, 1.0))
