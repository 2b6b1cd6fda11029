"""The drain planner: what becomes of every request in flight on a node the cloud is about to reclaim.

``plan_drain(requests, targets, settings)`` returns one action per request — ``finish`` in place,
``transfer`` its KV cache to a surviving worker, ``reprefill`` it there from its prompt and the tokens
generated so far, or ``requeue`` it with the router — with the times the plan expects. It is a pure
function of its inputs: the migration coordinator (``agent.actors.migration``) reads the inputs off the
wire (``schemas.workerproto``: ``InflightList``, ``WorkerStatus``) and carries the plan out.

Model (all times in seconds from now; ``B = time_left_s − safety_margin_s`` is the time by which nothing
may depend on the source any more):

- Decode: a sequence on a node decodes at ``decode_tokens_per_s / max_batch`` tokens/s — the node at full
  batch, a conservative figure (a draining node only gets emptier, a target only fuller).
- Finish in place: done at ``remaining_tokens / source rate``; safe when that is ≤ B.
- KV transfer: ``kv_bytes / link rate`` on a link, one transfer at a time on each link. A target on the
  source's node has its own fast link (``same_node_bytes_per_s``, transfers to that target queue on it);
  every cross-node transfer shares the source's network egress (``cross_node_bytes_per_s``), so the n-th
  ends when the bytes of all those before it have gone. The source stops decoding the request when the
  command is sent (``start_s``); the request needs the source until its KV has arrived (``ready_s``),
  which must be ≤ B; it then decodes on the target at the target's per-sequence rate.
- Re-prefill: needs nothing from the source once its command is sent (at once: the tokens generated so far
  go with it). The target prefills ``prompt + generated − overlap`` tokens, where the overlap is the
  leading prefix blocks of the request that the target holds, × ``block_tokens`` (at most the prompt).
  A target's prefill capacity is shared: its re-prefills run one after another. Then it decodes there.
- Each transfer or re-prefill takes one of the target's ``free_slots``; no target is given more.
- Requeue: back to the router's queue from the prompt (``completion_s = inf``), at once.

Policies:

- ``deadline`` (default) never leaves a request at risk. Whatever can finish in place by B does. Every
  other request, in the greedy order explained at ``_plan_deadline``, takes the option that completes
  earliest among a transfer ready by B and a re-prefill, on any target with a free slot (ties: fewer
  tokens recomputed, then fewer bytes, then the target with the most free slots left, which spreads the
  load, then the earlier target in ``targets``); with no slot left
  anywhere, it is requeued. O(requests × targets) choices after one sort (finding a cached-prefix overlap
  walks the request's leading blocks).
- ``migrate_top_n`` and ``let_short_finish`` are the seed sketch's ``SpotDrainStrategy`` rules, kept to
  compare against: a migration is a KV transfer when the target is on the source's node and a re-prefill
  otherwise, to the target with the most cached-prefix overlap that has a free slot (the first on ties);
  with no such target the request is requeued. ``migrate_top_n`` goes through the requests by remaining
  tokens ascending, leaves those with fewer than ``top_n_finish_below`` in place whatever the deadline, and
  stops migrating once the cumulative duration of its migrations (done one after another, as the seed's
  loop does them: transfer time, or re-prefill time on the target) passes ``time_left_s −
  seed_cleanup_s`` — the rest stay on the node. ``let_short_finish`` leaves every request with at most
  ``short_threshold`` remaining tokens in place and migrates the rest, in the order given. Their
  migrations are timed by the same model as ``deadline``'s; they can leave requests at risk.

``DrainPlan.at_risk`` names the requests whose action needs the source (finish, transfer) but is not ready
by B: on a real node they would be lost, or saved only by the coordinator's last-moment requeue.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

DrainPolicy = Literal["deadline", "migrate_top_n", "let_short_finish"]
ActionKind = Literal["finish", "transfer", "reprefill", "requeue"]

POLICIES: tuple[DrainPolicy, ...] = get_args(DrainPolicy)
ACTION_KINDS: tuple[ActionKind, ...] = get_args(ActionKind)
_NEEDS_SOURCE: frozenset[str] = frozenset({"finish", "transfer"})


def _check_non_negative(owner: str, name: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{owner}.{name} must be a finite number ≥ 0, got {value!r}")


def _check_positive(owner: str, name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{owner}.{name} must be a finite number > 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class InFlight:
    """A request in flight on the source worker (from ``InflightRequest``)."""

    request_id: str
    prompt_tokens: int
    generated_tokens: int
    remaining_tokens: int
    """Expected tokens still to generate."""
    kv_bytes: float
    """Size of its KV cache now."""
    prefix_blocks: tuple[str, ...] = ()
    """Hashes of its prompt's prefix blocks, in order."""

    def __post_init__(self) -> None:
        if not self.request_id:
            raise ValueError("InFlight.request_id must not be empty")
        for name in ("prompt_tokens", "generated_tokens", "remaining_tokens", "kv_bytes"):
            _check_non_negative("InFlight", name, getattr(self, name))

    @property
    def context_tokens(self) -> int:
        """Tokens whose KV cache it holds: the prompt and what it has generated."""
        return self.prompt_tokens + self.generated_tokens


