"""Wire contracts: golden encoded messages (the bytes other programs send and read), forward compatibility,
the constraints the types carry, the envelope helper, and the checked-in JSON Schema files.

The golden byte strings below are written out by hand and must stay literals: a change to a Struct that
changes them breaks every worker, actuator and dashboard already speaking this protocol. Evolve a message by
adding a defaulted field (and a new golden message); a breaking change is a new tag.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any, Union

import msgspec
import pytest

from schemas import (
    MESSAGE_TYPES,
    AllocationPlan,
    Band,
    Block,
    Cancel,
    CostReport,
    CostReportRequest,
    DemandSnapshot,
    DrainOrder,
    ErrorReply,
    HotBlocks,
    HotBlocksQuery,
    InflightList,
    InflightQuery,
    InflightRequest,
    InstanceEvent,
    Message,
    MigrationCounts,
    MigrationReport,
    PreemptionNotice,
    ReceiveBlocks,
    ReplanRequest,
    Reprefill,
    RequestUpdate,
    Requeue,
    Resume,
    RouterAck,
    SpotPrice,
    StatusQuery,
    StopRouting,
    Submit,
    Target,
    TransferKv,
    WorkerAck,
    WorkerLost,
    WorkerMetrics,
    WorkerStatus,
    envelope,
    tag_of,
)
from schemas.jsonschema_files import SCHEMA_DIR, drift, render, schema_documents, write_schemas

ENVELOPE_FIELDS = ("msg_id", "sent_at", "source", "correlation_id")
ANY_MESSAGE: Any = Union[MESSAGE_TYPES]  # noqa: UP007 (a Union of a tuple of types built at run time)
encoder = msgspec.json.Encoder()
any_decoder = msgspec.json.Decoder(ANY_MESSAGE)


# --- golden messages ---------------------------------------------------------------------------------

GOLDEN: list[tuple[bytes, Message]] = [
    (
        b'{"type":"worker.metrics.v1","worker_id":"worker-7","instance_id":"i-0abc123",'
        b'"instance_type":"h100_8x","pool":"us-central1-a","tier":"spot","interval_s":5.0,'
        b'"requests_completed":42,"prompt_tokens":21000,"output_tokens":4200,"in_flight":17,"queued":3,'
        b'"kv_blocks_used":900,"kv_blocks_total":1024,"msg_id":"0b6f6a1e5c2d4e8f9a7b3c1d2e4f6a8b",'
        b'"sent_at":1767225605.0,"source":"worker-7","correlation_id":""}',
        WorkerMetrics(
            msg_id="0b6f6a1e5c2d4e8f9a7b3c1d2e4f6a8b",
            sent_at=1767225605.0,
            source="worker-7",
            worker_id="worker-7",
            instance_id="i-0abc123",
            instance_type="h100_8x",
            pool="us-central1-a",
            tier="spot",
            interval_s=5.0,
            requests_completed=42,
            prompt_tokens=21000,
            output_tokens=4200,
            in_flight=17,
            queued=3,
            kv_blocks_used=900,
            kv_blocks_total=1024,
        ),
    ),
    (
        b'{"type":"spot.price.v1","instance_type":"h100_8x","pool":"us-central1-a","price_hourly":9.83,'
        b'"available":12,"reclaim_per_hour":0.05,"msg_id":"price-0001","sent_at":1767225600.0,'
        b'"source":"price-feed","correlation_id":""}',
        SpotPrice(
            msg_id="price-0001",
            sent_at=1767225600.0,
            source="price-feed",
            instance_type="h100_8x",
            pool="us-central1-a",
            price_hourly=9.83,
            available=12,
            reclaim_per_hour=0.05,
        ),
    ),
    (
        b'{"type":"fleet.instance.v1","instance_id":"i-0abc123","instance_type":"h100_8x",'
        b'"pool":"us-central1-a","tier":"reserved","state":"ready","machine":"","msg_id":"fleet-0001",'
        b'"sent_at":1767225600.5,"source":"actuator","correlation_id":"plan-000041"}',
        InstanceEvent(
            msg_id="fleet-0001",
            sent_at=1767225600.5,
            source="actuator",
            correlation_id="plan-000041",
            instance_id="i-0abc123",
            instance_type="h100_8x",
            pool="us-central1-a",
            tier="reserved",
            state="ready",
        ),
    ),
    (
        b'{"type":"plan.allocation.v1","plan_id":"plan-000042","reason":"preemption",'
        b'"trigger_ids":["notice-17"],"targets":['
        b'{"instance_type":"h100_8x","pool":"us-central1-a","tier":"spot","count":3},'
        b'{"instance_type":"h100_8x","pool":"us-central1-b","tier":"ondemand","count":0}],'
        b'"hourly_cost":67.61,"status":"relaxed","binding":["quota:h100_8x"],"detail":"",'
        b'"demand_now_rps":12.5,"demand_next_rps":15.0,"capacity_now_rps":16.0,"capacity_next_rps":16.0,'
        b'"solve_seconds":0.012,"msg_id":"msg-plan-42","sent_at":1767225660.0,"source":"agent",'
        b'"correlation_id":"notice-17"}',
        AllocationPlan(
            msg_id="msg-plan-42",
            sent_at=1767225660.0,
            source="agent",
            correlation_id="notice-17",
            plan_id="plan-000042",
            reason="preemption",
            trigger_ids=["notice-17"],
            targets=[
                Target(instance_type="h100_8x", pool="us-central1-a", tier="spot", count=3),
                Target(instance_type="h100_8x", pool="us-central1-b", tier="ondemand", count=0),
            ],
            hourly_cost=67.61,
            status="relaxed",
            binding=["quota:h100_8x"],
            detail="",
            demand_now_rps=12.5,
            demand_next_rps=15.0,
            capacity_now_rps=16.0,
            capacity_next_rps=16.0,
            solve_seconds=0.012,
        ),
    ),
    (
        b'{"type":"plan.replan.v1","note":"after deploy","msg_id":"replan-1","sent_at":1767225600.0,'
        b'"source":"operator","correlation_id":""}',
        ReplanRequest(msg_id="replan-1", sent_at=1767225600.0, source="operator", note="after deploy"),
    ),
    (
        b'{"type":"demand.snapshot.v1","bin_start":1767225600.0,"bin_seconds":300.0,"rps":12.5,'
        b'"tokens_per_s":7500.0,"prompt_tokens_mean":500.0,"output_tokens_mean":100.0,"workers":4,'
        b'"reports":240,"in_flight":60,"queued":2,"forecast":{"p50_rps":10.0,"p75_rps":12.0,"p95_rps":18.5},'
        b'"msg_id":"snap-1","sent_at":1767225910.0,"source":"agent","correlation_id":""}',
        DemandSnapshot(
            msg_id="snap-1",
            sent_at=1767225910.0,
            source="agent",
            bin_start=1767225600.0,
            bin_seconds=300.0,
            rps=12.5,
            tokens_per_s=7500.0,
            prompt_tokens_mean=500.0,
            output_tokens_mean=100.0,
            workers=4,
            reports=240,
            in_flight=60,
            queued=2,
            forecast=Band(p50_rps=10.0, p75_rps=12.0, p95_rps=18.5),
        ),
    ),
    (
        b'{"type":"cost.report_request.v1","msg_id":"req-1","sent_at":1767225600.0,"source":"cli",'
        b'"correlation_id":""}',
        CostReportRequest(msg_id="req-1", sent_at=1767225600.0, source="cli"),
    ),
    (
        b'{"type":"cost.report.v1","period_start":1767225600.0,"period_end":1767229200.0,"hours":1.0,'
        b'"total_cost":57.78,"avg_hourly_cost":57.78,"monthly_cost":42179.4,"tokens":28890000.0,'
        b'"requests":57780.0,"cost_per_mtok":2.0,"cost_per_request":0.001,'
        b'"instance_hours":{"reserved":2.0,"spot":2.0,"ondemand":0.0},'
        b'"instance_hours_by_type":{"h100_8x":{"reserved":2.0,"spot":2.0,"ondemand":0.0}},'
        b'"cost_by_tier":{"reserved":38.12,"spot":19.66,"ondemand":0.0},"cost_by_type":{"h100_8x":57.78},'
        b'"spot_fraction":0.5,"ondemand_equivalent_cost":131.08,"savings":73.3,"savings_fraction":0.5592,'
        b'"intervals":60,"fleet_hourly_cost":57.78,"fleet_nodes":{"reserved":2,"spot":2,"ondemand":0},'
        b'"plan_id":"plan-1","plan_hourly_cost":47.95,"plan_nodes":{"reserved":2,"spot":1,"ondemand":0},'
        b'"plan_gap_hourly":9.83,'
        b'"msg_id":"report-1","sent_at":1767229200.0,"source":"agent","correlation_id":"req-1"}',
        CostReport(
            msg_id="report-1",
            sent_at=1767229200.0,
            source="agent",
            correlation_id="req-1",
            period_start=1767225600.0,
            period_end=1767229200.0,
            hours=1.0,
            total_cost=57.78,
            avg_hourly_cost=57.78,
            monthly_cost=42179.4,
            tokens=28890000.0,
            requests=57780.0,
            cost_per_mtok=2.0,
            cost_per_request=0.001,
            instance_hours={"reserved": 2.0, "spot": 2.0, "ondemand": 0.0},
            instance_hours_by_type={"h100_8x": {"reserved": 2.0, "spot": 2.0, "ondemand": 0.0}},
            cost_by_tier={"reserved": 38.12, "spot": 19.66, "ondemand": 0.0},
            cost_by_type={"h100_8x": 57.78},
            spot_fraction=0.5,
            ondemand_equivalent_cost=131.08,
            savings=73.3,
            savings_fraction=0.5592,
            intervals=60,
            fleet_hourly_cost=57.78,
            fleet_nodes={"reserved": 2, "spot": 2, "ondemand": 0},
            plan_id="plan-1",
            plan_hourly_cost=47.95,
            plan_nodes={"reserved": 2, "spot": 1, "ondemand": 0},
            plan_gap_hourly=9.83,
        ),
    ),
    (
        b'{"type":"error.reply.v1","error":"instance_type: \'b200\' is not in catalog \'seed\'",'
        b'"msg_id":"err-1","sent_at":1767225600.0,"source":"agent","correlation_id":"req-2"}',
        ErrorReply(
            msg_id="err-1",
            sent_at=1767225600.0,
            source="agent",
            correlation_id="req-2",
            error="instance_type: 'b200' is not in catalog 'seed'",
        ),
    ),
    (
        b'{"type":"spot.notice.v1","instance_id":"i-0abc123","kind":"terminate","deadline":1767225630.1,'
        b'"provider":"gcp","received_at":1767225600.1,"msg_id":"notice-17","sent_at":1767225600.2,'
        b'"source":"sidecar:i-0abc123","correlation_id":""}',
        PreemptionNotice(
            msg_id="notice-17",
            sent_at=1767225600.2,
            source="sidecar:i-0abc123",
            instance_id="i-0abc123",
            kind="terminate",
            deadline=1767225630.1,
            provider="gcp",
            received_at=1767225600.1,
        ),
    ),
    (
        b'{"type":"spot.drain.v1","instance_id":"i-0abc123","worker_ids":["worker-7"],"deadline":1767225630.1,'
        b'"reason":"notice","msg_id":"drain-17","sent_at":1767225600.25,"source":"agent",'
        b'"correlation_id":"notice-17"}',
        DrainOrder(
            msg_id="drain-17",
            sent_at=1767225600.25,
            source="agent",
            correlation_id="notice-17",
            instance_id="i-0abc123",
            worker_ids=["worker-7"],
            deadline=1767225630.1,
            reason="notice",
        ),
    ),
    (
        b'{"type":"migration.report.v1","instance_id":"i-0abc123","policy":"deadline","reason":"notice",'
        b'"requests":17,"counts":{"finished_in_place":9,"kv_moved":5,"reprefilled":2,"requeued":1,"failed":1,'
        b'"frontend_migrated":0},'
        b'"lost":0,"bytes_moved":4128768000.0,"tokens_recomputed":3150.0,"hot_blocks_moved":100,'
        b'"notice_at":1767225600.25,"first_commands_at":1767225600.31,"completed_at":1767225625.0,'
        b'"deadline":1767225630.1,"interrupted_by":null,"msg_id":"migration-17","sent_at":1767225625.0,'
        b'"source":"agent",'
        b'"correlation_id":"notice-17"}',
        MigrationReport(
            msg_id="migration-17",
            sent_at=1767225625.0,
            source="agent",
            correlation_id="notice-17",
            instance_id="i-0abc123",
            policy="deadline",
            reason="notice",
            requests=17,
            counts=MigrationCounts(finished_in_place=9, kv_moved=5, reprefilled=2, requeued=1, failed=1),
            lost=0,
            bytes_moved=4128768000.0,
            tokens_recomputed=3150.0,
            hot_blocks_moved=100,
            notice_at=1767225600.25,
            first_commands_at=1767225600.31,
            completed_at=1767225625.0,
            deadline=1767225630.1,
        ),
    ),
    (
        b'{"type":"router.stop_routing.v1","worker_id":"worker-7","msg_id":"cmd-stop-1",'
        b'"sent_at":1767225600.26,"source":"agent","correlation_id":""}',
        StopRouting(msg_id="cmd-stop-1", sent_at=1767225600.26, source="agent", worker_id="worker-7"),
    ),
    (
        b'{"type":"router.requeue.v1","request_id":"req-8f3d","worker_id":"worker-7","generated_tokens":120,'
        b'"msg_id":"cmd-requeue-1","sent_at":1767225625.1,"source":"agent","correlation_id":""}',
        Requeue(
            msg_id="cmd-requeue-1",
            sent_at=1767225625.1,
            source="agent",
            request_id="req-8f3d",
            worker_id="worker-7",
            generated_tokens=120,
        ),
    ),
    (
        b'{"type":"router.worker_lost.v1","worker_id":"worker-9","msg_id":"cmd-lost-1","sent_at":1767225645.0,'
        b'"source":"agent","correlation_id":""}',
        WorkerLost(msg_id="cmd-lost-1", sent_at=1767225645.0, source="agent", worker_id="worker-9"),
    ),
    (
        b'{"type":"router.ack.v1","op":"worker_lost","ok":true,"requests":14,"detail":"","msg_id":"ack-1",'
        b'"sent_at":1767225645.01,"source":"router","correlation_id":"cmd-lost-1"}',
        RouterAck(
            msg_id="ack-1",
            sent_at=1767225645.01,
            source="router",
            correlation_id="cmd-lost-1",
            op="worker_lost",
            ok=True,
            requests=14,
            detail="",
        ),
    ),
    (
        b'{"type":"worker.status_query.v1","msg_id":"status-1","sent_at":1767225600.27,"source":"agent",'
        b'"correlation_id":""}',
        StatusQuery(msg_id="status-1", sent_at=1767225600.27, source="agent"),
    ),
    (
        b'{"type":"worker.status.v1","worker_id":"worker-3","instance_id":"i-0def456","instance_type":"h100_8x",'
        b'"accepting":true,"max_batch":256,"active":180,"queued":4,"prefill_tokens_per_s":45000.0,'
        b'"decode_tokens_per_s":9000.0,"cached_blocks":["5f2c9a1e7b3d4c08","c1d2e3f405162738"],'
        b'"msg_id":"status-reply-1","sent_at":1767225600.28,"source":"worker-3","correlation_id":"status-1"}',
        WorkerStatus(
            msg_id="status-reply-1",
            sent_at=1767225600.28,
            source="worker-3",
            correlation_id="status-1",
            worker_id="worker-3",
            instance_id="i-0def456",
            instance_type="h100_8x",
            accepting=True,
            max_batch=256,
            active=180,
            queued=4,
            prefill_tokens_per_s=45000.0,
            decode_tokens_per_s=9000.0,
            cached_blocks=["5f2c9a1e7b3d4c08", "c1d2e3f405162738"],
        ),
    ),
    (
        b'{"type":"worker.inflight_query.v1","msg_id":"inflight-1","sent_at":1767225600.27,"source":"agent",'
        b'"correlation_id":""}',
        InflightQuery(msg_id="inflight-1", sent_at=1767225600.27, source="agent"),
    ),
    (
        b'{"type":"worker.inflight.v1","worker_id":"worker-7","instance_id":"i-0abc123",'
        b'"decode_tokens_per_s":9000.0,"max_batch":256,"requests":['
        b'{"request_id":"req-8f3a","prompt_tokens":2048,"generated_tokens":212,"expected_remaining_tokens":300,'
        b'"kv_bytes":740556800.0,"prefix_blocks":["5f2c9a1e7b3d4c08","c1d2e3f405162738"]},'
        b'{"request_id":"req-8f3b","prompt_tokens":512,"generated_tokens":40,"expected_remaining_tokens":20,'
        b'"kv_bytes":180879360.0,"prefix_blocks":[]}],'
        b'"msg_id":"inflight-reply-1","sent_at":1767225600.29,"source":"worker-7","correlation_id":"inflight-1"}',
        InflightList(
            msg_id="inflight-reply-1",
            sent_at=1767225600.29,
            source="worker-7",
            correlation_id="inflight-1",
            worker_id="worker-7",
            instance_id="i-0abc123",
            decode_tokens_per_s=9000.0,
            max_batch=256,
            requests=[
                InflightRequest(
                    request_id="req-8f3a",
                    prompt_tokens=2048,
                    generated_tokens=212,
                    expected_remaining_tokens=300,
                    kv_bytes=740556800.0,
                    prefix_blocks=["5f2c9a1e7b3d4c08", "c1d2e3f405162738"],
                ),
                InflightRequest(
                    request_id="req-8f3b",
                    prompt_tokens=512,
                    generated_tokens=40,
                    expected_remaining_tokens=20,
                    kv_bytes=180879360.0,
                ),
            ],
        ),
    ),
    (
        b'{"type":"worker.transfer_kv.v1","request_id":"req-8f3a","target_worker_id":"worker-3",'
        b'"target_instance_id":"i-0def456","reply_by":1767225625.1,"msg_id":"transfer-1",'
        b'"sent_at":1767225600.31,"source":"agent","correlation_id":""}',
        TransferKv(
            msg_id="transfer-1",
            sent_at=1767225600.31,
            source="agent",
            request_id="req-8f3a",
            target_worker_id="worker-3",
            target_instance_id="i-0def456",
            reply_by=1767225625.1,
        ),
    ),
    (
        b'{"type":"worker.resume.v1","request_id":"req-8f3a","source_worker_id":"worker-7","prompt_tokens":2048,'
        b'"generated_tokens":215,"expected_remaining_tokens":300,'
        b'"prefix_blocks":["5f2c9a1e7b3d4c08","c1d2e3f405162738"],"msg_id":"resume-1","sent_at":1767225600.56,'
        b'"source":"agent","correlation_id":""}',
        Resume(
            msg_id="resume-1",
            sent_at=1767225600.56,
            source="agent",
            request_id="req-8f3a",
            source_worker_id="worker-7",
            prompt_tokens=2048,
            generated_tokens=215,
            expected_remaining_tokens=300,
            prefix_blocks=["5f2c9a1e7b3d4c08", "c1d2e3f405162738"],
        ),
    ),
    (
        b'{"type":"worker.reprefill.v1","request_id":"req-8f3c","source_worker_id":"worker-7","prompt_tokens":1024,'
        b'"generated_tokens":96,"expected_remaining_tokens":640,"reply_by":1767225630.1,'
        b'"prefix_blocks":["5f2c9a1e7b3d4c08"],"msg_id":"reprefill-1","sent_at":1767225600.33,"source":"agent",'
        b'"correlation_id":""}',
        Reprefill(
            msg_id="reprefill-1",
            sent_at=1767225600.33,
            source="agent",
            request_id="req-8f3c",
            source_worker_id="worker-7",
            prompt_tokens=1024,
            generated_tokens=96,
            expected_remaining_tokens=640,
            reply_by=1767225630.1,
            prefix_blocks=["5f2c9a1e7b3d4c08"],
        ),
    ),
    (
        b'{"type":"worker.cancel.v1","request_id":"req-8f3c","msg_id":"cancel-1","sent_at":1767225600.32,'
        b'"source":"agent","correlation_id":""}',
        Cancel(msg_id="cancel-1", sent_at=1767225600.32, source="agent", request_id="req-8f3c"),
    ),
    (
        b'{"type":"worker.hot_blocks_query.v1","limit":100,"msg_id":"hot-1","sent_at":1767225612.0,'
        b'"source":"agent","correlation_id":""}',
        HotBlocksQuery(msg_id="hot-1", sent_at=1767225612.0, source="agent", limit=100),
    ),
    (
        b'{"type":"worker.hot_blocks.v1","worker_id":"worker-7","blocks":['
        b'{"block_hash":"5f2c9a1e7b3d4c08","size_bytes":5242880.0,"hits":412},'
        b'{"block_hash":"c1d2e3f405162738","size_bytes":5242880.0,"hits":97}],'
        b'"msg_id":"hot-reply-1","sent_at":1767225612.01,"source":"worker-7","correlation_id":"hot-1"}',
        HotBlocks(
            msg_id="hot-reply-1",
            sent_at=1767225612.01,
            source="worker-7",
            correlation_id="hot-1",
            worker_id="worker-7",
            blocks=[
                Block(block_hash="5f2c9a1e7b3d4c08", size_bytes=5242880.0, hits=412),
                Block(block_hash="c1d2e3f405162738", size_bytes=5242880.0, hits=97),
            ],
        ),
    ),
    (
        b'{"type":"worker.receive_blocks.v1","source_worker_id":"worker-7","blocks":['
        b'{"block_hash":"5f2c9a1e7b3d4c08","size_bytes":5242880.0,"hits":412}],"reply_by":1767225630.1,'
        b'"msg_id":"receive-1","sent_at":1767225612.02,"source":"agent","correlation_id":""}',
        ReceiveBlocks(
            msg_id="receive-1",
            sent_at=1767225612.02,
            source="agent",
            source_worker_id="worker-7",
            blocks=[Block(block_hash="5f2c9a1e7b3d4c08", size_bytes=5242880.0, hits=412)],
            reply_by=1767225630.1,
        ),
    ),
    (
        b'{"type":"worker.submit.v1","request_id":"req-8f3d","prompt_tokens":900,"expected_output_tokens":500,'
        b'"already_generated":120,"prefix_blocks":["5f2c9a1e7b3d4c08"],"msg_id":"submit-1",'
        b'"sent_at":1767225625.2,"source":"router","correlation_id":""}',
        Submit(
            msg_id="submit-1",
            sent_at=1767225625.2,
            source="router",
            request_id="req-8f3d",
            prompt_tokens=900,
            expected_output_tokens=500,
            already_generated=120,
            prefix_blocks=["5f2c9a1e7b3d4c08"],
        ),
    ),
    (
        b'{"type":"worker.ack.v1","op":"transfer_kv","request_id":"req-8f3a","ok":true,"generated_tokens":215,'
        b'"bytes_moved":741539840.0,"detail":"","msg_id":"ack-transfer-1","sent_at":1767225600.55,'
        b'"source":"worker-7","correlation_id":"transfer-1"}',
        WorkerAck(
            msg_id="ack-transfer-1",
            sent_at=1767225600.55,
            source="worker-7",
            correlation_id="transfer-1",
            op="transfer_kv",
            request_id="req-8f3a",
            ok=True,
            generated_tokens=215,
            bytes_moved=741539840.0,
            detail="",
        ),
    ),
    (
        b'{"type":"request.update.v1","request_id":"req-8f3a","worker_id":"worker-3","state":"started",'
        b'"generated_tokens":215,"msg_id":"update-1","sent_at":1767225600.57,"source":"worker-3",'
        b'"correlation_id":""}',
        RequestUpdate(
            msg_id="update-1",
            sent_at=1767225600.57,
            source="worker-3",
            request_id="req-8f3a",
            worker_id="worker-3",
            state="started",
            generated_tokens=215,
        ),
    ),
]


@pytest.mark.parametrize(("wire", "message"), GOLDEN, ids=[tag_of(type(m)) for _, m in GOLDEN])
def test_a_golden_message_decodes_to_its_struct(wire: bytes, message: Message) -> None:
    assert msgspec.json.decode(wire, type=type(message)) == message
    assert any_decoder.decode(wire) == message  # the tag alone picks the type


@pytest.mark.parametrize(("wire", "message"), GOLDEN, ids=[tag_of(type(m)) for _, m in GOLDEN])
def test_a_struct_encodes_to_exactly_its_golden_bytes(wire: bytes, message: Message) -> None:
    assert encoder.encode(message) == wire


def test_there_is_a_golden_message_for_every_message_type() -> None:
    assert sorted(tag_of(type(m)) for _, m in GOLDEN) == sorted(tag_of(kind) for kind in MESSAGE_TYPES)


def test_every_tag_names_domain_name_and_version() -> None:
    tags = [tag_of(kind) for kind in MESSAGE_TYPES]

    assert [t for t in tags if not re.fullmatch(r"[a-z_]+\.[a-z_]+\.v[0-9]+", t)] == []
    assert len(set(tags)) == len(tags)


def test_an_older_writer_may_leave_out_defaulted_fields() -> None:
    wire = (
        b'{"type":"worker.metrics.v1","msg_id":"m-1","sent_at":1767225605.0,"source":"worker-7",'
        b'"worker_id":"worker-7","instance_id":"i-1","instance_type":"h100_8x","pool":"us-central1-a",'
        b'"tier":"ondemand","interval_s":5,"requests_completed":0,"prompt_tokens":0,"output_tokens":0}'
    )

    decoded = msgspec.json.decode(wire, type=WorkerMetrics)

    assert (decoded.correlation_id, decoded.in_flight, decoded.queued) == ("", 0, 0)
    assert (decoded.kv_blocks_used, decoded.kv_blocks_total) == (0, 0)
    assert decoded.interval_s == 5.0  # a JSON integer is a fine number of seconds


def test_optional_fields_encode_as_null() -> None:
    price = SpotPrice(
        msg_id="p-1", sent_at=1.0, source="feed", instance_type="h100_8x", pool="z", price_hourly=9.83
    )

    assert encoder.encode(price) == (
        b'{"type":"spot.price.v1","instance_type":"h100_8x","pool":"z","price_hourly":9.83,'
        b'"available":null,"reclaim_per_hour":null,"msg_id":"p-1","sent_at":1.0,"source":"feed",'
        b'"correlation_id":""}'
    )


# --- evolution and tags ------------------------------------------------------------------------------


def with_field(wire: bytes, **extra: object) -> bytes:
    document = json.loads(wire)
    document.update(extra)
    return json.dumps(document).encode()


@pytest.mark.parametrize(("wire", "message"), GOLDEN, ids=[tag_of(type(m)) for _, m in GOLDEN])
def test_unknown_fields_are_ignored_so_older_readers_accept_newer_writers(
    wire: bytes, message: Message
) -> None:
    newer = with_field(wire, added_in_v1_5="anything", nested_extra={"a": [1, 2, 3]})

    assert msgspec.json.decode(newer, type=type(message)) == message
    assert any_decoder.decode(newer) == message


def test_unknown_fields_inside_a_nested_struct_are_ignored_too() -> None:
    wire, plan = GOLDEN[3]
    document = json.loads(wire)
    document["targets"][0]["weight"] = 0.5

    assert msgspec.json.decode(json.dumps(document).encode(), type=AllocationPlan) == plan


@pytest.mark.parametrize(("wire", "message"), GOLDEN, ids=[tag_of(type(m)) for _, m in GOLDEN])
def test_a_message_with_another_types_tag_is_rejected(wire: bytes, message: Message) -> None:
    others = [kind for kind in MESSAGE_TYPES if kind is not type(message)]

    for kind in others:
        with pytest.raises(msgspec.ValidationError, match=r"Invalid value .* at `\$\.type`"):
            msgspec.json.decode(wire, type=kind)


@pytest.mark.parametrize("tag", ["worker.metrics.v2", "worker.metric.v1", "", 1])
def test_an_unknown_tag_is_rejected(tag: object) -> None:
    wire = with_field(GOLDEN[0][0], type=tag)

    with pytest.raises(msgspec.ValidationError, match=r"`\$\.type`"):
        msgspec.json.decode(wire, type=WorkerMetrics)
    with pytest.raises(msgspec.ValidationError, match=r"`\$\.type`"):
        any_decoder.decode(wire)


def test_a_message_without_a_tag_is_rejected_where_the_tag_picks_the_type() -> None:
    document = json.loads(GOLDEN[0][0])
    del document["type"]
    untagged = json.dumps(document).encode()

    with pytest.raises(msgspec.ValidationError, match="missing required field `type`"):
        any_decoder.decode(untagged)
    # Known leniency: msgspec checks the tag of a single Struct type only when it is present, so a decoder
    # for one type (the subject already names it) accepts an untagged message. The JSON Schemas require it.
    assert msgspec.json.decode(untagged, type=WorkerMetrics) == GOLDEN[0][1]


# --- constraints live in the types -------------------------------------------------------------------

WORKER, PRICE, FLEET, PLAN = GOLDEN[0][0], GOLDEN[1][0], GOLDEN[2][0], GOLDEN[3][0]
WIRE: dict[type[Message], bytes] = {type(message): wire for wire, message in GOLDEN}
NOTICE, DRAIN, MIGRATION = WIRE[PreemptionNotice], WIRE[DrainOrder], WIRE[MigrationReport]


def replaced(wire: bytes, path: tuple[str | int, ...], value: object) -> bytes:
    document = json.loads(wire)
    node = document
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return json.dumps(document).encode()


OUT_OF_TYPE: list[tuple[bytes, type[Message], tuple[str | int, ...], object, str]] = [
    (WORKER, WorkerMetrics, ("requests_completed",), -1, "$.requests_completed"),
    (WORKER, WorkerMetrics, ("prompt_tokens",), -5, "$.prompt_tokens"),
    (WORKER, WorkerMetrics, ("queued",), -1, "$.queued"),
    (WORKER, WorkerMetrics, ("interval_s",), 0, "$.interval_s"),
    (WORKER, WorkerMetrics, ("interval_s",), -5.0, "$.interval_s"),
    (WORKER, WorkerMetrics, ("worker_id",), "", "$.worker_id"),
    (WORKER, WorkerMetrics, ("instance_id",), "", "$.instance_id"),
    (WORKER, WorkerMetrics, ("msg_id",), "", "$.msg_id"),
    (WORKER, WorkerMetrics, ("source",), "", "$.source"),
    (WORKER, WorkerMetrics, ("sent_at",), -1.0, "$.sent_at"),
    (WORKER, WorkerMetrics, ("tier",), "preemptible", "$.tier"),
    (WORKER, WorkerMetrics, ("tier",), "Spot", "$.tier"),
    (WORKER, WorkerMetrics, ("requests_completed",), 1.5, "$.requests_completed"),
    (PRICE, SpotPrice, ("price_hourly",), 0, "$.price_hourly"),
    (PRICE, SpotPrice, ("available",), -1, "$.available"),
    (PRICE, SpotPrice, ("reclaim_per_hour",), 1.5, "$.reclaim_per_hour"),
    (FLEET, InstanceEvent, ("state",), "running", "$.state"),
    (FLEET, InstanceEvent, ("tier",), "on-demand", "$.tier"),
    (FLEET, InstanceEvent, ("instance_id",), "", "$.instance_id"),
    (FLEET, InstanceEvent, ("pool",), "x" * 129, "$.pool"),
    (PLAN, AllocationPlan, ("targets", 1, "count"), -1, "$.targets[1].count"),
    (PLAN, AllocationPlan, ("targets", 0, "tier"), "cheap", "$.targets[0].tier"),
    (PLAN, AllocationPlan, ("hourly_cost",), -0.01, "$.hourly_cost"),
    (PLAN, AllocationPlan, ("reason",), "whim", "$.reason"),
    (NOTICE, PreemptionNotice, ("kind",), "preempt", "$.kind"),
    (NOTICE, PreemptionNotice, ("kind",), "Terminate", "$.kind"),
    (NOTICE, PreemptionNotice, ("provider",), "oci", "$.provider"),
    (NOTICE, PreemptionNotice, ("deadline",), -1.0, "$.deadline"),
    (NOTICE, PreemptionNotice, ("deadline",), "2026-01-01T00:00:30Z", "$.deadline"),
    (NOTICE, PreemptionNotice, ("received_at",), -0.5, "$.received_at"),
    (NOTICE, PreemptionNotice, ("instance_id",), "", "$.instance_id"),
    (DRAIN, DrainOrder, ("reason",), "evicted", "$.reason"),
    (DRAIN, DrainOrder, ("worker_ids", 0), "", "$.worker_ids[0]"),
    (DRAIN, DrainOrder, ("worker_ids",), "worker-7", "$.worker_ids"),
    (DRAIN, DrainOrder, ("deadline",), -1.0, "$.deadline"),
    (MIGRATION, MigrationReport, ("requests",), -1, "$.requests"),
    (MIGRATION, MigrationReport, ("counts", "kv_moved"), -1, "$.counts.kv_moved"),
    (MIGRATION, MigrationReport, ("counts", "requeued"), 1.5, "$.counts.requeued"),
    (MIGRATION, MigrationReport, ("lost",), -1, "$.lost"),
    (MIGRATION, MigrationReport, ("bytes_moved",), -1.0, "$.bytes_moved"),
    (MIGRATION, MigrationReport, ("reason",), "preempted", "$.reason"),
    (WIRE[StopRouting], StopRouting, ("worker_id",), "", "$.worker_id"),
    (WIRE[Requeue], Requeue, ("generated_tokens",), -1, "$.generated_tokens"),
    (WIRE[Requeue], Requeue, ("request_id",), "r" * 129, "$.request_id"),
    (WIRE[WorkerLost], WorkerLost, ("worker_id",), "", "$.worker_id"),
    (WIRE[RouterAck], RouterAck, ("requests",), -1, "$.requests"),
    (WIRE[RouterAck], RouterAck, ("ok",), "yes", "$.ok"),
    (WIRE[RouterAck], RouterAck, ("op",), "", "$.op"),
    (WIRE[WorkerStatus], WorkerStatus, ("prefill_tokens_per_s",), 0, "$.prefill_tokens_per_s"),
    (WIRE[WorkerStatus], WorkerStatus, ("decode_tokens_per_s",), -9000.0, "$.decode_tokens_per_s"),
    (WIRE[WorkerStatus], WorkerStatus, ("max_batch",), -1, "$.max_batch"),
    (WIRE[WorkerStatus], WorkerStatus, ("accepting",), 1, "$.accepting"),
    (WIRE[InflightList], InflightList, ("requests", 0, "kv_bytes"), -1.0, "$.requests[0].kv_bytes"),
    (
        WIRE[InflightList],
        InflightList,
        ("requests", 1, "expected_remaining_tokens"),
        1.5,
        "$.requests[1].expected_remaining_tokens",
    ),
    (WIRE[InflightList], InflightList, ("requests", 1, "request_id"), "", "$.requests[1].request_id"),
    (WIRE[TransferKv], TransferKv, ("reply_by",), -1.0, "$.reply_by"),
    (WIRE[TransferKv], TransferKv, ("target_worker_id",), "", "$.target_worker_id"),
    (WIRE[Resume], Resume, ("generated_tokens",), -1, "$.generated_tokens"),
    (WIRE[Reprefill], Reprefill, ("prompt_tokens",), -3, "$.prompt_tokens"),
    (WIRE[Reprefill], Reprefill, ("reply_by",), None, "$.reply_by"),
    (WIRE[Cancel], Cancel, ("request_id",), "", "$.request_id"),
    (WIRE[HotBlocksQuery], HotBlocksQuery, ("limit",), -1, "$.limit"),
    (WIRE[HotBlocks], HotBlocks, ("blocks", 0, "size_bytes"), -1.0, "$.blocks[0].size_bytes"),
    (WIRE[HotBlocks], HotBlocks, ("blocks", 1, "hits"), -1, "$.blocks[1].hits"),
    (WIRE[ReceiveBlocks], ReceiveBlocks, ("blocks", 0, "block_hash"), "", "$.blocks[0].block_hash"),
    (WIRE[Submit], Submit, ("expected_output_tokens",), -1, "$.expected_output_tokens"),
    (WIRE[Submit], Submit, ("already_generated",), -120, "$.already_generated"),
    (WIRE[WorkerAck], WorkerAck, ("bytes_moved",), -1.0, "$.bytes_moved"),
    (WIRE[WorkerAck], WorkerAck, ("generated_tokens",), -1, "$.generated_tokens"),
    (WIRE[RequestUpdate], RequestUpdate, ("state",), "finished", "$.state"),
    (WIRE[RequestUpdate], RequestUpdate, ("generated_tokens",), -1, "$.generated_tokens"),
]


@pytest.mark.parametrize(
    ("wire", "kind", "path", "value", "where"),
    OUT_OF_TYPE,
    ids=[f"{kind.__name__}{where[1:]}={value!r:.12}" for _, kind, _, value, where in OUT_OF_TYPE],
)
def test_a_value_outside_its_type_is_rejected_naming_the_field_path(
    wire: bytes, kind: type[Message], path: tuple[str | int, ...], value: object, where: str
) -> None:
    with pytest.raises(msgspec.ValidationError) as raised:
        msgspec.json.decode(replaced(wire, path, value), type=kind)

    assert str(raised.value).endswith(f"at `{where}`")


@pytest.mark.parametrize("field", ["worker_id", "requests_completed", "tier", "msg_id", "sent_at", "source"])
def test_a_missing_required_field_is_rejected_by_name(field: str) -> None:
    document = json.loads(WORKER)
    del document[field]

    with pytest.raises(msgspec.ValidationError, match=f"missing required field `{field}`"):
        msgspec.json.decode(json.dumps(document).encode(), type=WorkerMetrics)


def test_a_minimal_reply_leaves_out_every_defaulted_field() -> None:
    # What a worker or router adapter must send at the least; everything else has a default.
    worker_ack = msgspec.json.decode(
        b'{"type":"worker.ack.v1","op":"cancel","msg_id":"a-1","sent_at":1767225600.0,"source":"worker-7"}',
        type=WorkerAck,
    )
    router_ack = msgspec.json.decode(
        b'{"type":"router.ack.v1","op":"stop_routing","ok":true,"msg_id":"a-2","sent_at":1767225600.0,'
        b'"source":"router"}',
        type=RouterAck,
    )

    assert (worker_ack.request_id, worker_ack.ok, worker_ack.generated_tokens) == ("", True, 0)
    assert (worker_ack.bytes_moved, worker_ack.detail) == (0.0, "")
    assert (router_ack.requests, router_ack.detail) == (0, "")


def test_a_query_without_a_limit_asks_for_a_hundred_hot_blocks() -> None:
    query = msgspec.json.decode(
        b'{"type":"worker.hot_blocks_query.v1","msg_id":"h-1","sent_at":1767225600.0,"source":"agent"}',
        type=HotBlocksQuery,
    )

    assert query.limit == 100


def test_zero_is_a_valid_count() -> None:
    wire = replaced(replaced(WORKER, ("requests_completed",), 0), ("in_flight",), 0)

    assert msgspec.json.decode(wire, type=WorkerMetrics).requests_completed == 0


# --- the envelope helper -----------------------------------------------------------------------------


def test_envelope_fills_msg_id_sent_at_and_source() -> None:
    before = time.time()
    fields = envelope("agent")
    after = time.time()

    assert set(fields) == set(ENVELOPE_FIELDS)
    assert re.fullmatch(r"[0-9a-f]{32}", fields["msg_id"])
    assert before <= fields["sent_at"] <= after
    assert fields["source"] == "agent"
    assert fields["correlation_id"] == ""


def test_envelope_takes_a_given_time_and_correlation_id() -> None:
    fields = envelope("agent", sent_at=1767225600.0, correlation_id="req-1")

    assert (fields["sent_at"], fields["source"], fields["correlation_id"]) == (1767225600.0, "agent", "req-1")


def test_every_envelope_has_a_fresh_msg_id() -> None:
    assert len({envelope("agent")["msg_id"] for _ in range(100)}) == 100


def test_a_message_built_from_an_envelope_round_trips() -> None:
    request = ReplanRequest(**envelope("operator", sent_at=1_767_225_600.0), note="why not")

    decoded = msgspec.json.decode(encoder.encode(request), type=ReplanRequest)

    assert decoded == request
    assert decoded.source == "operator"


# --- JSON Schema files -------------------------------------------------------------------------------


def test_the_checked_in_json_schemas_match_the_structs() -> None:
    # On failure: run `cost-agent schemas` and commit schemas/jsonschema/.
    assert drift() == []


def _as_older_msgspec_gives_it(node: Any) -> Any:
    """A schema as msgspec before 0.23 gives it (docstrings verbatim, indented) and before 0.22
    (``anyOf`` alternatives in the other order)."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "description" and isinstance(value, str):
                out[key] = value.replace("\n", "\n    ")
            elif key == "anyOf":
                out[key] = [_as_older_msgspec_gives_it(v) for v in reversed(value)]
            else:
                out[key] = _as_older_msgspec_gives_it(value)
        return out
    if isinstance(node, list):
        return [_as_older_msgspec_gives_it(item) for item in node]
    return node


