"""What SLO attainment demand alone allows a policy that reacts to it: no spot, no forecast.

Capacity at each step is ``ceil(h × peak of the demand over the last W steps)`` main-type nodes, as
measured one boot earlier (re-planned every step, every node reliable). Whatever such a fleet misses,
no reactive policy on real nodes with that boot time can serve; the hindsight optimum, which boots
instantly and knows the demand, misses nothing. Prints JSON: per base window W and headroom h, the SLO
attainment (token share served) and the mean nodes held, against the mean nodes demand needs.

    .venv/bin/python bench/reactive_floor.py [--trace servegen:m-large] [--boot 360]
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np

from agent.backtest import build_setup, sim_config
from agent.config import Settings, resolve_catalog
from agent.core.capacity import rps_per_instance
from agent.core.recent_peak import recent_peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trace", default="servegen:m-large")
    parser.add_argument("--catalog", default="seed")
    parser.add_argument("--peak-nodes", type=int, default=8)
    parser.add_argument("--boot", type=float, default=360.0)
    args = parser.parse_args()
    settings = Settings()
    sim = sim_config(settings, step_s=60.0, notice_s=120.0, boot_s=args.boot, warmup_days=7.0)
    setup = build_setup(
        resolve_catalog(args.catalog),
        args.trace,
        "skypilot:availability/16-node/aws-08-27-2023",
        sim,
        peak=args.peak_nodes,
    )
    main_type = setup.catalog.main_type
    per_node = [rps_per_instance(main_type, d.prompt_tokens, d.output_tokens, sim.slo) for d in setup.demand]
    nodes = np.array([d.rps / c if d.rps > 0 else 0.0 for d, c in zip(setup.demand, per_node, strict=True)])
    tokens = np.array([d.rps * (d.prompt_tokens + d.output_tokens) for d in setup.demand])
    start, boot = setup.warmup_steps, max(1, math.ceil(args.boot / sim.step_s))
    scored = slice(start, len(nodes))
    rows = []
    for window in (1, 30, 60):
        peak = recent_peak(nodes, window)
        for headroom in (1.0, 1.2, 1.4, 1.6, 1.8, 2.0):
            held = np.ceil(headroom * peak[start - boot : len(nodes) - boot] - 1e-9)
            need = nodes[scored]
            served = np.where(need > 0, np.minimum(held, need) / np.where(need > 0, need, 1.0), 1.0)
            attainment = float((served * tokens[scored]).sum() / tokens[scored].sum())
            rows.append(
                {
                    "base_window_min": window * sim.step_s / 60,
                    "headroom": headroom,
                    "slo_attainment": round(attainment, 6),
                    "mean_nodes_held": round(float(held.mean()), 3),
                }
            )
    print(
        json.dumps(
            {
                "trace": args.trace,
                "boot_s": args.boot,
                "mean_nodes_needed": round(float(nodes[scored].mean()), 3),
                "rows": rows,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