@dataclass(frozen=True, slots=True)
class TargetWorker:
    """A surviving worker that could take requests (from ``WorkerStatus``)."""

    worker_id: str
    instance_id: str
    same_node: bool
    """On the source's node (fast link)."""
    free_slots: int
    """Sequences it can still admit."""
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    """Node decode throughput at full batch (all sequences)."""
    max_batch: int
    cached_blocks: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not self.worker_id:
            raise ValueError("TargetWorker.worker_id must not be empty")
        _check_non_negative("TargetWorker", "free_slots", self.free_slots)
        _check_positive("TargetWorker", "prefill_tokens_per_s", self.prefill_tokens_per_s)
        _check_positive("TargetWorker", "decode_tokens_per_s", self.decode_tokens_per_s)
        if self.max_batch < 1:
            raise ValueError(f"TargetWorker.max_batch must be ≥ 1, got {self.max_batch!r}")


@dataclass(frozen=True, slots=True)
class DrainSettings:
    time_left_s: float
    """Deadline − now."""
    source_decode_tokens_per_s: float
    source_max_batch: int
    same_node_bytes_per_s: float
    """The link within a node."""
    cross_node_bytes_per_s: float
    """The source's network egress, shared by all its cross-node transfers."""
    safety_margin_s: float = 5.0
    """Everything that depends on the source must be done this long before the deadline."""
    block_tokens: int = 16
    """Tokens per prefix block (for cached-prefix overlap)."""
    policy: DrainPolicy = "deadline"
    # The seed's constants for its two policies.
    top_n_finish_below: int = 50
    short_threshold: int = 100
    seed_cleanup_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("time_left_s", "safety_margin_s", "top_n_finish_below", "short_threshold"):
            _check_non_negative("DrainSettings", name, getattr(self, name))
        _check_non_negative("DrainSettings", "seed_cleanup_s", self.seed_cleanup_s)
        for name in ("source_decode_tokens_per_s", "same_node_bytes_per_s", "cross_node_bytes_per_s"):
            _check_positive("DrainSettings", name, getattr(self, name))
        for name in ("source_max_batch", "block_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"DrainSettings.{name} must be ≥ 1, got {getattr(self, name)!r}")
        if self.policy not in POLICIES:
            raise ValueError(f"DrainSettings.policy must be one of {POLICIES}, got {self.policy!r}")

    @property
    def ready_by_s(self) -> float:
        """When nothing may depend on the source any more: time_left_s − safety_margin_s."""
        return self.time_left_s - self.safety_margin_s

    @property
    def source_rate(self) -> float:
        """Tokens/s one sequence decodes at on the source."""
        return self.source_decode_tokens_per_s / self.source_max_batch


@dataclass(frozen=True, slots=True)
class DrainAction:
    request_id: str
    kind: ActionKind
    target: str | None
    """Worker id for transfer/reprefill."""
    start_s: float
    """When its command should be sent, seconds from now (transfers queue on a link)."""
    ready_s: float
    """When it no longer needs the source: finished in place, KV arrived, or at once for
    reprefill/requeue (the generated tokens are taken when the command is sent)."""
    completion_s: float
    """Expected completion of the request, seconds from now; ``math.inf`` for requeue."""
    bytes_moved: float
    tokens_recomputed: float
    """Tokens prefilled again (reprefill: prompt + generated − cached overlap; requeue: prompt +
    generated)."""


@dataclass(frozen=True, slots=True)
class DrainPlan:
    policy: DrainPolicy
    actions: tuple[DrainAction, ...]
    """Exactly one per request, in the order the commands should be sent (by ``start_s``)."""
    ready_by_s: float = math.inf
    """``time_left_s − safety_margin_s`` of the settings it was planned with (what ``at_risk`` checks)."""

    def count(self, kind: ActionKind) -> int:
        return sum(1 for a in self.actions if a.kind == kind)

    @property
    def at_risk(self) -> tuple[str, ...]:
        """Requests whose action needs the source (finish/transfer) but is not ready by ``ready_by_s``:
        these would be lost."""
        return tuple(
            a.request_id for a in self.actions if a.kind in _NEEDS_SOURCE and a.ready_s > self.ready_by_s
        )


def plan_drain(
    requests: Sequence[InFlight], targets: Sequence[TargetWorker], settings: DrainSettings
) -> DrainPlan:
    """One action per request under ``settings.policy`` (see the module docstring for the model).

    Raises ``ValueError`` for duplicate request ids or target worker ids (field values are checked when
    the inputs are built).
    """
    _check_unique("InFlight.request_id", (r.request_id for r in requests))
    _check_unique("TargetWorker.worker_id", (t.worker_id for t in targets))
    fleet = _Fleet(targets, settings)
    if settings.policy == "deadline":
        decided = _plan_deadline(requests, fleet, settings)
    elif settings.policy == "migrate_top_n":
        decided = _plan_migrate_top_n(requests, fleet, settings)
    else:
        decided = _plan_let_short_finish(requests, fleet, settings)
    # Commands in the order they are due; among those due together, in the order they were decided.
    ordered = sorted(decided, key=lambda a: a.start_s)
    return DrainPlan(policy=settings.policy, actions=tuple(ordered), ready_by_s=settings.ready_by_s)


def _check_unique(field: str, values: Iterable[str]) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{field} must be unique, {value!r} appears twice")
        seen.add(value)


class _Fleet:
    """The targets' shared resources while a plan is built: free slots, link and prefill queues."""

    __slots__ = (
        "block_tokens",
        "cached",
        "cross_bps",
        "egress_free",
        "ids",
        "link_free",
        "open",
        "per_seq",
        "prefill_free",
        "prefill_tps",
        "same_bps",
        "same_node",
        "slots",
    )

    def __init__(self, targets: Sequence[TargetWorker], settings: DrainSettings) -> None:
        self.ids = [t.worker_id for t in targets]
        self.same_node = [t.same_node for t in targets]
        self.cached = [t.cached_blocks for t in targets]
        self.per_seq = [t.decode_tokens_per_s / t.max_batch for t in targets]
        self.prefill_tps = [t.prefill_tokens_per_s for t in targets]
        self.slots = [t.free_slots for t in targets]
        self.open = [i for i, t in enumerate(targets) if t.free_slots > 0]
        self.link_free = [0.0] * len(targets)  # each same-node target's own link from the source
        self.prefill_free = [0.0] * len(targets)
        self.egress_free = 0.0  # the source's egress, shared by every cross-node transfer
        self.same_bps = settings.same_node_bytes_per_s
        self.cross_bps = settings.cross_node_bytes_per_s
        self.block_tokens = settings.block_tokens

    def overlap_tokens(self, request: InFlight, i: int) -> int:
        """Prompt tokens target ``i`` holds already: its cached run of the request's leading blocks."""
        cached = self.cached[i]
        n = 0
        for block in request.prefix_blocks:
            if block not in cached:
                break
            n += 1
        return min(n * self.block_tokens, request.prompt_tokens)

    def transfer_window(self, request: InFlight, i: int) -> tuple[float, float]:
        """(start, KV arrived) of a transfer to target ``i`` queued behind those already planned."""
        if self.same_node[i]:
            start = self.link_free[i]
            return start, start + request.kv_bytes / self.same_bps
        start = self.egress_free
        return start, start + request.kv_bytes / self.cross_bps

    def prefill_window(self, tokens: float, i: int) -> tuple[float, float]:
        """(start, end) of a re-prefill of ``tokens`` on target ``i`` behind those already planned."""
        start = self.prefill_free[i]
        return start, start + tokens / self.prefill_tps[i]

    def transfer(self, request: InFlight, i: int) -> DrainAction:
        start, ready = self.transfer_window(request, i)
        if self.same_node[i]:
            self.link_free[i] = ready
        else:
            self.egress_free = ready
        self._take_slot(i)
        return DrainAction(
            request_id=request.request_id,
            kind="transfer",
            target=self.ids[i],
            start_s=start,
            ready_s=ready,
            completion_s=ready + request.remaining_tokens / self.per_seq[i],
            bytes_moved=request.kv_bytes,
            tokens_recomputed=0.0,
        )

    def reprefill(self, request: InFlight, i: int) -> DrainAction:
        tokens = float(request.context_tokens - self.overlap_tokens(request, i))
        _, end = self.prefill_window(tokens, i)
        self.prefill_free[i] = end
        self._take_slot(i)
        return DrainAction(
            request_id=request.request_id,
            kind="reprefill",
            target=self.ids[i],
            start_s=0.0,
            ready_s=0.0,
            completion_s=end + request.remaining_tokens / self.per_seq[i],
            bytes_moved=0.0,
            tokens_recomputed=tokens,
        )

    def _take_slot(self, i: int) -> None:
        self.slots[i] -= 1
        if self.slots[i] <= 0:
            self.open.remove(i)


def _finish(request: InFlight, settings: DrainSettings) -> DrainAction:
    done = request.remaining_tokens / settings.source_rate
    return DrainAction(
        request_id=request.request_id,
        kind="finish",
        target=None,
        start_s=0.0,
        ready_s=done,
        completion_s=done,
        bytes_moved=0.0,
        tokens_recomputed=0.0,
    )


def _requeue(request: InFlight) -> DrainAction:
    return DrainAction(
        request_id=request.request_id,
        kind="requeue",
        target=None,
        start_s=0.0,
        ready_s=0.0,
        completion_s=math.inf,
        bytes_moved=0.0,
        tokens_recomputed=float(request.context_tokens),
    )


def _plan_deadline(requests: Sequence[InFlight], fleet: _Fleet, settings: DrainSettings) -> list[DrainAction]:
    """Finish what can finish by B; move the rest to the earliest completion; requeue when out of slots.

    Greedy order of the requests to move: most remaining tokens first (then the larger context first).
    Every shared resource — the source's egress, a same-node link, a target's prefill queue — serves its
    requests one after another, and each request then has a "tail" on the target: its remaining decode,
    which uses no shared resource. Serving the longest tails first is Jackson's rule, which minimizes the
    latest completion on one such queue; the larger-context tie-break is the longest-job-first rule that
    keeps the queues' ends even. Nothing here can put a request at risk (a transfer is only taken when
    ready by B, a re-prefill needs no source), so the order only decides who gets the faster options and,
    when slots run out, who is requeued: the requests with the least decode left, the cheapest to redo
    from the router's queue.
    """
    budget = settings.ready_by_s
    rate = settings.source_rate
    actions: list[DrainAction] = []
    moving: list[InFlight] = []
    for r in requests:
        if r.remaining_tokens / rate <= budget:
            actions.append(_finish(r, settings))
        else:
            moving.append(r)
    moving.sort(key=lambda r: (-r.remaining_tokens, -r.context_tokens))
    for r in moving:
        if not fleet.open:
            actions.append(_requeue(r))
            continue
        best: tuple[float, float, float, int] | None = None
        best_i = -1
        best_transfer = False
        for i in fleet.open:
            decode = r.remaining_tokens / fleet.per_seq[i]
            slots_taken = -fleet.slots[i]
            _, ready = fleet.transfer_window(r, i)
            if ready <= budget:
                key = (ready + decode, 0.0, r.kv_bytes, slots_taken)
                if best is None or key < best:
                    best, best_i, best_transfer = key, i, True
            tokens = float(r.context_tokens - fleet.overlap_tokens(r, i))
            _, end = fleet.prefill_window(tokens, i)
            key = (end + decode, tokens, 0.0, slots_taken)
            if best is None or key < best:
                best, best_i, best_transfer = key, i, False
        actions.append(fleet.transfer(r, best_i) if best_transfer else fleet.reprefill(r, best_i))
    return actions


def _seed_target(request: InFlight, fleet: _Fleet) -> int | None:
    """The seed's ``_find_target``: most cached-prefix overlap, first on ties — among targets with a slot."""
    best: int | None = None
    best_overlap = -1
    for i in fleet.open:
        overlap = fleet.overlap_tokens(request, i)
        if overlap > best_overlap:
            best, best_overlap = i, overlap
    return best


def _seed_migrate(request: InFlight, i: int, fleet: _Fleet) -> tuple[DrainAction, float]:
    """The seed's ``_migrate``: KV transfer within the node, else re-prefill; with its duration when
    migrations run one after another (transfer time, or re-prefill time on the target)."""
    if fleet.same_node[i]:
        duration = request.kv_bytes / fleet.same_bps
        return fleet.transfer(request, i), duration
    action = fleet.reprefill(request, i)
    return action, action.tokens_recomputed / fleet.prefill_tps[i]


def _plan_migrate_top_n(
    requests: Sequence[InFlight], fleet: _Fleet, settings: DrainSettings
) -> list[DrainAction]:
    actions: list[DrainAction] = []
    elapsed = 0.0
    stop_after = settings.time_left_s - settings.seed_cleanup_s
    stopped = False
    for r in sorted(requests, key=lambda r: r.remaining_tokens):
        stopped = stopped or elapsed > stop_after  # the seed's "reserve 30 s for clean-up" break
        if stopped or r.remaining_tokens < settings.top_n_finish_below:
            actions.append(_finish(r, settings))
            continue
        i = _seed_target(r, fleet)
        if i is None:
            actions.append(_requeue(r))
            continue
        action, duration = _seed_migrate(r, i, fleet)
        actions.append(action)
        elapsed += duration
    return actions


def _plan_let_short_finish(
    requests: Sequence[InFlight], fleet: _Fleet, settings: DrainSettings
) -> list[DrainAction]:
    actions: list[DrainAction] = []
    for r in requests:
        if r.remaining_tokens <= settings.short_threshold:
            actions.append(_finish(r, settings))
            continue
        i = _seed_target(r, fleet)
        actions.append(_requeue(r) if i is None else _seed_migrate(r, i, fleet)[0])
    return actions
