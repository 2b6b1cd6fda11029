"""PNG plots of a backtest: demand against capacity by tier, preemptions marked."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers or in CI
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes

from agent.core.capacity import SloConfig, rps_per_instance
from agent.core.catalog import Catalog
from agent.core.demand import Demand
from agent.core.hindsight import HindsightPlan
from agent.sim.replay import StepRecord

_TIER_COLOURS = {"reserved": "#4c72b0", "spot": "#55a868", "ondemand": "#dd8452"}


def capacity_panel(
    ax: Axes, hours: np.ndarray, demand: np.ndarray, tiers: dict[str, np.ndarray], title: str
) -> None:
    """Capacity stacked by tier, demand over it (the backtest's panels and the demo's plot)."""
    ax.stackplot(
        hours,
        *tiers.values(),
        labels=[f"{t} capacity" for t in tiers],
        colors=[_TIER_COLOURS[t] for t in tiers],
        alpha=0.55,
        step="post",
    )
    ax.step(hours, demand, where="post", color="black", linewidth=0.8, label="demand")
    ax.set_title(title)
    ax.set_ylabel("requests/s")
    ax.grid(alpha=0.3)


def plot_backtest(
    path: str | Path,
    catalog: Catalog,
    demand: Sequence[Demand],
    step_s: float,
    slo: SloConfig,
    records: Mapping[str, Sequence[StepRecord]],
    hindsight: HindsightPlan | None,
) -> Path:
    """Write one panel per strategy in ``records`` and one for the hindsight plan."""
    panels = len(records) + (1 if hindsight is not None else 0)
    fig, axes = plt.subplots(
        max(panels, 1), 1, figsize=(14, 3.6 * max(panels, 1)), sharex=True, squeeze=False
    )
    row = 0
    for name, recs in records.items():
        ax = axes[row][0]
        t0 = recs[0].t if recs else 0.0
        hours = np.array([(r.t - t0) / 3600 for r in recs])
        tiers = {t: np.array([r.capacity_rps[t] for r in recs]) for t in ("reserved", "spot", "ondemand")}
        capacity_panel(ax, hours, np.array([r.demand_rps for r in recs]), tiers, name)
        marks = [(h, r.demand_rps) for h, r in zip(hours, recs, strict=True) if r.preempted]
        if marks:
            ax.scatter(*zip(*marks, strict=True), marker="v", color="red", s=18, zorder=3, label="preemption")
        ax.legend(loc="upper right", fontsize=8)
        row += 1
    if hindsight is not None:
        ax = axes[row][0]
        block = len(demand) / max(hindsight.blocks, 1)
        hours = np.arange(hindsight.blocks) * block * step_s / 3600
        types = list(catalog.types.values())
        reserved = np.zeros(hindsight.blocks)
        spot = np.zeros(hindsight.blocks)
        ondemand = np.zeros(hindsight.blocks)
        peaks = []
        for b in range(hindsight.blocks):
            chunk = demand[int(b * block) : int((b + 1) * block)] or [demand[-1]]
            d = max(chunk, key=lambda x: x.rps)
            peaks.append(d.rps)
            for j, t in enumerate(types):
                cap = rps_per_instance(t, d.prompt_tokens, d.output_tokens, slo)
                reserved[b] += cap * hindsight.reserved.get(t.name, 0)
                spot[b] += cap * hindsight.spot[b, j]
                ondemand[b] += cap * hindsight.ondemand[b, j]
        capacity_panel(
            ax,
            hours,
            np.array(peaks),
            {"reserved": reserved, "spot": spot, "ondemand": ondemand},
            "hindsight",
        )
        ax.legend(loc="upper right", fontsize=8)
    axes[-1][0].set_xlabel("hours since scoring started")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
