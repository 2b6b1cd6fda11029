"""The optimizer tick on a real nats-server: what triggers a plan, what a plan holds, what it never does."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from harness import START, Inbox, Peer, eventually, handled, rejected, start_agent, stop_agent

from agent.config import DynamoSettings, OptimizerSettings, Settings
from agent.service import Agent
from schemas import AllocationPlan, InstanceEvent, ReplanRequest, SpotPrice, WorkerMetrics


async def report_demand(peer: Peer, rps_per_worker: float = 10.0, workers: int = 3) -> None:
    """Workers report a steady load: 1,500 prompt and 500 output tokens a request."""
    for w in range(workers):
        requests = int(rps_per_worker * 5)
        await peer.send(
            peer.subjects.worker_metrics(f"w{w}"),
            WorkerMetrics(
                **peer.env(f"w{w}"),
                worker_id=f"w{w}",
                instance_id=f"i{w}",
                instance_type="h100_8x",
                pool="default",
                tier="ondemand",
                interval_s=5.0,
                requests_completed=requests,
                prompt_tokens=requests * 1500,
                output_tokens=requests * 500,
            ),
        )


async def replan(peer: Peer, msg_id: str | None = None) -> ReplanRequest:
    env = peer.env("operator")
    if msg_id is not None:
        env["msg_id"] = msg_id
    request = ReplanRequest(**env, note="test")
    await peer.send(peer.subjects.plan_tick, request)
    return request


async def planned_for(
    agent: Agent, peer: Peer, rps_per_worker: float = 10.0
) -> tuple[Inbox[AllocationPlan], AllocationPlan]:
    """Three workers report a load, the profiler takes it in, and a requested plan answers it."""
    plans = await Inbox.open(peer.nc, peer.subjects.plan_allocation, AllocationPlan)
    await report_demand(peer, rps_per_worker=rps_per_worker, workers=3)
    await handled(agent, "demand_profiler", "evt.worker.metrics.*", 3)
    await replan(peer)
    return plans, await plans.next()


async def instance(
    peer: Peer, instance_id: str, state: str, type_: str, pool: str, tier: str
) -> InstanceEvent:
    event = InstanceEvent(
        **peer.env("actuator"),
        instance_id=instance_id,
        instance_type=type_,
        pool=pool,
        tier=tier,  # type: ignore[arg-type]
        state=state,  # type: ignore[arg-type]
    )
    await peer.send(peer.subjects.fleet_instance(instance_id), event)
    return event


async def test_a_replan_request_gets_a_plan_for_the_observed_demand(running: tuple[Agent, Peer]) -> None:
    agent, peer = running
    plans = await Inbox.open(peer.nc, peer.subjects.plan_allocation, AllocationPlan)
    await report_demand(peer, rps_per_worker=10.0, workers=3)
    await handled(agent, "demand_profiler", "evt.worker.metrics.*", 3)
    request = await replan(peer)

    plan = await plans.next()
    assert plan.reason == "manual"
    assert plan.trigger_ids == [request.msg_id]
    assert plan.correlation_id == request.msg_id
    assert plan.demand_now_rps == 30.0
    assert plan.capacity_now_rps >= plan.demand_now_rps
    # Every (type, pool) appears for spot and on-demand, zeros included, so an actuator can converge.
    keys = {(t.instance_type, t.pool, t.tier) for t in plan.targets}
    assert {
        (name, pool, tier) for name, pool in agent.optimizer.catalog.pools() for tier in ("spot", "ondemand")
    } <= keys
    assert sum(t.count for t in plan.targets if t.tier == "ondemand") >= 1  # never an all-spot fleet
    assert plan.hourly_cost > 0


async def test_the_same_request_delivered_twice_is_planned_for_once(running: tuple[Agent, Peer]) -> None:
    agent, peer = running
    plans = await Inbox.open(peer.nc, peer.subjects.plan_allocation, AllocationPlan)
    first = await replan(peer, msg_id="request-1")
    await replan(peer, msg_id="request-1")
    second = await replan(peer, msg_id="request-2")

    assert (await plans.next()).trigger_ids == [first.msg_id]
    # The next plan answers the second request: the repeat of the first produced nothing.
    assert (await plans.next()).trigger_ids == [second.msg_id]
    assert agent.optimizer.plans == 2


async def test_the_timer_plans_every_interval_of_the_agents_clock(running: tuple[Agent, Peer]) -> None:
    agent, peer = running
    plans = await Inbox.open(peer.nc, peer.subjects.plan_allocation, AllocationPlan)
    peer.clock.advance(agent.optimizer.settings.interval_seconds)
    plan = await plans.next()
    assert plan.reason == "tick"
    assert plan.trigger_ids[0].startswith("tick-")
    assert plan.sent_at == START + 300


async def test_losing_a_planned_node_triggers_a_plan_but_the_plans_own_changes_do_not(
    running: tuple[Agent, Peer],
) -> None:
    agent, peer = running
    plans, plan = await planned_for(agent, peer, 10.0)

    # The actuator brings the fleet to the plan, plus one spare spot node it then scales down.
    wanted = [t for t in plan.targets if t.count > 0 and t.tier == "spot"]
    assert wanted, "the plan should use spot for this demand"
    launched = 0
    for target in plan.targets:
        for k in range(target.count):
            iid = f"{target.instance_type}-{target.pool}-{target.tier}-{k}"
            await instance(peer, iid, "launched", target.instance_type, target.pool, target.tier)
            await instance(peer, iid, "ready", target.instance_type, target.pool, target.tier)
            launched += 2
    spare = wanted[0]
    await instance(peer, "spare", "launched", spare.instance_type, spare.pool, "spot")
    await instance(peer, "spare", "terminated", spare.instance_type, spare.pool, "spot")
    await handled(agent, "optimizer_tick", "evt.fleet.instance.*", launched + 2)

    # A planned spot node is reclaimed: the fleet is now below the plan.
    lost = await instance(
        peer,
        f"{spare.instance_type}-{spare.pool}-spot-0",
        "terminated",
        spare.instance_type,
        spare.pool,
        "spot",
    )
    replacement = await plans.next()
    assert replacement.reason == "fleet"
    assert replacement.trigger_ids == [lost.msg_id]
    assert agent.optimizer.plans == 2  # the launches and the spare's scale-down planned nothing


async def test_a_spot_quote_changes_the_plan_and_a_stale_one_is_ignored(running: tuple[Agent, Peer]) -> None:
    agent, peer = running
    plans = await Inbox.open(peer.nc, peer.subjects.plan_allocation, AllocationPlan)
    # Demand two on-demand nodes cover, within the +2 step limit: the price alone decides the tier.
    await report_demand(peer, rps_per_worker=5.0, workers=3)
    await handled(agent, "demand_profiler", "evt.worker.metrics.*", 3)
    # Spot dearer than on-demand for both types: the plan should hold no spot at all.
    for name, price in (("h100_8x", 40.0), ("a100_8x", 30.0)):
        await peer.send(
            peer.subjects.spot_price("default"),
            SpotPrice(**peer.env("feed"), instance_type=name, pool="default", price_hourly=price),
        )
    await handled(agent, "optimizer_tick", "evt.spot.price.*", 2)
    await replan(peer)
    assert sum(t.count for t in (await plans.next()).targets if t.tier == "spot") == 0

    # Half an hour and a second later the quotes are too old to trust: the catalog's prices apply again.
    peer.clock.advance(agent.optimizer.settings.spot_price_max_age_seconds + 1)
    await plans.next()  # the timer's ticks in between
    request = await replan(peer)
    # Wait for the plan that answers the request: it may be a preemption plan (the workers fell silent
    # over the half hour) that took the request along, so its reason need not be "manual".
    plan = await plans.next()
    while request.msg_id not in plan.trigger_ids:
        plan = await plans.next()
    assert agent.optimizer.market(peer.clock.now()).price == {}


async def test_an_event_for_an_unknown_instance_type_is_refused_and_counted(
    running: tuple[Agent, Peer],
) -> None:
    agent, peer = running
    await instance(peer, "x1", "launched", "tpu_v9", "default", "spot")
    await rejected(agent, "optimizer_tick", "evt.fleet.instance.*", "invalid", 1)
    assert len(agent.optimizer.fleet) == 0
    # The actor is still there and still plans.
    plans = await Inbox.open(peer.nc, peer.subjects.plan_allocation, AllocationPlan)
    await replan(peer)
    assert (await plans.next()).reason == "manual"


async def test_a_node_lost_through_draining_then_terminated_is_planned_for_once(
    running: tuple[Agent, Peer],
) -> None:
    agent, peer = running
    plans, plan = await planned_for(agent, peer, 10.0)
    spot = next(t for t in plan.targets if t.tier == "spot" and t.count > 0)
    sent = 0
    for k in range(spot.count):
        await instance(peer, f"s{k}", "ready", spot.instance_type, spot.pool, "spot")
        sent += 1
    await handled(agent, "optimizer_tick", "evt.fleet.instance.*", sent)

    draining = await instance(peer, "s0", "draining", spot.instance_type, spot.pool, "spot")
    await instance(peer, "s0", "terminated", spot.instance_type, spot.pool, "spot")
    await handled(agent, "optimizer_tick", "evt.fleet.instance.*", sent + 2)
    request = await replan(peer)
    assert (await plans.next()).trigger_ids == [draining.msg_id]
    assert (await plans.next()).trigger_ids == [request.msg_id]


# With worker reports alone, "auto" leaves the surge check and the hour's peak off; numbers turn them on.
SURGE = Settings(optimizer=OptimizerSettings(surge_check_seconds=30.0, base_window_seconds=3600.0))


@pytest.fixture
async def surging(nats_url: str) -> AsyncIterator[tuple[Agent, Peer]]:
    agent, peer = await start_agent(nats_url, SURGE)
    try:
        yield agent, peer
    finally:
        await stop_agent(agent, peer)


async def test_demand_above_what_the_last_plan_covered_is_planned_for_before_the_next_tick(
    surging: tuple[Agent, Peer],
) -> None:
    agent, peer = surging
    plans, plan = await planned_for(agent, peer, 10.0)
    assert plan.demand_now_rps == 30.0

    await report_demand(peer, rps_per_worker=20.0, workers=3)
    await handled(agent, "demand_profiler", "evt.worker.metrics.*", 6)
    peer.clock.advance(agent.optimizer.policy.surge_check_s)
    plan = await plans.next()
    assert plan.reason == "demand"
    assert plan.trigger_ids[0].startswith("demand-")
    assert plan.demand_now_rps == 60.0
    assert plan.sent_at < START + agent.optimizer.settings.interval_seconds  # not the tick


async def test_a_steady_demand_between_ticks_triggers_no_plan(surging: tuple[Agent, Peer]) -> None:
    agent, peer = surging
    plans, _ = await planned_for(agent, peer, 10.0)
    # Workers keep reporting the same load at their 5 s interval (none falls silent) up to the tick.
    for _ in range(round(agent.optimizer.settings.interval_seconds / 5)):
        peer.clock.advance(5)
        await report_demand(peer, rps_per_worker=10.0, workers=3)
    assert (await plans.next()).reason == "tick"  # the first plan after the request is the timer's


async def test_a_plan_keeps_covering_the_busiest_demand_of_the_last_hour(surging: tuple[Agent, Peer]) -> None:
    agent, peer = surging
    plans, plan = await planned_for(agent, peer, 20.0)
    assert plan.demand_now_rps == 60.0

    peer.clock.advance(60)
    await report_demand(peer, rps_per_worker=10.0, workers=3)  # traffic halves
    await handled(agent, "demand_profiler", "evt.worker.metrics.*", 6)
    await replan(peer)
    assert (await plans.next()).demand_now_rps == 60.0  # the hour's peak, not the last report


# -- arrivals (a Dynamo frontend's request counter) against completions (workers' own reports) -----------


class Frontend:
    """A Dynamo frontend's ``/metrics`` over real HTTP, with the series the agent reads named and typed as
    Dynamo 1.6.1 writes them (``tests/data/dynamo/frontend-metrics.txt``): the arrival counter and the
    token histograms, 1,500 prompt and 500 output tokens a request. The test adds the arrivals."""

    def __init__(self) -> None:
        self.arrivals = 0

    def text(self) -> str:
        n = self.arrivals
        lines = [
            "# TYPE dynamo_frontend_requests_started_total counter",
            'dynamo_frontend_requests_started_total{endpoint="chat_completions",model="tiny",'
            f'request_type="stream"}} {n}',
        ]
        for name, tokens in (("input", 1500), ("output", 500)):
            series = f"dynamo_frontend_{name}_sequence_tokens"
            lines += [
                f"# TYPE {series} histogram",
                f'{series}_bucket{{model="tiny",le="+Inf"}} {n}',
                f'{series}_sum{{model="tiny"}} {n * tokens}',
                f'{series}_count{{model="tiny"}} {n}',
            ]
        return "\n".join(lines) + "\n"

    async def metrics(self, _request: web.Request) -> web.Response:
        return web.Response(text=self.text(), content_type="text/plain")


@pytest.fixture
async def arriving(nats_url: str) -> AsyncIterator[tuple[Agent, Peer, Frontend]]:
    """An agent with its default optimizer settings whose demand comes from one frontend's arrivals."""
    frontend = Frontend()
    app = web.Application()
    app.router.add_get("/metrics", frontend.metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    settings = Settings(dynamo=DynamoSettings(frontend_urls=[f"http://127.0.0.1:{port}"]))
    agent, peer = await start_agent(nats_url, settings)
    try:
        yield agent, peer, frontend
    finally:
        await stop_agent(agent, peer)
        await runner.cleanup()


async def step(agent: Agent, peer: Peer, seconds: float) -> None:
    """Move the clock on and wait until the optimizer's timer (and the frontend's scrape) have run."""
    timers = [a for a in (agent.optimizer, agent.dynamo_source) if a is not None]
    before = [a.ticks for a in timers]
    peer.clock.advance(seconds)
    await eventually(lambda: all(a.ticks > n for a, n in zip(timers, before, strict=True)))


async def arrive(
    agent: Agent, peer: Peer, frontend: Frontend, rps: float, seconds: float, every: float = 5.0
) -> None:
    """Requests arrive at the frontend at ``rps`` for ``seconds``; it is scraped every ``every`` seconds."""
    for _ in range(round(seconds / every)):
        frontend.arrivals += round(rps * every)
        await step(agent, peer, every)


async def completions(agent: Agent, peer: Peer, rps: float, seconds: float) -> None:
    """Three workers report ``rps`` completions in all (a multiple of 0.6: whole requests), every 5 s."""
    for _ in range(round(seconds / 5)):
        await step(agent, peer, 5)
        await report_demand(peer, rps_per_worker=rps / 3, workers=3)


async def next_manual(plans: Inbox[AllocationPlan], seen: list[AllocationPlan]) -> AllocationPlan:
    """The next plan answering a replan request; the timer's and the surge's on the way go to ``seen``."""
    plan = await plans.next()
    while plan.reason != "manual":
        seen.append(plan)
        plan = await plans.next()
    return plan


async def test_a_frontends_arrivals_are_read_as_the_backtests_rolling_policy_reads_demand(
    arriving: tuple[Agent, Peer, Frontend],
) -> None:
    agent, peer, frontend = arriving
    plans = await Inbox.open(peer.nc, peer.subjects.plan_allocation, AllocationPlan)
    others: list[AllocationPlan] = []
    await arrive(agent, peer, frontend, rps=12.0, seconds=120)
    await replan(peer)
    plan = await next_manual(plans, others)
    assert plan.demand_now_rps == pytest.approx(12.0)
    assert "arrivals: peak of 600 s, surge check 60 s, mean of 60 s" in plan.detail

    # A burst: planned for at the next surge check (each minute, the rolling policy's step), not the tick.
    burst = peer.clock.now()
    await arrive(agent, peer, frontend, rps=48.0, seconds=120)
    surge = await plans.next()
    assert surge.reason == "demand"
    assert surge.demand_now_rps > 12.0
    assert surge.sent_at - burst <= agent.optimizer.policy.surge_check_s == 60.0
    assert surge.sent_at < START + agent.optimizer.settings.interval_seconds  # before the first tick

    # The burst ends: the plans keep covering its minute for the base window (ten minutes), through the
    # timer's ticks.
    await arrive(agent, peer, frontend, rps=12.0, seconds=300)
    await replan(peer)
    held = await next_manual(plans, others)
    assert held.demand_now_rps == pytest.approx(48.0)
    assert [p.reason for p in others].count("tick") == 1  # at 300 s
    assert all(p.demand_now_rps == pytest.approx(48.0) for p in others if p.reason == "tick")

    # Ten minutes after the burst the quiet traffic is what is covered again.
    await arrive(agent, peer, frontend, rps=12.0, seconds=600, every=60.0)
    await replan(peer)
    later = await next_manual(plans, others)
    assert later.demand_now_rps < 24.0


async def test_worker_reports_alone_keep_the_latest_observation_and_no_surge_check(
    running: tuple[Agent, Peer],
) -> None:
    agent, peer = running
    plans = await Inbox.open(peer.nc, peer.subjects.plan_allocation, AllocationPlan)
    others: list[AllocationPlan] = []
    await completions(agent, peer, rps=12.0, seconds=120)
    await replan(peer)
    plan = await next_manual(plans, others)
    assert plan.demand_now_rps == pytest.approx(12.0)
    assert "completions: the latest observation" in plan.detail

    # The same burst, as completions: nothing is planned until the tick, and nothing is held after it.
    await completions(agent, peer, rps=48.0, seconds=120)
    await completions(agent, peer, rps=12.0, seconds=600)
    await replan(peer)
    latest = await next_manual(plans, others)
    # The latest report, or the profile's P75 of the bins so far where it is higher: not the burst's peak.
    assert 12.0 <= latest.demand_now_rps < 48.0 / 2
    assert [p.reason for p in others] == ["tick", "tick"]
