"""``cost-agent run`` as a user runs it: a real process, its embedded nats-server, messages built from the
published JSON Schemas, garbage on every subject it listens to, and SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import nats
import pytest
from cli import ROOT, LoggedProcess, run_cost_agent

from agent.bus import settle

SCHEMAS = ROOT / "schemas" / "jsonschema"


def from_schema(tag: str, **fields: Any) -> bytes:
    """A message as a worker in any language would build it: from the published schema file, validated."""
    schema = json.loads((SCHEMAS / f"{tag}.json").read_text())
    message = {
        "type": tag,
        "msg_id": uuid.uuid4().hex,
        "sent_at": time.time(),
        "source": "e2e",
        **fields,
    }
    jsonschema.validate(message, schema)
    return json.dumps(message).encode()


def check(tag: str, data: bytes) -> dict[str, Any]:
    """Decode what the agent sent and hold it to its published schema."""
    message = json.loads(data)
    assert message["type"] == tag
    jsonschema.validate(message, json.loads((SCHEMAS / f"{tag}.json").read_text()))
    return message  # type: ignore[no-any-return]


def worker_report(w: int) -> bytes:
    """Worker ``worker-{w}`` on an on-demand h100_8x node: 40 requests (1,500 tokens in, 500 out) in 5 s."""
    return from_schema(
        "worker.metrics.v1",
        worker_id=f"worker-{w}",
        instance_id=f"i-{w}",
        instance_type="h100_8x",
        pool="default",
        tier="ondemand",
        interval_s=5.0,
        requests_completed=40,
        prompt_tokens=40 * 1500,
        output_tokens=40 * 500,
        in_flight=12,
        queued=0,
        kv_blocks_used=9000,
        kv_blocks_total=16000,
    )


def reserved_node_ready() -> bytes:
    """Reserved node ``r-1`` (h100_8x) ready."""
    return from_schema(
        "fleet.instance.v1",
        instance_id="r-1",
        instance_type="h100_8x",
        pool="default",
        tier="reserved",
        state="ready",
    )


@pytest.fixture
async def agent_process() -> AsyncIterator[tuple[LoggedProcess, str]]:
    ns = f"e2e{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COST_AGENT_", "NATS_URL"))}
    env |= {"COST_AGENT_METRICS__PORT": "0", "COST_AGENT_BUS__NAMESPACE": ns}
    script = Path(sys.executable).parent / "cost-agent"
    proc = await asyncio.create_subprocess_exec(
        str(script),
        "run",
        "--log-format",
        "json",
        cwd=ROOT,
        env=env,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # so that a failed test can kill the agent and its nats-server together
    )
    agent = LoggedProcess(proc)
    try:
        await agent.wait_logged("agent_started", timeout_s=30)
        yield agent, ns
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await agent.finish()


def scrape(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


async def test_the_agent_plans_reports_survives_garbage_and_stops_cleanly_on_sigterm(
    agent_process: tuple[LoggedProcess, str],
) -> None:
    agent, ns = agent_process
    url = agent.event("nats_embedded")["url"]
    port = agent.event("metrics_serving")["port"]
    nc = await nats.connect(url)
    plans = await nc.subscribe(f"{ns}.evt.plan.allocation")
    await settle(nc)

    for w in range(4):
        await nc.publish(f"{ns}.evt.worker.metrics.worker-{w}", worker_report(w))
    await nc.publish(f"{ns}.evt.fleet.instance.r-1", reserved_node_ready())
    await nc.publish(
        f"{ns}.evt.spot.price.default",
        from_schema("spot.price.v1", instance_type="a100_8x", pool="default", price_hourly=5.9, available=8),
    )
    tick = from_schema("plan.replan.v1", note="e2e")
    await nc.publish(f"{ns}.cmd.plan.tick", tick)

    plan = check("plan.allocation.v1", (await plans.next_msg(timeout=10)).data)
    assert plan["reason"] == "manual"
    assert plan["trigger_ids"] == [json.loads(tick)["msg_id"]]
    assert plan["demand_now_rps"] == pytest.approx(4 * 40 / 5)
    assert {"instance_type": "h100_8x", "pool": "default", "tier": "reserved", "count": 1} in plan["targets"]

    reply = await nc.request(f"{ns}.req.cost.report", from_schema("cost.report_request.v1"), timeout=5)
    report = check("cost.report.v1", reply.data)
    assert report["tokens"] == 4 * 40 * 2000
    assert report["instance_hours"]["reserved"] > 0

    # Garbage on every subject the agent listens to; the request gets an error reply, not silence.
    garbage = [b"", b"\xff\xfe", b"[]", b'{"type": "worker.metrics.v1", "interval_s": -5}', b"null"]
    subjects = [
        f"{ns}.evt.worker.metrics.worker-0",
        f"{ns}.evt.spot.price.default",
        f"{ns}.evt.fleet.instance.r-1",
        f"{ns}.cmd.plan.tick",
        f"{ns}.evt.spot.notice.r-1",
        f"{ns}.evt.spot.drain.r-1",
    ]
    for subject in subjects:
        for data in garbage:
            await nc.publish(subject, data)
    error = check("error.reply.v1", (await nc.request(f"{ns}.req.cost.report", b"{oops", timeout=5)).data)
    assert "cost.report_request.v1" in error["error"]

    # Still alive: a second request is planned for.
    await nc.publish(f"{ns}.cmd.plan.tick", from_schema("plan.replan.v1"))
    assert check("plan.allocation.v1", (await plans.next_msg(timeout=10)).data)["reason"] == "manual"

    status, body = scrape(port, "/healthz")
    assert status == 200
    assert json.loads(body)["status"] == "ok"
    status, metrics = scrape(port, "/metrics")
    assert status == 200
    rejected = {
        line.split("{", 1)[1].split("}", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("costagent_messages_rejected_total{")
    }
    patterns = (
        "evt.worker.metrics.*",
        "evt.spot.price.*",
        "evt.fleet.instance.*",
        "cmd.plan.tick",
        "req.cost.report",
        "evt.spot.notice.*",
        "evt.spot.drain.*",
    )
    for pattern in patterns:
        assert sum(n for labels, n in rejected.items() if f'subject="{pattern}"' in labels) >= 1, pattern
    assert "costagent_optimizer_solve_seconds_count 2.0" in metrics
    assert 'costagent_planned_instances{tier="reserved"} 1.0' in metrics
    await nc.close()

    agent.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(agent.finish(), timeout=10) == 0
    assert agent.event("agent_stopped")["exit_code"] == 0
    bad = [e for e in agent.events if e.get("event") == "bad_message"]
    assert bad
    assert all(e["level"] == "warning" and e["subject"] for e in bad)
    assert len(bad) == len(
        {(e["subject"].split(".", 3)[-1].rsplit(".", 1)[0], e["reason"], e["error"]) for e in bad}
    )


def test_a_bad_config_file_stops_start_up_with_one_line_naming_the_field(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("[optimizer]\ninterval_seconds = -5\n")
    result = run_cost_agent("run", "--config", str(config), timeout_s=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "optimizer.interval_seconds" in lines[0]


def test_an_unreachable_nats_server_stops_start_up_with_one_line() -> None:
    result = run_cost_agent("run", "--nats-url", "nats://127.0.0.1:1", timeout_s=60)
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("cost-agent: cannot connect to NATS at nats://127.0.0.1:1")
    )


def test_the_checked_in_json_schemas_match_the_message_structs() -> None:
    result = run_cost_agent("schemas", "--check", timeout_s=60)
    assert result.returncode == 0, result.stderr