def test_the_schema_files_do_not_depend_on_how_msgspec_formats_docstrings_or_orders_unions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    today = schema_documents()
    real_schema = msgspec.json.schema
    monkeypatch.setattr(msgspec.json, "schema", lambda kind: _as_older_msgspec_gives_it(real_schema(kind)))

    assert schema_documents() == today
    assert drift() == []


def test_a_changed_docstring_is_still_drift(schema_copy: Path) -> None:
    edited = schema_copy / "worker.metrics.v1.json"
    document = json.loads(edited.read_text(encoding="utf-8"))
    definition = document["$defs"]["WorkerMetrics"]
    definition["description"] = definition["description"].replace("per interval", "cumulative")
    edited.write_text(render(document), encoding="utf-8")

    assert drift(schema_copy) == ["worker.metrics.v1.json"]


def test_there_is_one_schema_file_per_message_type() -> None:
    assert sorted(p.name for p in SCHEMA_DIR.glob("*.json")) == sorted(
        f"{tag_of(kind)}.json" for kind in MESSAGE_TYPES
    )


@pytest.fixture
def schema_copy(tmp_path: Path) -> Path:
    directory = tmp_path / "jsonschema"
    shutil.copytree(SCHEMA_DIR, directory)
    assert drift(directory) == []
    return directory


