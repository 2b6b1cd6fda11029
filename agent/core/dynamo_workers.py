"""The Dynamo workers seen on the event plane: what each last said about its load, bounded in size.

Pure: no I/O. Keyed by (worker id, DP rank), the key ForwardPassMetrics and kv_metrics share. A worker
that publishes nothing for ``stale_after_s`` is no longer live (a busy or idle mocker publishes at least
an idle heartbeat about once a second) and is forgotten at the next :meth:`DynamoWorkers.prune`. At most
``max_workers`` are kept: a new worker beyond that replaces the one heard from longest ago, so a flood of
made-up ids cannot grow memory.
"""

from __future__ import annotations

from dataclasses import dataclass

WorkerKey = tuple[int, int]  # (worker id, DP rank)


@dataclass(slots=True)
class DynamoWorker:
    last_seen: float
    scheduled_requests: int = 0  # prefill + decode requests in its latest forward pass
    queued_requests: int = 0  # waiting to start, or preempted back to the queue
    kv_used_blocks: int | None = None  # from kv_metrics; None until it reported one


class DynamoWorkers:
    def __init__(self, stale_after_s: float, max_workers: int = 10_000) -> None:
        if not stale_after_s > 0 or max_workers < 1:
            raise ValueError("need stale_after_s > 0 and max_workers ≥ 1")
        self.stale_after_s = stale_after_s
        self.max_workers = max_workers
        self._workers: dict[WorkerKey, DynamoWorker] = {}

    def _entry(self, key: WorkerKey, now: float) -> DynamoWorker:
        worker = self._workers.get(key)
        if worker is None:
            if len(self._workers) >= self.max_workers:
                oldest = min(self._workers, key=lambda k: self._workers[k].last_seen)
                del self._workers[oldest]
            worker = self._workers[key] = DynamoWorker(last_seen=now)
        worker.last_seen = max(worker.last_seen, now)
        return worker

    def forward_pass(self, key: WorkerKey, now: float, scheduled: int, queued: int) -> None:
        """One forward pass (or idle heartbeat) of the worker, received at ``now``."""
        # Every forward pass of every worker comes here: a known worker is updated without a second call.
        worker = self._workers.get(key)
        if worker is None:
            worker = self._entry(key, now)
        elif now > worker.last_seen:
            worker.last_seen = now
        worker.scheduled_requests = scheduled
        worker.queued_requests = queued

    def kv(self, key: WorkerKey, now: float, used_blocks: int | None) -> None:
        """A kv_metrics report; a null count (not reported by the engine) keeps the last known one."""
        worker = self._entry(key, now)
        if used_blocks is not None:
            worker.kv_used_blocks = used_blocks

    def prune(self, now: float) -> None:
        """Forget every worker not heard from within ``stale_after_s``."""
        horizon = now - self.stale_after_s
        for key in [k for k, w in self._workers.items() if w.last_seen < horizon]:
            del self._workers[key]

    def live(self, now: float) -> int:
        horizon = now - self.stale_after_s
        return sum(1 for w in self._workers.values() if w.last_seen >= horizon)

    def get(self, key: WorkerKey) -> DynamoWorker | None:
        return self._workers.get(key)

    def snapshot(self) -> dict[WorkerKey, DynamoWorker]:
        """A copy of every known worker's entry (for tests and a future demand snapshot)."""
        return {
            k: DynamoWorker(w.last_seen, w.scheduled_requests, w.queued_requests, w.kv_used_blocks)
            for k, w in self._workers.items()
        }

    def __len__(self) -> int:
        return len(self._workers)
