"""What survives a restart, one core structure at a time: the ledger, the fleet, the spot monitor's registry
and the demand profile each round-trip through their msgspec snapshot, and refuse one that does not fit
(another catalog, another binning, inconsistent content) without changing what they hold."""

from __future__ import annotations

import asyncio
import math

import msgspec
import pytest

from agent.config import resolve_catalog
from agent.core.fleet_state import FleetSnapshot, FleetState
from agent.core.ledger import CostLedger, LedgerState
from agent.core.profiler import DemandProfiler
from agent.core.workers import RegistrySnapshot, WorkerRegistry
from agent.runtime.clock import RealClock
from agent.runtime.metrics import AgentMetrics
from agent.runtime.state_store import (
    NoStore,
    Snapshots,
    bucket_name,
    decode_state,
    encode_state,
    pack,
    unpack,
)

SEED = resolve_catalog("seed")
GCP = resolve_catalog("gcp-2026-07")


def roundtrip(state: msgspec.Struct) -> bytes:
    return msgspec.msgpack.encode(state)


def test_a_restored_ledger_reports_the_same_totals_and_goes_on_from_its_last_interval() -> None:
    ledger = CostLedger(SEED)
    ledger.record(2.0, {("h100_8x", "reserved"): 1, ("a100_8x", "spot"): 3}, tokens=5e6, start_h=100.0)
    ledger.record(0.5, {("h100_8x", "ondemand"): 2}, requests=40, spot_prices={"a100_8x": 7.0}, start_h=102.0)
    restored = CostLedger(SEED)
    restored.restore(msgspec.msgpack.decode(roundtrip(ledger.state()), type=LedgerState))
    assert restored.report() == ledger.report()
    # An interval that overlaps the restored ones would bill the same nodes twice: still refused.
    with pytest.raises(ValueError, match="start_h"):
        restored.record(1.0, {("h100_8x", "reserved"): 1}, start_h=101.0)
    restored.record(1.0, {("h100_8x", "reserved"): 1}, start_h=102.5)
    assert restored.report().hours == pytest.approx(3.5)


def test_a_ledger_refuses_the_state_of_another_catalog_or_with_an_impossible_amount() -> None:
    ledger = CostLedger(SEED)
    ledger.record(1.0, {("h100_8x", "reserved"): 1}, start_h=10.0)
    before = ledger.report()
    other = CostLedger(GCP)
    with pytest.raises(ValueError, match="catalog"):
        other.restore(ledger.state())
    bad: dict[str, object]
    for bad, field in (
        ({"cost": math.nan}, "cost"),
        ({"hours": -1.0}, "hours"),
        ({"instance_hours": [("nope", "spot", 1.0)]}, "nope"),
    ):
        with pytest.raises(ValueError, match=field):
            ledger.restore(msgspec.structs.replace(ledger.state(), **bad))
    assert ledger.report() == before


def test_a_restored_fleet_holds_the_same_nodes_and_still_ignores_late_news_of_a_terminated_one() -> None:
    fleet = FleetState(SEED)
    fleet.apply("r-1", "h100_8x", "default", "reserved", "ready", 1.0)
    fleet.apply("s-1", "h100_8x", "default", "spot", "draining", 2.0)
    fleet.apply("s-2", "a100_8x", "default", "spot", "launched", 3.0)
    fleet.apply("s-2", "a100_8x", "default", "spot", "terminated", 4.0)
    restored = FleetState(SEED)
    restored.restore(msgspec.msgpack.decode(roundtrip(fleet.snapshot()), type=FleetSnapshot))
    assert restored.instances() == fleet.instances()
    assert restored.paid_counts() == fleet.paid_counts()
    assert restored.fleet() == fleet.fleet()
    assert not restored.apply("s-2", "a100_8x", "default", "spot", "ready", 5.0)  # terminated is final


def test_a_fleet_refuses_a_snapshot_naming_a_type_its_catalog_lacks() -> None:
    fleet = FleetState(SEED)
    fleet.apply("r-1", "h100_8x", "default", "reserved", "ready", 1.0)
    foreign = FleetSnapshot(live=[("g-1", "a3-highgpu-8g", "us-central1-a", "spot", "ready", 1.0)], gone=[])
    with pytest.raises(ValueError, match="g-1"):
        fleet.restore(foreign)
    assert [i.instance_id for i in fleet.instances()] == ["r-1"]