def test_drift_reports_an_edited_file(schema_copy: Path) -> None:
    edited = schema_copy / "spot.price.v1.json"
    document = json.loads(edited.read_text(encoding="utf-8"))
    document["$defs"]["SpotPrice"]["required"].remove("price_hourly")
    edited.write_text(render(document), encoding="utf-8")

    assert drift(schema_copy) == ["spot.price.v1.json"]


def test_drift_reports_a_file_that_differs_only_in_formatting(schema_copy: Path) -> None:
    edited = schema_copy / "plan.replan.v1.json"
    edited.write_text(edited.read_text(encoding="utf-8").rstrip("\n"), encoding="utf-8")

    assert drift(schema_copy) == ["plan.replan.v1.json"]


def test_drift_reports_missing_and_stale_files(schema_copy: Path) -> None:
    (schema_copy / "fleet.instance.v1.json").unlink()
    (schema_copy / "fleet.instance.v0.json").write_text("{}\n", encoding="utf-8")

    assert drift(schema_copy) == ["fleet.instance.v1.json", "fleet.instance.v0.json"]


def test_write_schemas_repairs_drift_and_removes_stale_files(schema_copy: Path) -> None:
    (schema_copy / "error.reply.v1.json").write_text("{}\n", encoding="utf-8")
    (schema_copy / "old.thing.v1.json").write_text("{}\n", encoding="utf-8")

    write_schemas(schema_copy)

    assert drift(schema_copy) == []
    assert not (schema_copy / "old.thing.v1.json").exists()


