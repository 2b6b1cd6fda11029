"""The demand profiler on a real nats-server: worker reports become one demand sample per bin."""

from __future__ import annotations

import msgspec
from harness import START, Inbox, Peer, counter, handled, rejected

from agent.service import Agent
from schemas import DemandSnapshot, WorkerMetrics


def report(peer: Peer, worker: str, requests: int, *, in_flight: int = 0) -> WorkerMetrics:
    return WorkerMetrics(
        **peer.env(worker),
        worker_id=worker,
        instance_id=f"i-{worker}",
        instance_type="h100_8x",
        pool="default",
        tier="spot",
        interval_s=10.0,
        requests_completed=requests,
        prompt_tokens=requests * 1000,
        output_tokens=requests * 250,
        in_flight=in_flight,
        queued=1,
    )


async def test_reports_from_all_workers_sum_into_one_snapshot_per_bin(running: tuple[Agent, Peer]) -> None:
    agent, peer = running
    snapshots = await Inbox.open(peer.nc, peer.subjects.demand_snapshot, DemandSnapshot)
    bin_s = agent.profiler.bins.bin_seconds
    peer.clock.advance(10)
    for worker, requests in (("w1", 100), ("w2", 200), ("w3", 300)):
        await peer.send(peer.subjects.worker_metrics(worker), report(peer, worker, requests, in_flight=4))
    peer.clock.advance(10)
    await peer.send(peer.subjects.worker_metrics("w1"), report(peer, "w1", 150, in_flight=2))
    await handled(agent, "demand_profiler", "evt.worker.metrics.*", 4)
    assert agent.profiler.bins.current(peer.clock.now()) is not None

    # Nothing is recorded until the bin has ended and the stragglers' grace has passed.
    peer.clock.advance(bin_s + agent.profiler.bins.close_delay_s)
    snap = await snapshots.next()
    assert snap.bin_start == START
    assert snap.bin_seconds == bin_s
    assert snap.rps == (100 + 200 + 300 + 150) / bin_s
    assert snap.prompt_tokens_mean == 1000
    assert snap.output_tokens_mean == 250
    assert snap.tokens_per_s == 750 * 1250 / bin_s
    assert (snap.workers, snap.reports) == (3, 4)
    assert snap.in_flight == 2 + 4 + 4  # each worker's latest gauge, summed
    assert snap.forecast is not None
    assert snap.forecast.p50_rps == snap.rps
    assert agent.profiler.profiler.sample_count == 1


async def test_a_late_report_is_counted_in_the_open_bin_not_lost(running: tuple[Agent, Peer]) -> None:
    agent, peer = running
    snapshots = await Inbox.open(peer.nc, peer.subjects.demand_snapshot, DemandSnapshot)
    bin_s = agent.profiler.bins.bin_seconds
    await peer.send(peer.subjects.worker_metrics("w1"), report(peer, "w1", 60))
    await handled(agent, "demand_profiler", "evt.worker.metrics.*", 1)
    peer.clock.advance(bin_s + agent.profiler.bins.close_delay_s)
    first = await snapshots.next()

    # A worker whose report was delayed past the close: stamped in the first bin, arriving after it.
    delayed = msgspec.structs.replace(report(peer, "w2", 30), sent_at=START + 1)
    await peer.send(peer.subjects.worker_metrics("w2"), delayed)
    await handled(agent, "demand_profiler", "evt.worker.metrics.*", 2)
    peer.clock.advance(bin_s)
    second = await snapshots.next()

    assert first.rps * bin_s == 60
    assert second.bin_start == START + bin_s
    assert second.rps * bin_s == 30
    assert counter(agent, "costagent_profiler_late_reports_total") == 1


async def test_a_malformed_report_is_counted_and_the_next_one_still_counts(
    running: tuple[Agent, Peer],
) -> None:
    agent, peer = running
    subject = peer.subjects.worker_metrics("w1")
    await peer.send_raw(subject, b"\x00 not json")
    await peer.send_raw(subject, b'"WorkerMetrics"')
    await peer.send_raw(subject, b'{"type": "worker.metrics.v1", "requests_completed": -1}')
    await peer.send(subject, report(peer, "w1", 5))
    await rejected(agent, "demand_profiler", "evt.worker.metrics.*", "malformed", 3)
    await handled(agent, "demand_profiler", "evt.worker.metrics.*", 1)
    assert agent.supervisor.running["demand_profiler"]


async def test_a_report_from_a_clock_running_ahead_is_counted_now(running: tuple[Agent, Peer]) -> None:
    agent, peer = running
    snapshots = await Inbox.open(peer.nc, peer.subjects.demand_snapshot, DemandSnapshot)
    bin_s = agent.profiler.bins.bin_seconds
    ahead = msgspec.structs.replace(report(peer, "w1", 40), sent_at=START + 86_400)
    await peer.send(peer.subjects.worker_metrics("w1"), ahead)
    await handled(agent, "demand_profiler", "evt.worker.metrics.*", 1)
    peer.clock.advance(bin_s + agent.profiler.bins.close_delay_s)
    snap = await snapshots.next()
    assert snap.bin_start == START
    assert snap.rps * bin_s == 40
    assert counter(agent, "costagent_profiler_clock_skew_reports_total") == 1
