"""The registry of Dynamo workers heard on the event plane: latest load per worker, live ones, bounded."""

from __future__ import annotations

import pytest

from agent.core.dynamo_workers import DynamoWorkers

A, B, C = (1, 0), (2, 0), (3, 0)


def test_a_forward_pass_sets_the_load_and_kv_metrics_the_blocks_of_the_same_worker() -> None:
    workers = DynamoWorkers(stale_after_s=5.0)
    workers.forward_pass(A, 10.0, scheduled=3, queued=1)
    workers.kv(A, 11.0, used_blocks=40)
    workers.kv(A, 12.0, used_blocks=None)  # the engine did not report it: the last count stands
    entry = workers.get(A)
    assert entry is not None
    assert (entry.last_seen, entry.scheduled_requests, entry.queued_requests, entry.kv_used_blocks) == (
        12.0,
        3,
        1,
        40,
    )


def test_a_worker_not_heard_from_is_not_live_and_is_forgotten_at_the_next_prune() -> None:
    workers = DynamoWorkers(stale_after_s=5.0)
    workers.forward_pass(A, 0.0, scheduled=0, queued=0)
    workers.forward_pass(B, 4.0, scheduled=0, queued=0)
    assert workers.live(6.0) == 1
    workers.prune(6.0)
    assert set(workers.snapshot()) == {B}


def test_beyond_its_bound_a_new_worker_replaces_the_one_heard_from_longest_ago() -> None:
    workers = DynamoWorkers(stale_after_s=60.0, max_workers=2)
    workers.forward_pass(A, 1.0, scheduled=0, queued=0)
    workers.forward_pass(B, 2.0, scheduled=0, queued=0)
    workers.forward_pass(A, 3.0, scheduled=0, queued=0)
    workers.forward_pass(C, 4.0, scheduled=0, queued=0)
    assert set(workers.snapshot()) == {A, C}


def test_impossible_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="stale_after_s"):
        DynamoWorkers(stale_after_s=0.0)
