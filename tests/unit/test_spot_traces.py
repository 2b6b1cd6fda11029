"""Spot availability traces: the real SkyPilot and SpotHedge files, lookups with wrap-around, scaling,
the observed reclaim rate, and one-line errors naming the file and what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.sim.spot_traces import (
    SPOT_SPECS,
    SpotTrace,
    load_spot_file,
    load_spot_traces,
    observed_reclaim_rate,
)
from agent.sim.traces import TraceError, find_data_dir

AWS_16 = "skypilot:availability/16-node/aws-08-27-2023"


@pytest.fixture
def data_dir() -> Path:
    try:
        directory = find_data_dir()
    except TraceError as exc:
        pytest.skip(f"shared data directory not found: {exc}")
    if not (directory / "spot").is_dir():
        pytest.skip("spot traces not present")
    return directory


def write(directory: Path, name: str, document: object) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(document if isinstance(document, str) else json.dumps(document), encoding="utf-8")
    return path


# -- the real traces ----------------------------------------------------------------------------------


def test_aws_sixteen_node_traces(data_dir: Path) -> None:
    traces = load_spot_traces(AWS_16)
    assert [t.pool for t in traces] == ["us-east-2b_v100_1", "us-west-2a_v100_1", "us-west-2c_v100_1"]
    for trace in traces:
        assert trace.gap_s == 300
        assert min(trace.counts) == 0
        assert max(trace.counts) == 16
        assert 11 * 86400 <= trace.duration_s <= 17 * 86400
        assert 0 < observed_reclaim_rate(trace) < 1
    # Unequal lengths: us-east-2b ends (and wraps) after 3,247 ticks, the others after 4,736.
    assert [len(t.counts) for t in traces] == [3247, 4736, 4736]
    east = traces[0]
    assert east.available_at(east.duration_s + 1) == east.counts[0]


def test_spothedge_gcp_traces(data_dir: Path) -> None:
    traces = load_spot_traces("spothedge-gcp", data_dir=data_dir)
    assert len(traces) == 6
    assert [t.pool for t in traces] == sorted(t.pool for t in traces)
    assert all(t.gap_s == 150 and len(t.counts) == 770 for t in traces)
    assert all(0 <= c <= 4 for t in traces for c in t.counts)
    never = next(t for t in traces if t.pool == "us-east1-b_a100_40gb_8")
    assert set(never.counts) == {0}
    assert observed_reclaim_rate(never) == 0.0


def test_one_node_traces_scaled_to_eight(data_dir: Path) -> None:
    traces = load_spot_traces("skypilot:availability/1-node/aws-02-15-2023", scale=8)
    assert len(traces) == 9
    assert all(set(t.counts) == {0, 8} and t.gap_s == 195 for t in traces)


# -- lookups, scaling, reclaim rate -------------------------------------------------------------------


def test_available_at_picks_the_tick_and_wraps_around() -> None:
    trace = SpotTrace(pool="p", gap_s=300, counts=(3, 0, 2))
    assert trace.duration_s == 900
    assert [trace.available_at(t) for t in (0, 299.9, 300, 599, 600, 899.99)] == [3, 3, 0, 0, 2, 2]
    assert [trace.available_at(t) for t in (900, 1200, 1500, 14 * 86400)] == [3, 0, 2, 3]
    with pytest.raises(ValueError, match="t_offset_s"):
        trace.available_at(-1)


def test_spot_trace_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="gap_s"):
        SpotTrace(pool="p", gap_s=0, counts=(1,))
    with pytest.raises(ValueError, match="no counts"):
        SpotTrace(pool="p", gap_s=1, counts=())
    with pytest.raises(ValueError, match=r"counts\[1\]"):
        SpotTrace(pool="p", gap_s=1, counts=(1, -1))


def test_observed_reclaim_rate_is_drops_per_node_hour() -> None:
    # Drops: 4→2 and 3→0, 5 nodes; exposure over ticks with a successor: 4+4+2+2+3 = 15 node-hours.
    trace = SpotTrace(pool="p", gap_s=3600, counts=(4, 4, 2, 2, 3, 0))
    assert observed_reclaim_rate(trace) == pytest.approx(5 / 15)
    half_hours = SpotTrace(pool="p", gap_s=1800, counts=(4, 4, 2, 2, 3, 0))
    assert observed_reclaim_rate(half_hours) == pytest.approx(10 / 15)
    assert observed_reclaim_rate(SpotTrace(pool="p", gap_s=60, counts=(0, 0, 5))) == 0.0


def test_scale_rounds_half_up_and_file_spec_reads_one_file(tmp_path: Path) -> None:
    path = write(tmp_path, "zone-a_x.json", {"metadata": {"gap_seconds": 60}, "data": [0, 1, 2, 3, 4.0]})
    assert load_spot_file(path).counts == (0, 1, 2, 3, 4)
    assert load_spot_traces(f"file:{path}", scale=0.5)[0].counts == (0, 1, 1, 2, 2)
    assert load_spot_traces(f"file:{path}", scale=8)[0] == SpotTrace("zone-a_x", 60.0, (0, 8, 16, 24, 32))
    with pytest.raises(ValueError, match="scale"):
        load_spot_traces(f"file:{path}", scale=-1)


def test_directory_specs_read_every_json_file_in_sorted_order(tmp_path: Path) -> None:
    directory = tmp_path / "spot" / "skypilot" / "availability" / "test"
    for name in ("zone-b.json", "zone-a.json"):
        write(directory, name, {"metadata": {"gap_seconds": 30}, "data": [1]})
    write(directory, "notes.txt", "not a trace")
    traces = load_spot_traces("skypilot:availability/test", data_dir=tmp_path)
    assert [t.pool for t in traces] == ["zone-a", "zone-b"]
    write(
        tmp_path / "spot" / "spothedge-gcp-a100x8", "z.json", {"metadata": {"gap_seconds": 150}, "data": [2]}
    )
    assert load_spot_traces("spothedge-gcp", data_dir=tmp_path) == [SpotTrace("z", 150.0, (2,))]


# -- errors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ('{"metadata": {"gap_seconds": 60},\n "data": [1, 2,]}', r"bad\.json:2: not JSON"),
        ("[1, 2]", r"bad\.json: expected a JSON object"),
        ({"data": [1]}, r"bad\.json: missing metadata\.gap_seconds"),
        ({"metadata": {"gap": 60}, "data": [1]}, r"bad\.json: missing metadata\.gap_seconds"),
        (
            {"metadata": {"gap_seconds": 0}, "data": [1]},
            r"bad\.json: metadata\.gap_seconds must be a number > 0",
        ),
        ({"metadata": {"gap_seconds": -5}, "data": [1]}, r"bad\.json: metadata\.gap_seconds must be"),
        ({"metadata": {"gap_seconds": "60"}, "data": [1]}, r"bad\.json: metadata\.gap_seconds must be"),
        ({"metadata": {"gap_seconds": 60}}, r"bad\.json: missing 'data'"),
        ({"metadata": {"gap_seconds": 60}, "data": []}, r"bad\.json: 'data' is empty"),
        (
            {"metadata": {"gap_seconds": 60}, "data": [1, 0, -1]},
            r"bad\.json: data\[2\]: count must be an integer ≥ 0",
        ),
        (
            {"metadata": {"gap_seconds": 60}, "data": [1, 1.5]},
            r"bad\.json: data\[1\]: count must be an integer",
        ),
        (
            {"metadata": {"gap_seconds": 60}, "data": [True]},
            r"bad\.json: data\[0\]: count must be an integer",
        ),
        (
            {"metadata": {"gap_seconds": 60}, "data": [1, "2"]},
            r"bad\.json: data\[1\]: count must be an integer",
        ),
    ],
)
def test_bad_files_name_the_file_and_the_fault(tmp_path: Path, document: object, message: str) -> None:
    path = write(tmp_path, "bad.json", document)
    with pytest.raises(TraceError, match=message):
        load_spot_traces(f"file:{path}")


def test_directory_errors(tmp_path: Path) -> None:
    (tmp_path / "spot" / "skypilot" / "empty").mkdir(parents=True)
    with pytest.raises(TraceError, match=r"empty: no \*\.json spot trace files"):
        load_spot_traces("skypilot:empty", data_dir=tmp_path)
    with pytest.raises(TraceError, match=r"nowhere: no such spot trace directory"):
        load_spot_traces("skypilot:nowhere", data_dir=tmp_path)
    with pytest.raises(TraceError, match=r"spothedge-gcp-a100x8: no such spot trace directory"):
        load_spot_traces("spothedge-gcp", data_dir=tmp_path)
    with pytest.raises(TraceError, match="must lie inside"):
        load_spot_traces("skypilot:../..", data_dir=tmp_path)
    with pytest.raises(TraceError, match=r"missing\.json: cannot read"):
        load_spot_traces(f"file:{tmp_path / 'missing.json'}")


def test_unknown_spec_lists_the_accepted_forms() -> None:
    for spec in ("skypilot:", "spothedge", "file:", "aws"):
        with pytest.raises(TraceError, match="unknown spot trace") as caught:
            load_spot_traces(spec)
        assert all(form in str(caught.value) for form in SPOT_SPECS)
