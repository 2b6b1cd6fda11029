"""The demo's live view (rich): demand against capacity, the fleet by tier, cost so far, preemptions."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table


class LiveView:
    def __init__(self) -> None:
        self._live = Live(refresh_per_second=2, transient=False)

    def start(self) -> None:
        self._live.start()

    def stop(self) -> None:
        self._live.stop()

    def update(self, state: dict[str, Any]) -> None:
        self._live.update(render(state))


def render(state: dict[str, Any]) -> Panel:
    hour, total = state["hour"], state["duration_h"]
    top = Table.grid(padding=(0, 3))
    top.add_row(
        f"[bold]hour[/] {hour:5.1f} / {total:g}",
        f"[bold]demand[/] {state['demand_rps']:7.1f} rps",
        f"[bold]capacity[/] {state['capacity_rps']:7.1f} rps",
        f"[bold]cost so far[/] ${state['cost']:,.2f}",
    )
    fleet = Table(title="fleet", show_edge=False)
    for column in ("reserved", "spot", "ondemand", "booting", "draining"):
        fleet.add_column(column, justify="right")
    fleet.add_row(*(str(state["fleet"][c]) for c in ("reserved", "spot", "ondemand", "booting", "draining")))
    # "moved": off a reclaimed node before its deadline, by the migration reports; the rest: the router.
    requests = Table(title="requests (router's count)", show_edge=False)
    for column in ("served", "in flight", "moved", "requeued", "lost", "plans", "preemptions"):
        requests.add_column(column, justify="right")
    requests.add_row(
        f"{state['served']:,}",
        f"{state['in_flight']:,}",
        f"{state['moved']:,}",
        f"{state['requeued']:,}",
        f"[{'red' if state['lost'] else 'green'}]{state['lost']:,}[/]",
        str(state["plans"]),
        str(state["preemptions"]),
    )
    spot = Table(title="spot market (price $/h, nodes available)", show_edge=False)
    quotes = state.get("spot", {})
    for pool in quotes:
        spot.add_column(pool, justify="right")
    if quotes:
        spot.add_row(*(f"${price:.2f} · {'-' if n is None else n}" for price, n in quotes.values()))
    parts: list[Any] = [ProgressBar(total=total, completed=min(hour, total)), top, fleet, requests, spot]
    last = state.get("last_migration")
    if last:
        parts.append(
            f"last preemption: {last['instance']}: {last['requests']} in flight → "
            f"{last['finished']} finished in place, {last['moved']} KV-moved, "
            f"{last['reprefilled']} re-prefilled, {last['requeued']} requeued, {last['lost']} lost"
        )
    return Panel(Group(*parts), title="cost-agent demo")
