"""Demand sources behind ``load_demand``: the real traces, one-line errors on bad files, and the
transformations a backtest applies (resample, scale, scale to a peak node count)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from agent.core.capacity import SloConfig, estimate, instances_needed
from agent.core.catalog import InstanceType
from agent.core.demand import Demand
from agent.sim.traces import (
    BURSTGPT_PROMPT_SHARE,
    BURSTGPT_WEEK_MINUTES,
    DEFAULT_START_EPOCH,
    DEMAND_SPECS,
    DemandStep,
    DemandTrace,
    TraceError,
    burstgpt_tokens_per_request,
    find_data_dir,
    load_demand,
    load_servegen,
    peak_nodes_factor,
    resample,
    scale_trace,
)

TRACES = Path("traces")


def total_requests(trace: DemandTrace) -> float:
    return math.fsum(step.demand.rps * step.duration_s for step in trace.steps)


def request_weighted(trace: DemandTrace) -> tuple[float, float]:
    requests = total_requests(trace)
    prompt = math.fsum(s.demand.rps * s.duration_s * s.demand.prompt_tokens for s in trace.steps)
    output = math.fsum(s.demand.rps * s.duration_s * s.demand.output_tokens for s in trace.steps)
    return prompt / requests, output / requests


def trace_of(*demands: tuple[float, float, float], step_s: float = 60.0, start: float = 0.0) -> DemandTrace:
    steps = tuple(DemandStep(start + i * step_s, step_s, Demand(*d)) for i, d in enumerate(demands))
    return DemandTrace(name="synthetic", steps=steps)


@pytest.fixture
def data_dir() -> Path:
    try:
        return find_data_dir()
    except TraceError as exc:
        pytest.skip(f"shared data directory not found: {exc}")


def need(data_dir: Path, relative: str) -> Path:
    path = data_dir / relative
    if not path.is_file():
        pytest.skip(f"{relative} not present")
    return path


# -- the real traces ----------------------------------------------------------------------------------


def test_mooncake_aggregates_every_request_into_minute_steps(data_dir: Path) -> None:
    path = need(data_dir, "traces/mooncake/conversation_trace.jsonl")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    trace = load_demand("mooncake")

    assert trace.name == "mooncake"
    assert len(records) == 12_031
    assert total_requests(trace) == pytest.approx(12_031)
    assert len(trace.steps) == 59  # 3,537 s of requests
    assert all(s.duration_s == 60 for s in trace.steps)
    assert trace.start_s == DEFAULT_START_EPOCH
    first_minute = [r for r in records if r["timestamp"] < 60_000]
    assert trace.steps[0].demand.rps == pytest.approx(len(first_minute) / 60)
    assert trace.steps[0].demand.prompt_tokens == pytest.approx(
        sum(r["input_length"] for r in first_minute) / len(first_minute)
    )
    assert request_weighted(trace) == pytest.approx(
        (
            sum(r["input_length"] for r in records) / len(records),
            sum(r["output_length"] for r in records) / len(records),
        )
    )


@pytest.mark.parametrize(("kind", "rows"), [("conv", 19_366), ("code", 8_819)])
def test_azure_2023_traces_span_about_an_hour(data_dir: Path, kind: str, rows: int) -> None:
    path = need(data_dir, f"traces/azure-llm-2023/{kind}.csv")
    with path.open(newline="") as handle:
        records = list(csv.DictReader(handle))

    trace = load_demand(f"azure2023:{kind}")

    assert trace.name == f"azure2023/{kind}"
    assert len(records) == rows
    assert total_requests(trace) == pytest.approx(rows)
    assert 55 * 60 <= trace.duration_s <= 61 * 60
    assert trace.start_s == DEFAULT_START_EPOCH
    assert request_weighted(trace) == pytest.approx(
        (
            sum(int(r["ContextTokens"]) for r in records) / rows,
            sum(int(r["GeneratedTokens"]) for r in records) / rows,
        )
    )


def test_azure_conv_in_five_minute_steps(data_dir: Path) -> None:
    need(data_dir, "traces/azure-llm-2023/conv.csv")
    trace = load_demand("azure2023:conv", step_s=300)
    assert len(trace.steps) == 12
    assert total_requests(trace) == pytest.approx(19_366)


def test_burstgpt_week_has_a_step_per_minute_and_zeros_where_the_file_has_none(data_dir: Path) -> None:
    path = need(data_dir, "traces/burstgpt/burstgpt1_week1_tokens_per_second_by_minute.csv")
    with path.open(newline="") as handle:
        listed = {int(r["minute"]): float(r["tokens_per_second"]) for r in csv.DictReader(handle)}

    trace = load_demand("burstgpt")

    assert trace.name == "burstgpt/week1"
    assert len(trace.steps) == BURSTGPT_WEEK_MINUTES == 7 * 1440
    assert trace.duration_s == 7 * 86400
    assert all(s.duration_s == 60 for s in trace.steps)
    zero = [i for i, s in enumerate(trace.steps) if s.demand.rps == 0]
    assert set(zero) == set(range(7 * 1440)) - {m for m, tps in listed.items() if tps > 0}
    assert len(zero) > 3000  # a sparse week: over a third of the minutes carry no traffic
    for minute, tps in listed.items():
        assert trace.steps[minute].demand.tokens_per_s == pytest.approx(tps)


def test_burstgpt_rate_comes_from_the_first_weeks_tokens_per_request(data_dir: Path) -> None:
    path = need(data_dir, "traces/burstgpt/burstgpt1_daily_requests_tokens_61d.csv")
    with path.open(newline="") as handle:
        days = list(csv.DictReader(handle))[:7]
    per_request = sum(int(d["total_tokens"]) for d in days) / sum(int(d["requests"]) for d in days)

    assert burstgpt_tokens_per_request() == pytest.approx(per_request)
    assert per_request == pytest.approx(872.47, abs=0.01)
    trace = load_demand("burstgpt")
    # The minute file and the daily file agree: the week's requests come out as the daily totals.
    assert total_requests(trace) == pytest.approx(sum(int(d["requests"]) for d in days), rel=1e-5)
    demand = trace.steps[0].demand
    assert demand.prompt_tokens + demand.output_tokens == pytest.approx(per_request)
    assert demand.prompt_tokens / per_request == pytest.approx(BURSTGPT_PROMPT_SHARE)

    split = load_demand("burstgpt", prompt_tokens=300, output_tokens=100).steps[0].demand
    assert split.prompt_tokens == pytest.approx(0.75 * per_request)
    assert split.output_tokens == pytest.approx(0.25 * per_request)
    assert split.rps == demand.rps


def test_burstgpt_prompt_share_is_the_azure_conversation_mix(data_dir: Path) -> None:
    path = need(data_dir, "traces/azure-llm-2023/conv.csv")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    prompt = sum(int(r["ContextTokens"]) for r in rows)
    output = sum(int(r["GeneratedTokens"]) for r in rows)
    assert prompt / (prompt + output) == pytest.approx(BURSTGPT_PROMPT_SHARE, abs=5e-5)


def test_servegen_spec_is_the_servegen_loader(data_dir: Path) -> None:
    need(data_dir, "traces/servegen/m-small_rate_10min.csv")
    assert load_demand("servegen:m-small") == load_servegen("m-small")


# -- per-request files on small inputs ------------------------------------------------------------------


def write_azure(root: Path, lines: list[str], kind: str = "conv") -> Path:
    directory = root / TRACES / "azure-llm-2023"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{kind}.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_mooncake(root: Path, lines: list[str]) -> Path:
    directory = root / TRACES / "mooncake"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "conversation_trace.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_azure_seven_digit_fractions_are_read_exactly_across_midnight(tmp_path: Path) -> None:
    write_azure(
        tmp_path,
        [
            "2023-11-16 23:59:59.9999999,100,10",
            "2023-11-17 00:00:00.0000001,300,30",
            "2023-11-17 00:00:59.9999998,500,50",  # 59.9999999 s after the first: still step 0
            "2023-11-17 00:01:00.0000000,700,70",  # 60.0000001 s: step 1
        ],
        kind="code",
    )
    trace = load_demand("azure2023:code", data_dir=tmp_path)
    assert [s.demand for s in trace.steps] == [Demand(3 / 60, 300, 30), Demand(1 / 60, 700, 70)]
    assert [s.time_s for s in trace.steps] == [DEFAULT_START_EPOCH, DEFAULT_START_EPOCH + 60]


def test_empty_steps_have_zero_rate_and_the_overall_token_mix(tmp_path: Path) -> None:
    write_mooncake(
        tmp_path,
        [
            '{"timestamp": 150000, "input_length": 400, "output_length": 40}',  # out of order is fine
            '{"timestamp": 0, "input_length": 100, "output_length": 10}',
            '{"timestamp": 30000, "input_length": 300, "output_length": 50, "hash_ids": [1]}',
        ],
    )
    trace = load_demand("mooncake", data_dir=tmp_path, start_epoch=1000.0)
    assert [s.demand for s in trace.steps] == [
        Demand(2 / 60, 200, 30),
        Demand(0.0, 800 / 3, 100 / 3),
        Demand(1 / 60, 400, 40),
    ]
    assert [s.time_s for s in trace.steps] == [1000.0, 1060.0, 1120.0]


@pytest.mark.parametrize(
    ("line", "where"),
    [
        ("2023-11-16 18:17:03,12,x", r"conv\.csv:3: column 'GeneratedTokens': not a number"),
        ("2023-11-16 18:17:03,-12,3", r"conv\.csv:3: column 'ContextTokens': must be a finite number ≥ 0"),
        ("2023/11/16 18:17:03,12,3", r"conv\.csv:3: column 'TIMESTAMP': expected YYYY-MM-DD"),
        ("2023-02-30 18:17:03.1,12,3", r"conv\.csv:3: column 'TIMESTAMP': no such date"),
        ("2023-11-16 24:17:03.1,12,3", r"conv\.csv:3: column 'TIMESTAMP': no such time of day"),
        ("2023-11-16 18:17:03.1,12", r"conv\.csv:3: expected 3 fields, got 2"),
    ],
)
def test_azure_errors_name_file_line_and_column(tmp_path: Path, line: str, where: str) -> None:
    write_azure(tmp_path, ["2023-11-16 18:17:03.9799600,4808,10", line])
    with pytest.raises(TraceError, match=where):
        load_demand("azure2023:conv", data_dir=tmp_path)


def test_azure_missing_column_and_empty_file(tmp_path: Path) -> None:
    path = write_azure(tmp_path, [])
    with pytest.raises(TraceError, match=r"conv\.csv:2: no data rows"):
        load_demand("azure2023:conv", data_dir=tmp_path)
    path.write_text("TIMESTAMP,ContextTokens\n2023-11-16 18:17:03,1\n", encoding="utf-8")
    with pytest.raises(TraceError, match=r"conv\.csv:1: missing column 'GeneratedTokens'"):
        load_demand("azure2023:conv", data_dir=tmp_path)
    with pytest.raises(TraceError, match=r"code\.csv: no such trace file"):
        load_demand("azure2023:code", data_dir=tmp_path)


@pytest.mark.parametrize(
    ("line", "where"),
    [
        ('{"timestamp": 5, "input_length": 1', r"jsonl:2: not JSON"),
        ("[1, 2, 3]", r"jsonl:2: expected a JSON object, got list"),
        ('{"timestamp": 5, "input_length": 1}', r"jsonl:2: column 'output_length': missing"),
        ('{"timestamp": -5, "input_length": 1, "output_length": 1}', r"jsonl:2: column 'timestamp': must be"),
        (
            '{"timestamp": 5, "input_length": "1", "output_length": 1}',
            r"jsonl:2: column 'input_length': not a",
        ),
        (
            '{"timestamp": 5, "input_length": true, "output_length": 1}',
            r"jsonl:2: column 'input_length': not a",
        ),
    ],
)
def test_mooncake_errors_name_file_line_and_field(tmp_path: Path, line: str, where: str) -> None:
    write_mooncake(tmp_path, ['{"timestamp": 0, "input_length": 10, "output_length": 2}', line])
    with pytest.raises(TraceError, match=where):
        load_demand("mooncake", data_dir=tmp_path)


def test_mooncake_without_requests(tmp_path: Path) -> None:
    write_mooncake(tmp_path, [""])
    with pytest.raises(TraceError, match=r"jsonl:1: no requests"):
        load_demand("mooncake", data_dir=tmp_path)


# -- BurstGPT on small inputs -----------------------------------------------------------------------------


def write_burstgpt(root: Path, minutes: list[str], days: list[str] | None = None) -> Path:
    directory = root / TRACES / "burstgpt"
    directory.mkdir(parents=True, exist_ok=True)
    if days is None:
        days = [f"{d},10,{1000 if d < 6 else 2000}" for d in range(8)]  # 8,000 tokens / 70 requests
    (directory / "burstgpt1_daily_requests_tokens_61d.csv").write_text(
        "day,requests,total_tokens\n" + "\n".join(days) + "\n", encoding="utf-8"
    )
    path = directory / "burstgpt1_week1_tokens_per_second_by_minute.csv"
    path.write_text("minute,tokens_per_second\n" + "\n".join(minutes) + "\n", encoding="utf-8")
    return path


def test_burstgpt_small_week(tmp_path: Path) -> None:
    write_burstgpt(tmp_path, ["0,80", "2,160", "10079,8"])
    trace = load_demand("burstgpt", data_dir=tmp_path)
    per_request = 8000 / 70
    assert len(trace.steps) == 7 * 1440
    assert trace.steps[0].demand.rps == pytest.approx(80 / per_request)
    assert trace.steps[1].demand.rps == 0
    assert trace.steps[2].demand.rps == pytest.approx(160 / per_request)
    assert trace.steps[-1].demand.rps == pytest.approx(8 / per_request)
    assert trace.steps[1].demand.prompt_tokens == pytest.approx(BURSTGPT_PROMPT_SHARE * per_request)


@pytest.mark.parametrize(
    ("minutes", "where"),
    [
        (["0,1", "5,2", "5,3"], r"minute\.csv:4: column 'minute': minute 5 is out of order or repeated"),
        (["0,1", "10080,2"], r"minute\.csv:3: column 'minute': expected a whole minute of week 1"),
        (["0,1", "2.5,2"], r"minute\.csv:3: column 'minute': expected a whole minute"),
        (["0,1", "3,-2"], r"minute\.csv:3: column 'tokens_per_second': must be a finite number ≥ 0"),
    ],
)
def test_burstgpt_minute_errors(tmp_path: Path, minutes: list[str], where: str) -> None:
    write_burstgpt(tmp_path, minutes)
    with pytest.raises(TraceError, match=where):
        load_demand("burstgpt", data_dir=tmp_path)


def test_burstgpt_daily_file_errors(tmp_path: Path) -> None:
    write_burstgpt(tmp_path, ["0,1"], days=[f"{d},10,100" for d in range(5)])
    with pytest.raises(TraceError, match=r"61d\.csv:7: column 'day': days 0-6 needed"):
        load_demand("burstgpt", data_dir=tmp_path)
    write_burstgpt(tmp_path, ["0,1"], days=["0,10,100", "2,10,100"])
    with pytest.raises(TraceError, match=r"61d\.csv:3: column 'day': expected day 1"):
        load_demand("burstgpt", data_dir=tmp_path)
    write_burstgpt(tmp_path, ["0,1"], days=[f"{d},0,0" for d in range(7)])
    with pytest.raises(TraceError, match=r"61d\.csv:8: column 'requests': no requests in days 0-6"):
        load_demand("burstgpt", data_dir=tmp_path)


# -- generic CSV ------------------------------------------------------------------------------------------


def write_csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "demand.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_with_token_columns(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path, "time_s,rps,prompt_tokens,output_tokens\n0,2,100,10\n60,3,200,20\n180,0,300,30\n"
    )
    trace = load_demand(f"csv:{path}")
    assert trace.name == "csv/demand.csv"
    assert [(s.time_s - DEFAULT_START_EPOCH, s.duration_s) for s in trace.steps] == [
        (0, 60),
        (60, 120),
        (180, 120),
    ]
    assert [s.demand for s in trace.steps] == [Demand(2, 100, 10), Demand(3, 200, 20), Demand(0, 300, 30)]


def test_csv_missing_token_columns_take_the_arguments(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "time_s,rps,output_tokens\n0,2,10\n")
    trace = load_demand(f"csv:{path}", prompt_tokens=500, step_s=300)
    assert trace.steps == (DemandStep(DEFAULT_START_EPOCH, 300, Demand(2, 500, 10)),)


def test_csv_missing_token_columns_without_arguments_is_an_error(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "time_s,rps\n0,2\n")
    with pytest.raises(
        TraceError, match=r"demand\.csv:1: missing column 'prompt_tokens' and 'output_tokens'"
    ):
        load_demand(f"csv:{path}")
    with pytest.raises(TraceError, match=r"demand\.csv:1: missing column 'output_tokens'; add it"):
        load_demand(f"csv:{path}", prompt_tokens=100)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("time_s,rps\n0,1\n60,1\n60,2\n", r"demand\.csv:4: column 'time_s': 60 is not after the previous"),
        ("time_s,rps\n0,1\n60,lots\n", r"demand\.csv:3: column 'rps': not a number: 'lots'"),
        ("time_s,rps\n0,1\n60,nan\n", r"demand\.csv:3: column 'rps': must be a finite number ≥ 0"),
        ("time,rps\n0,1\n", r"demand\.csv:1: missing column 'time_s'"),
        ("time_s,rps\n", r"demand\.csv:2: no data rows"),
    ],
)
def test_csv_errors_name_file_line_and_column(tmp_path: Path, text: str, where: str) -> None:
    path = write_csv(tmp_path, text)
    with pytest.raises(TraceError, match=where):
        load_demand(f"csv:{path}", prompt_tokens=1, output_tokens=1)


def test_unknown_specs_list_the_accepted_forms() -> None:
    for spec in ("azure2023:chat", "moon", "csv:", "servegen:", ""):
        with pytest.raises(TraceError, match="expected one of servegen:<model>, azure2023:code") as caught:
            load_demand(spec)
        assert all(form in str(caught.value) for form in DEMAND_SPECS)


def test_bad_step_is_a_value_error(tmp_path: Path) -> None:
    write_mooncake(tmp_path, ['{"timestamp": 0, "input_length": 10, "output_length": 2}'])
    with pytest.raises(ValueError, match="step_s"):
        load_demand("mooncake", data_dir=tmp_path, step_s=0)


# -- resample, scale, peak nodes ----------------------------------------------------------------------------


def test_resample_finer_repeats_each_value() -> None:
    trace = trace_of((6, 100, 10), (0, 200, 20), step_s=600)
    fine = resample(trace, 60)
    assert len(fine.steps) == 20
    assert [s.demand for s in fine.steps] == [Demand(6, 100, 10)] * 10 + [Demand(0, 200, 20)] * 10
    assert [s.time_s for s in fine.steps] == [60.0 * i for i in range(20)]


def test_resample_coarser_is_time_weighted_and_conserves_requests() -> None:
    trace = trace_of(
        (1, 100, 10), (3, 200, 30), (0, 999, 99), (2, 400, 40), (5, 500, 50), (4, 600, 60), (1, 1, 1)
    )
    coarse = resample(trace, 180)
    assert total_requests(coarse) == pytest.approx(total_requests(trace))
    assert [s.duration_s for s in coarse.steps] == [180, 180, 180]
    first = coarse.steps[0].demand
    assert first.rps == pytest.approx(4 / 3)
    assert first.prompt_tokens == pytest.approx((1 * 100 + 3 * 200) / 4)  # request-weighted
    assert first.output_tokens == pytest.approx((1 * 10 + 3 * 30) / 4)
    assert coarse.steps[1].demand.rps == pytest.approx(11 / 3)
    last = coarse.steps[2].demand  # one 60 s step in a 180 s cell: its requests spread over the cell
    assert last.rps == pytest.approx(1 / 3)
    assert request_weighted(coarse) == pytest.approx(request_weighted(trace))


def test_resample_keeps_zero_rate_token_mix_and_gaps() -> None:
    steps = (
        DemandStep(0, 60, Demand(0, 100, 10)),
        DemandStep(60, 60, Demand(0, 300, 30)),
        DemandStep(600, 60, Demand(2, 50, 5)),
    )
    coarse = resample(DemandTrace("gappy", steps), 120)
    assert [(s.time_s, s.demand) for s in coarse.steps] == [(0, Demand(0, 200, 20)), (600, Demand(1, 50, 5))]
    with pytest.raises(ValueError, match="step_s"):
        resample(coarse, -1)


def test_scale_trace_multiplies_rates_only() -> None:
    trace = trace_of((1, 100, 10), (3, 200, 30))
    scaled = scale_trace(trace, 2.5)
    assert [s.demand for s in scaled.steps] == [Demand(2.5, 100, 10), Demand(7.5, 200, 30)]
    assert [s.time_s for s in scaled.steps] == [s.time_s for s in trace.steps]
    with pytest.raises(ValueError, match="factor"):
        scale_trace(trace, -1)


NODE = InstanceType(
    name="test-8x",
    gpus=8,
    gpu_type="H100",
    ondemand_hourly=80.0,
    reserved_hourly=50.0,
    spot_hourly=30.0,
    spot_reclaim_per_hour=0.05,
    max_batch=64,
    prefill_tokens_per_s=40_000.0,
    decode_tokens_per_s=4_000.0,
)


@pytest.mark.parametrize("nodes", [1, 3, 8, 40])
def test_peak_nodes_factor_makes_the_busiest_step_need_exactly_n_nodes(nodes: int) -> None:
    slo = SloConfig()
    # The highest rate (10 rps) has short requests; the busiest step is the 4 rps one with long outputs.
    trace = trace_of((10, 200, 20), (4, 1000, 600), (0, 50, 5), (2, 3000, 100))
    factor = peak_nodes_factor(trace, NODE, slo, nodes)
    scaled = scale_trace(trace, factor)
    needed = [instances_needed(NODE, s.demand, slo) for s in scaled.steps]
    assert max(needed) == nodes
    fractional = [
        max(e.for_throughput, e.for_concurrency)
        for e in (estimate(NODE, s.demand, slo) for s in scaled.steps)
    ]
    assert fractional[1] == pytest.approx(nodes, rel=1e-12)
    assert max(fractional) == fractional[1]
    assert trace.steps[0].demand.rps > trace.steps[1].demand.rps
    assert instances_needed(NODE, scaled.steps[1].demand.scaled(1.001), slo) == nodes + 1


def test_peak_nodes_factor_rejects_no_demand_and_bad_counts() -> None:
    slo = SloConfig()
    with pytest.raises(ValueError, match="no demand"):
        peak_nodes_factor(trace_of((0, 100, 10)), NODE, slo, 4)
    with pytest.raises(ValueError, match="nodes"):
        peak_nodes_factor(trace_of((1, 100, 10)), NODE, slo, 0)