def test_a_restored_registry_knows_each_node_its_tier_its_workers_and_which_drain() -> None:
    registry = WorkerRegistry()
    registry.observe("w-1", "s-1", "h100_8x", "default", "spot", t=10.0, interval_s=5.0)
    registry.observe("w-2", "s-1", "h100_8x", "default", "spot", t=11.0, interval_s=5.0)
    registry.observe("w-3", "r-1", "h100_8x", "default", "reserved", t=12.0, interval_s=5.0)
    registry.add_instance("s-9", "a100_8x", "default", "spot")
    registry.set_life("s-1", "draining")
    restored = WorkerRegistry()
    restored.restore(msgspec.msgpack.decode(roundtrip(registry.snapshot()), type=RegistrySnapshot))
    for instance in ("s-1", "r-1", "s-9"):
        assert restored.life(instance) == registry.life(instance)
        assert restored.describe(instance) == registry.describe(instance)
        assert restored.workers_of(instance) == registry.workers_of(instance)
    assert [w.worker_id for w in restored.routable()] == ["w-3"]
    # Silence is judged from the restart's connection on: nobody is lost for the agent's own downtime.
    assert restored.newly_silent(1000.0, 3.0, connected_since=999.0) == []


def test_a_registry_refuses_a_snapshot_whose_worker_runs_on_no_instance_it_lists() -> None:
    registry = WorkerRegistry()
    registry.observe("w-1", "s-1", "h100_8x", "default", "spot", t=10.0, interval_s=5.0)
    broken = RegistrySnapshot(instances=[], workers=[("w-9", "s-9", 1.0, 5.0, False)])
    with pytest.raises(ValueError, match="w-9"):
        registry.restore(broken)
    assert registry.knows("s-1")


def test_a_profile_is_restored_into_the_profiler_its_readers_share_only_if_binned_alike() -> None:
    saved = DemandProfiler()
    for k in range(200):
        saved.record(1_767_225_600.0 + 300.0 * k, 10.0 + k % 7, 1500.0, 400.0)
    shared = DemandProfiler()
    shared.restore(saved.to_bytes())
    t = 1_767_225_600.0 + 86_400.0
    assert shared.predict(t) == saved.predict(t)
    hourly = DemandProfiler(bin_minutes=60)
    with pytest.raises(ValueError, match="binned"):
        hourly.restore(saved.to_bytes())
    assert hourly.sample_count == 0


def test_a_snapshot_of_one_kind_is_not_read_as_another() -> None:
    class A(msgspec.Struct, tag="a.v1", tag_field="kind"):
        x: int

    class B(msgspec.Struct, tag="b.v1", tag_field="kind"):
        x: int

    assert decode_state(A, encode_state(A(1))) == A(1)
    for garbage in (encode_state(B(1)), b"", b"\xff\x00", b"not msgpack at all"):
        with pytest.raises(ValueError, match="not a A snapshot"):
            decode_state(A, garbage)


def test_each_namespace_has_its_own_bucket_with_a_name_jetstream_accepts() -> None:
    assert bucket_name("costagent") == "costagent-state-costagent"
    assert bucket_name("team.prod") == "costagent-state-team_prod"
    assert bucket_name("a") != bucket_name("b")


def test_snapshots_are_stored_compressed_and_anything_else_is_refused() -> None:
    data = encode_state(FleetState(SEED).snapshot()) * 100
    assert unpack(pack(data)) == data
    assert len(pack(data)) < len(data) / 10
    for garbage in (b"", b"plain bytes", pack(data)[:-3]):
        with pytest.raises(ValueError, match="not a compressed snapshot"):
            unpack(garbage)


class Recorded(NoStore):
    def __init__(self) -> None:
        self.saved: dict[str, bytes] = {}

    async def put(self, key: str, value: bytes) -> None:
        self.saved[key] = value


def test_a_replica_past_its_lease_fence_saves_nothing_over_the_new_leaders_state() -> None:
    async def run() -> None:
        store, fenced = Recorded(), [False]
        snapshots = Snapshots(
            store,
            "k",
            actor="a",
            clock=RealClock(),
            metrics=AgentMetrics(),
            interval_s=60.0,
            silenced=lambda: fenced[0],
        )
        assert await snapshots.save(lambda: b"mine")
        fenced[0] = True
        assert not await snapshots.save(lambda: b"stale")
        assert unpack(store.saved["k"]) == b"mine"

    asyncio.run(run())
