"""How many nodes of a type a demand needs at the SLO.

Model: a node time-shares prefill and decode. One request costs ``prompt / prefill_tps`` plus
``output / decode_tps`` node-seconds (decode throughput is the node's aggregate over its batch), so a node
serves ``utilization / (prompt/P + output/D)`` requests per second while staying at the utilization target
that keeps latency within the SLO. The prefill overhead is the prefill share of that time, a fraction that
can never exceed 1 (the seed's formula multiplied the *fleet's* request rate into a per-node fraction).
Concurrency: a request holds a batch slot while it decodes at the per-sequence rate of a full batch
(``decode_tps / max_batch``); the nodes must offer enough slots at the same utilization target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from agent.core.catalog import InstanceType
from agent.core.demand import Demand


@dataclass(frozen=True, slots=True)
class SloConfig:
    """Utilization a node may run at and still meet the latency SLO (the seed's 70%)."""

    utilization_target: float = 0.70

    def __post_init__(self) -> None:
        if not 0 < self.utilization_target <= 1:
            raise ValueError(f"utilization_target must be in (0, 1], got {self.utilization_target!r}")


@dataclass(frozen=True, slots=True)
class CapacityEstimate:
    instances: int
    for_throughput: float
    for_concurrency: float
    prefill_overhead: float
    rps_per_instance: float


def _seconds_per_request(itype: InstanceType, prompt_tokens: float, output_tokens: float) -> float:
    return prompt_tokens / itype.prefill_tokens_per_s + output_tokens / itype.decode_tokens_per_s


def prefill_overhead(itype: InstanceType, prompt_tokens: float, output_tokens: float) -> float:
    """Share of a node's busy time spent on prefill, in [0, 1]."""
    busy = _seconds_per_request(itype, prompt_tokens, output_tokens)
    if busy <= 0:
        return 0.0
    return (prompt_tokens / itype.prefill_tokens_per_s) / busy


def rps_per_instance(
    itype: InstanceType, prompt_tokens: float, output_tokens: float, slo: SloConfig
) -> float:
    """Requests per second one node serves within the SLO for this token mix."""
    busy = _seconds_per_request(itype, prompt_tokens, output_tokens)
    # Slot-seconds per request: prefill at full speed, then decode at a full batch's per-sequence rate.
    slot_seconds = (
        prompt_tokens / itype.prefill_tokens_per_s
        + output_tokens * itype.max_batch / itype.decode_tokens_per_s
    )
    limits = []
    if busy > 0:
        limits.append(slo.utilization_target / busy)
    if slot_seconds > 0:
        limits.append(slo.utilization_target * itype.max_batch / slot_seconds)
    return min(limits) if limits else math.inf


def estimate(itype: InstanceType, demand: Demand, slo: SloConfig) -> CapacityEstimate:
    busy = _seconds_per_request(itype, demand.prompt_tokens, demand.output_tokens)
    for_throughput = demand.rps * busy / slo.utilization_target
    slot_seconds = (
        demand.prompt_tokens / itype.prefill_tokens_per_s
        + demand.output_tokens * itype.max_batch / itype.decode_tokens_per_s
    )
    for_concurrency = demand.rps * slot_seconds / (itype.max_batch * slo.utilization_target)
    # A tolerance keeps float noise (e.g. 4.0000000001) from asking for a whole extra node.
    needed = math.ceil(max(for_throughput, for_concurrency) - 1e-9)
    return CapacityEstimate(
        instances=max(needed, 1 if demand.rps > 0 else 0),
        for_throughput=for_throughput,
        for_concurrency=for_concurrency,
        prefill_overhead=prefill_overhead(itype, demand.prompt_tokens, demand.output_tokens),
        rps_per_instance=rps_per_instance(itype, demand.prompt_tokens, demand.output_tokens, slo),
    )


def instances_needed(itype: InstanceType, demand: Demand, slo: SloConfig) -> int:
    """Whole nodes of ``itype`` that serve ``demand`` within the SLO (at least 1 for any traffic)."""
    return estimate(itype, demand, slo).instances
