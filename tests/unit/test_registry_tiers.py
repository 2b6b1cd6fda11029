"""Which tier the worker registry holds for an instance: the fleet's word (the actuator's) stands over a
worker's report, which anyone on the bus can forge; a report alone is taken as it says."""

from __future__ import annotations

from agent.core.workers import WorkerRegistry


def test_a_worker_report_does_not_relabel_an_instance_the_fleet_named() -> None:
    registry = WorkerRegistry()
    registry.add_instance("node-r", "h100_8x", "default", "reserved", from_fleet=True)
    registry.observe("forged", "node-r", "h100_8x", "default", "spot", 0.0, 5.0)
    assert registry.describe("node-r") == ("h100_8x", "default", "reserved")
    assert [w.worker_id for w in registry.workers_of("node-r")] == ["forged"]  # still a worker there


def test_the_fleet_may_correct_what_a_worker_reported() -> None:
    registry = WorkerRegistry()
    registry.observe("w", "node-a", "h100_8x", "default", "spot", 0.0, 5.0)
    assert registry.describe("node-a") == ("h100_8x", "default", "spot")
    registry.add_instance("node-a", "h100_8x", "default", "ondemand", from_fleet=True)
    registry.observe("w", "node-a", "h100_8x", "default", "spot", 5.0, 5.0)
    assert registry.describe("node-a") == ("h100_8x", "default", "ondemand")


def test_an_evicted_instance_loses_the_fleets_word_with_it() -> None:
    registry = WorkerRegistry(max_instances=1)
    registry.add_instance("node-r", "h100_8x", "default", "reserved", from_fleet=True)
    registry.add_instance("node-x", "h100_8x", "default", "spot")  # evicts node-r
    registry.observe("w", "node-r", "h100_8x", "default", "spot", 0.0, 5.0)
    assert registry.describe("node-r") == ("h100_8x", "default", "spot")