def message_schema(document: dict[str, Any]) -> dict[str, Any]:
    """The object schema of the message itself (the document is a ``$ref`` into ``$defs``)."""
    name = document["$ref"].removeprefix("#/$defs/")
    schema: dict[str, Any] = document["$defs"][name]
    return schema


SCHEMA_FILES = sorted(SCHEMA_DIR.glob("*.json"))


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.name)
def test_every_schema_file_requires_the_tag_and_the_envelope(path: Path) -> None:
    document = json.loads(path.read_text(encoding="utf-8"))
    schema = message_schema(document)

    assert document["title"] == path.name.removesuffix(".json")
    assert schema["properties"]["type"] == {"enum": [document["title"]]}
    assert {"type", "msg_id", "sent_at", "source"} <= set(schema["required"])
    # correlation_id is part of every envelope but defaults to "" (a message that answers nothing).
    correlation_id = {k: v for k, v in schema["properties"]["correlation_id"].items() if k != "description"}
    assert correlation_id == {"default": "", "type": "string", "maxLength": 256}
    assert set(ENVELOPE_FIELDS) <= set(schema["properties"])


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.name)
def test_no_schema_forbids_unknown_fields(path: Path) -> None:
    document = json.loads(path.read_text(encoding="utf-8"))

    for name, schema in document["$defs"].items():
        assert schema.get("additionalProperties", True) is not False, name


def test_schema_documents_cover_every_message_type() -> None:
    assert set(schema_documents()) == {f"{tag_of(kind)}.json" for kind in MESSAGE_TYPES}
