"""The spot monitor's view of workers: where each runs, which are routable, which went silent."""

from __future__ import annotations

from agent.core.workers import WorkerRegistry


def registry() -> WorkerRegistry:
    r = WorkerRegistry()
    r.observe("a-0", "node-a", "h100_8x", "z1", "spot", t=0.0, interval_s=5.0)
    r.observe("a-1", "node-a", "h100_8x", "z1", "spot", t=0.0, interval_s=5.0)
    r.observe("b-0", "node-b", "a100_8x", "z2", "ondemand", t=0.0, interval_s=10.0)
    return r


def test_workers_are_grouped_by_the_instance_they_report() -> None:
    r = registry()
    assert sorted(w.worker_id for w in r.workers_of("node-a")) == ["a-0", "a-1"]
    assert r.describe("node-b") == ("a100_8x", "z2", "ondemand")
    assert r.life("node-a") == "active"
    assert r.life("node-z") is None


def test_a_worker_is_silent_after_missing_that_many_of_its_own_intervals_and_is_reported_once() -> None:
    r = registry()
    assert r.newly_silent(now=15.0, missed_intervals=3) == []
    silent = r.newly_silent(now=15.1, missed_intervals=3)
    assert sorted(w.worker_id for w in silent) == ["a-0", "a-1"]  # b-0 reports every 10 s: not yet
    assert r.newly_silent(now=15.2, missed_intervals=3) == []
    assert [w.worker_id for w in r.newly_silent(now=30.1, missed_intervals=3)] == ["b-0"]


def test_a_new_report_revives_a_worker_declared_silent() -> None:
    r = registry()
    r.newly_silent(now=16.0, missed_intervals=3)
    r.observe("a-0", "node-a", "h100_8x", "z1", "spot", t=17.0, interval_s=5.0)
    assert "a-0" in {w.worker_id for w in r.routable()}
    assert "a-1" not in {w.worker_id for w in r.routable()}


def test_only_workers_of_active_instances_are_routable_or_checked() -> None:
    r = registry()
    r.set_life("node-a", "draining")
    assert [w.worker_id for w in r.routable()] == ["b-0"]
    assert [w.worker_id for w in r.newly_silent(now=100.0, missed_intervals=3)] == ["b-0"]
    assert [w.worker_id for w in r.routable(exclude_instance="node-b")] == []


def test_a_gone_instance_is_forgotten_and_late_reports_do_not_bring_it_back() -> None:
    r = registry()
    r.set_life("node-a", "gone")
    assert r.workers_of("node-a") == []
    r.observe("a-0", "node-a", "h100_8x", "z1", "spot", t=1.0, interval_s=5.0)
    assert r.workers_of("node-a") == []


def test_an_older_report_does_not_move_last_seen_back() -> None:
    r = registry()
    r.observe("a-0", "node-a", "h100_8x", "z1", "spot", t=12.0, interval_s=5.0)
    r.observe("a-0", "node-a", "h100_8x", "z1", "spot", t=3.0, interval_s=5.0)
    assert next(w for w in r.workers_of("node-a") if w.worker_id == "a-0").last_seen == 12.0
