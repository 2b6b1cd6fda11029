"""``bench/dynamo_ingest.py`` runs end to end with a tiny load: its own nats-server, its publisher process
sending Dynamo-shaped ForwardPassMetrics, the DynamoSource actor and the bare subscriber, one JSON report.

Only that it runs and reports is checked here, never its rates: a benchmark's figures are not a test.
"""

from __future__ import annotations

import json
import subprocess

import cli

MESSAGES, WORKERS = 2000, 16


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    return cli.run_bench("dynamo_ingest.py", *args, timeout_s=90)


def test_the_bench_publishes_dynamo_shaped_metrics_to_both_consumers_and_prints_one_json_report() -> None:
    done = run_bench("--messages", str(MESSAGES), "--rounds", "1", "--workers", str(WORKERS))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)

    assert (report["messages_per_run"], report["rounds"], report["workers"]) == (MESSAGES, 1, WORKERS)
    assert report["subject"].endswith(".component.backend.endpoint.generate.forward-pass-metrics")
    assert report["machine"]["cpu_count"] >= 1
    runs = {run["consumer"]: run for run in report["runs"]}
    assert set(runs) == {"actor", "bare"}
    for run in [*runs.values(), *report["warmup"]]:
        assert (run["received"], run["lost"]) == (MESSAGES, 0)
        assert run["payload_bytes_mean"] > 400  # Dynamo's envelope around a full ForwardPassMetrics
    # Every message decoded and applied: each worker in the registry with the load of its last message.
    assert runs["actor"]["checks"] == {
        "handled_counter": MESSAGES,
        "rejected": 0,
        "workers_in_registry": WORKERS,
        "workers_wrong_or_missing": 0,
        "registry_match": True,
    }
    summary = report["summary"]
    assert summary["actor_checks_pass"]
    assert summary["lost_total"] == 0
    assert summary["ratio_actor_to_bare"] >= 0
    assert report["targets"]["ratio_min"] == 0.8
    assert isinstance(report["targets_met"], bool)


def test_a_worker_count_beyond_the_registrys_bound_is_refused_in_one_line() -> None:
    done = run_bench("--workers", "10001")
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .endswith("--workers must be 1-10000 (the worker registry's bound)")
    )
    assert done.stdout == ""
