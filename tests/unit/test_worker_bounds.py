"""The spot monitor's registry under made-up ids and outages: bounded, least recently heard forgotten,
and silence counted only while the agent is connected."""

from __future__ import annotations

import pytest

from agent.core.workers import WorkerRegistry, counted_silence


def test_silence_counts_from_the_last_report_while_connected() -> None:
    assert counted_silence(now=100.0, last_seen=80.0, connected_since=0.0) == 20.0


def test_silence_counts_nothing_while_the_agent_is_disconnected() -> None:
    assert counted_silence(now=100.0, last_seen=0.0, connected_since=None) == 0.0


def test_after_a_reconnection_silence_counts_from_the_reconnection() -> None:
    # Silent since 0, the agent's link was down until 90: only the 10 s since count.
    assert counted_silence(now=100.0, last_seen=0.0, connected_since=90.0) == 10.0


def test_a_worker_silent_across_an_outage_gets_a_full_window_after_the_reconnection() -> None:
    r = WorkerRegistry()
    r.observe("a-0", "node-a", "h100_8x", "z1", "spot", t=0.0, interval_s=5.0)
    assert r.newly_silent(now=60.0, missed_intervals=3, connected_since=None) == []
    assert r.newly_silent(now=75.0, missed_intervals=3, connected_since=60.0) == []
    assert [w.worker_id for w in r.newly_silent(75.1, 3, connected_since=60.0)] == ["a-0"]


def test_twenty_thousand_made_up_ids_leave_the_registry_at_its_bound() -> None:
    r = WorkerRegistry(max_workers=1000, max_instances=1000)
    for i in range(20_000):
        r.observe(f"w{i}", f"i{i}", "h100_8x", "z1", "spot", t=float(i), interval_s=5.0)
    assert len(r) == 1000
    assert r.instances() == 1000
    assert r.evicted == 19_000  # each new instance past the bound pushed out the oldest, its worker too
    assert r.knows("i19999")
    assert not r.knows("i18999")
    assert [w.worker_id for w in r.workers_of("i19999")] == ["w19999"]
    assert r.workers_of("i0") == []


def test_the_least_recently_heard_worker_is_the_one_forgotten() -> None:
    r = WorkerRegistry(max_workers=2)
    r.observe("a-0", "node-a", "h100_8x", "z1", "spot", t=0.0, interval_s=5.0)
    r.observe("a-1", "node-a", "h100_8x", "z1", "spot", t=1.0, interval_s=5.0)
    r.observe("a-0", "node-a", "h100_8x", "z1", "spot", t=2.0, interval_s=5.0)  # heard again
    r.observe("a-2", "node-a", "h100_8x", "z1", "spot", t=3.0, interval_s=5.0)
    assert sorted(w.worker_id for w in r.workers_of("node-a")) == ["a-0", "a-2"]
    assert r.evicted == 1


def test_a_worker_that_moves_to_another_instance_is_held_once() -> None:
    r = WorkerRegistry()
    r.observe("a-0", "node-a", "h100_8x", "z1", "spot", t=0.0, interval_s=5.0)
    r.observe("a-0", "node-b", "h100_8x", "z1", "spot", t=1.0, interval_s=5.0)
    assert r.workers_of("node-a") == []
    assert [w.instance_id for w in r.workers_of("node-b")] == ["node-b"]
    assert len(r) == 1


def test_an_evicted_instance_stays_forgotten_when_its_drain_deadline_passes() -> None:
    r = WorkerRegistry(max_instances=1)
    r.add_instance("node-a", "h100_8x", "z1", "spot")
    r.add_instance("node-b", "h100_8x", "z1", "spot")
    r.set_life("node-a", "gone")
    assert not r.knows("node-a")
    assert r.instances() == 1


@pytest.mark.parametrize("bound", [0, -1])
def test_a_registry_without_room_is_refused(bound: int) -> None:
    with pytest.raises(ValueError, match="max_workers"):
        WorkerRegistry(max_workers=bound)
