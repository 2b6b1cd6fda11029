"""The exact event model of one emulated GPU worker: pure and synchronous (no asyncio, nats or logging).

:class:`WorkerModel` is what :class:`~agent.sim.worker.WorkerEmulator` serves on NATS; it can be driven
directly (by a property test, or by any other harness) with time passed in explicitly: ``advance_to(t)``
runs it to clock time ``t``, a command acts at the model's time ``now`` and returns what happened (an
:class:`Ack`, or :class:`Pending` for a transfer whose bytes still have to move) or raises
:class:`Refused` having changed nothing, and ``take_events()`` hands over the :class:`Update` of each
request and the :class:`TransferEnded` of each transfer, in the order they happened.

Time model
----------
The model is exact between events: it advances from event to event (a prefill or decode ending, a transfer
ending, the kill deadline), not by fixed steps, so the result does not depend on how often it is advanced.

- **Slots.** Continuous batching of up to ``max_batch`` sequences (prefilling, decoding, or paused while
  their KV cache is being sent). Admitted requests beyond that wait in a FIFO queue (``queued``), at most
  ``max_queued`` of them (default ``max_batch``); a ``submit`` or ``reprefill`` beyond that is refused.
  A ``reprefill`` joins the front of the queue.
- **Prefill.** A request taking a slot first prefills ``prompt + already generated`` tokens, minus the
  tokens of the leading prefix blocks already in the cache (``hit blocks × block_tokens``, at most the
  prompt). All prefilling requests share the node's ``prefill_tokens_per_s`` equally. Prefill emits no
  token.
- **Decode.** Each decoding sequence generates ``decode_tokens_per_s / max_batch`` tokens per second
  whatever the batch occupancy, and is done when it has generated its expected output (for a request that
  arrived with tokens already generated, its total output: generated + remaining). A request whose output
  is already complete finishes as soon as its prefill does.
- **KV transfers** (``transfer_kv``, on the source). The request must be decoding; it pauses (keeping its
  slot) and its KV cache, ``(prompt + generated) × kv_bytes_per_token`` bytes, goes over the same-node link
  (``same_node_bytes_per_s``) when ``target_instance_id`` is this worker's instance, else over the network
  (``cross_node_bytes_per_s``). Each link is shared equally by the transfers on it (processor sharing).
  A transfer is refused at once if, with those already on its link, it would end after its ``reply_by``, or
  would push one of them past its own ``reply_by``. When it ends, the request leaves (``moved_out``), its
  slot frees, and the ack carries ``bytes_moved`` and the generated token count.
- **Resume** (on the target) admits the request straight into decoding (no prefill; its prefix blocks
  join the cache) if a slot is free, else refuses.
- **Prefix cache.** ``cache_blocks`` prefix blocks of ``block_tokens`` tokens each (``block_tokens ×
  kv_bytes_per_token`` bytes), least recently used evicted first; the first block of a prefix is kept
  longest. A block's hits count the requests that found it as part of their cached leading prefix.
  ``hot_blocks`` ranks blocks by hits (then recency); ``receive_blocks`` copies blocks in over this
  worker's incoming network link (``cross_node_bytes_per_s``, shared by concurrent copies) and adds them.
  Sequences' own KV is bounded by ``max_batch``.
- **Death.** ``kill_at(deadline)``: at the deadline, events up to it happen, then every request still here
  (running, queued, paused mid-transfer) is lost: a ``lost`` update each, a failed outcome for each
  unfinished transfer, and from then on nothing (a command raises :class:`WorkerStopped`). ``crash()``:
  dead at once and silent (not even ``lost``; events not yet taken are dropped too).
- **Idempotence.** A repeat of a successful ``submit``/``resume``/``reprefill``/``cancel``/``transfer_kv``
  (by request id; ``receive_blocks`` by its key) returns the first outcome and does nothing again; a repeat
  of a transfer still running returns the same :class:`Pending`. A refused command changed nothing, so its
  repeat is simply evaluated again.
- **Fabric** (optional, :class:`Fabric`, shared by the workers of one process): the protocol does not let
  a source know its target's state nor a target check that a request's KV reached it; with a fabric, a
  transfer to a dead target is refused, one whose target dies before it ends fails (the request goes on
  decoding on the source), ``resume`` needs the KV to have arrived from that source, and
  ``receive_blocks`` from the same node takes the same-node link (without a fabric, blocks come over the
  network link).
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from agent.core.catalog import InstanceType
from agent.sim.prefix_cache import PrefixCache
from agent.sim.shared_link import SharedLink
from schemas.workerproto import Block, InflightRequest, RequestState

Phase = Literal["queued", "prefill", "decode", "paused"]
Fate = Literal["done", "moved_out", "lost"]

# Tokens this close to their target, relative to its size, have reached it.
_EPS: Final = 1e-9
# A generated-token count this close below an integer counts as that integer (clock rounding at UNIX times).
_TOKEN_SLACK: Final = 1e-3


class Refused(Exception):
    """A command that cannot be done; the text names the field. Nothing changed."""


class WorkerStopped(Exception):
    """A command to a dead worker: it does nothing any more."""


@dataclass(frozen=True, slots=True)
class Ack:
    """A command's outcome (the fields of a ``worker.ack.v1``, without its envelope)."""

    op: str
    request_id: str = ""
    generated_tokens: int = 0
    bytes_moved: float = 0.0
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Pending:
    """A transfer under way: its outcome comes as the :class:`TransferEnded` with the same id."""

    transfer_id: int


@dataclass(frozen=True, slots=True)
class TransferEnded:
    transfer_id: int
    outcome: Ack | str
    """The ack, or why the transfer failed."""


@dataclass(frozen=True, slots=True)
class Update:
    """What became of a request here, at model time ``at``."""

    request_id: str
    state: RequestState
    at: float
    generated_tokens: int


@dataclass(frozen=True, slots=True)
class Events:
    updates: list[Update]
    ended: list[TransferEnded]


@dataclass(slots=True, eq=False)
class _Seq:
    request_id: str
    prompt_tokens: int
    output_tokens: int
    """Total output: tokens already generated when it arrived plus those still expected."""
    generated: float
    prefix_blocks: tuple[str, ...]
    phase: Phase
    prefill_total: float = 0.0
    prefill_left: float = 0.0

    @property
    def tokens(self) -> int:
        """Generated tokens so far, whole."""
        return min(self.output_tokens, math.floor(self.generated + _TOKEN_SLACK))


@dataclass(slots=True, eq=False)
class _Transfer:
    transfer_id: int
    op: str
    key: str
    size: float
    remaining: float
    reply_by: float
    link: SharedLink[_Transfer]
    seq: _Seq | None = None
    """The request whose KV cache this sends (``transfer_kv``); None for a copy of blocks in."""
    target_worker_id: str = ""
    blocks: tuple[Block, ...] = ()


class Fabric:
    """The emulated GPU-to-GPU network of the workers of one process (optional).

    Without it each worker believes what it is told. With it, a KV transfer to a target that is dead when
    it starts is refused at once, and one whose target dies before it ends fails (the request stays on the
    source, decoding); a transfer that ends hands the KV to the target, whose ``resume`` then requires it
    (from that source); and ``receive_blocks`` from a worker on the same node uses the same-node link.
    """

    def __init__(self) -> None:
        self.workers: dict[str, WorkerModel] = {}

    def join(self, worker: WorkerModel) -> None:
        self.workers[worker.worker_id] = worker

    def reachable(self, worker_id: str, at: float) -> bool:
        """``worker_id`` is alive at clock time ``at``, or unknown to the fabric (then assumed alive)."""
        worker = self.workers.get(worker_id)
        return worker is None or worker.alive_at(at)


class WorkerModel:
    """One serving engine on one node, event by event (see the module doc)."""

    def __init__(
        self,
        *,
        worker_id: str,
        instance_id: str,
        instance_type: InstanceType,
        start_at: float,
        kv_bytes_per_token: float = 327_680,
        same_node_bytes_per_s: float,
        cross_node_bytes_per_s: float,
        block_tokens: int = 16,
        cache_blocks: int = 4096,
        max_queued: int | None = None,
        stop_at: float | None = None,
        fabric: Fabric | None = None,
    ) -> None:
        if not (kv_bytes_per_token >= 0 and same_node_bytes_per_s > 0 and cross_node_bytes_per_s > 0):
            raise ValueError("worker emulator: need kv_bytes_per_token ≥ 0 and link rates > 0")
        if block_tokens < 1 or cache_blocks < 0:
            raise ValueError("worker emulator: need block_tokens ≥ 1, cache_blocks ≥ 0")
        if max_queued is not None and max_queued < 0:
            raise ValueError("worker emulator: max_queued must be ≥ 0")
        self.worker_id = worker_id
        self.instance_id = instance_id
        self.instance_type = instance_type
        self.kv_bytes_per_token = float(kv_bytes_per_token)
        self.block_tokens = block_tokens
        self.cache_blocks = cache_blocks
        self.max_batch = instance_type.max_batch
        self.max_queued = instance_type.max_batch if max_queued is None else max_queued
        self.decode_rate = instance_type.decode_tokens_per_s / instance_type.max_batch
        self.now = start_at
        """The model's time: every event up to it has happened."""
        self.stopped = False
        """Dead (crashed, or past its kill deadline): it does nothing any more."""
        # Cumulative counters, and the time each request completed here.
        self.started = 0
        self.completed = 0
        self.moved_out = 0
        self.lost = 0
        self.completed_prompt_tokens = 0
        self.completed_output_tokens = 0
        self.completions: dict[str, float] = {}

        self._kill_deadline = stop_at
        self._queue: deque[_Seq] = deque()
        self._active: dict[str, _Seq] = {}
        self._fates: dict[str, Fate] = {}
        self._acks: dict[tuple[str, str], Ack] = {}
        self._transfers: dict[tuple[str, str], _Transfer] = {}
        self._transfer_ids = itertools.count(1)
        self._same = SharedLink[_Transfer]("same-node", same_node_bytes_per_s)
        self._cross = SharedLink[_Transfer]("cross-node", cross_node_bytes_per_s)
        self._rx = SharedLink[_Transfer]("incoming", cross_node_bytes_per_s)
        self._rx_same = SharedLink[_Transfer]("incoming same-node", same_node_bytes_per_s)
        self._links = (self._same, self._cross, self._rx, self._rx_same)
        self._fabric = fabric
        self._kv_received: dict[str, str] = {}  # request id → source worker, with a fabric
        self._cache = PrefixCache(cache_blocks)
        self._updates: list[Update] = []
        self._ended: list[TransferEnded] = []
        if fabric is not None:
            fabric.join(self)

    # --- what it looks like -----------------------------------------------------------------------

    def alive_at(self, t: float) -> bool:
        """Not dead at clock time ``t`` (crashed, or past its kill deadline)."""
        return not self.stopped and (self._kill_deadline is None or t < self._kill_deadline)

    def phase_of(self, request_id: str) -> Phase | Fate | None:
        """Where a request is on this worker: a phase, what became of it, or None if never seen."""
        seq = self._find(request_id)
        if seq is not None:
            return seq.phase
        return self._fates.get(request_id)

    @property
    def transfers_in_progress(self) -> int:
        """KV transfers and block copies under way (waiting for their bytes to move)."""
        return len(self._transfers)

    @property
    def active(self) -> int:
        """Sequences holding a slot (prefilling, decoding or paused)."""
        return len(self._active)

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def kv_blocks_used(self) -> int:
        return len(self._cache)

    @property
    def kv_block_bytes(self) -> float:
        return self.block_tokens * self.kv_bytes_per_token

    def has_room(self) -> bool:
        """A ``submit`` or ``reprefill`` would be admitted (a slot, or a place in the queue)."""
        return len(self._active) < self.max_batch or len(self._queue) < self.max_queued

    def cached_blocks(self) -> Iterator[str]:
        """The prefix cache's block hashes, most recently used first."""
        return self._cache.recent_first()

    def inflight(self) -> list[InflightRequest]:
        """Every request here, slots first, then the queue in order."""
        return [
            InflightRequest(
                request_id=seq.request_id,
                prompt_tokens=seq.prompt_tokens,
                generated_tokens=seq.tokens,
                expected_remaining_tokens=seq.output_tokens - seq.tokens,
                kv_bytes=0.0 if seq.phase == "queued" else self._kv_bytes(seq),
                prefix_blocks=list(seq.prefix_blocks),
            )
            for seq in itertools.chain(self._active.values(), self._queue)
        ]

    def hot_blocks(self, limit: int) -> list[Block]:
        """The ``limit`` cached blocks with the most hits, the most recent first among equals."""
        return self._cache.hottest(limit, self.kv_block_bytes)

    def take_events(self) -> Events:
        """The updates and transfer outcomes since the last call, in the order they happened."""
        events = Events(self._updates, self._ended)
        self._updates, self._ended = [], []
        return events

    # --- time and death ---------------------------------------------------------------------------

    def advance_to(self, t_end: float) -> None:
        """Run from ``now`` to ``t_end`` event by event (or to the kill deadline, and die there)."""
        if self.stopped:
            return
        while True:
            self._settle()
            horizon = t_end
            if self._kill_deadline is not None and self._kill_deadline < horizon:
                horizon = self._kill_deadline
            if horizon <= self.now:
                break
            span = horizon - self.now
            step = self._next_event_in()
            if step >= span:
                self._integrate(span)
                self.now = horizon
            else:
                self._integrate(step)
                self.now += step
        if self._kill_deadline is not None and self.now >= self._kill_deadline:
            self._die(notify=True)

    def kill_at(self, deadline: float) -> None:
        """Stop hard at ``deadline``: what is still here then is lost. An earlier deadline wins."""
        if self._kill_deadline is None or deadline < self._kill_deadline:
            self._kill_deadline = deadline

    def crash(self) -> None:
        """Die at ``now``, silently: no ``lost`` update, and events not yet taken are dropped."""
        if not self.stopped:
            self._die(notify=False)

    # --- commands (at ``now``) ---------------------------------------------------------------------

    def submit(
        self,
        request_id: str,
        prompt_tokens: int,
        expected_output_tokens: int,
        prefix_blocks: Sequence[str] = (),
        already_generated: int = 0,
    ) -> Ack:
        """Admit a new request to the back of the queue (a free slot takes it at once)."""
        ack = self._repeat("submit", request_id)
        if ack is not None:
            return ack
        return self._enqueue(
            "submit", request_id, prompt_tokens, already_generated, expected_output_tokens, prefix_blocks
        )

    def reprefill(
        self,
        request_id: str,
        prompt_tokens: int,
        generated_tokens: int,
        expected_remaining_tokens: int,
        prefix_blocks: Sequence[str] = (),
        *,
        reply_by: float,
    ) -> Ack:
        """Admit a request moved from elsewhere to prefill again, at the head of the queue: work already
        streamed to a client goes before new work."""
        ack = self._repeat("reprefill", request_id)
        if ack is not None:
            return ack
        if self.now > reply_by:
            raise Refused(f"reply_by: {reply_by:.3f} has passed (now {self.now:.3f})")
        return self._enqueue(
            "reprefill",
            request_id,
            prompt_tokens,
            generated_tokens,
            expected_remaining_tokens,
            prefix_blocks,
            first=True,
        )

    def resume(
        self,
        request_id: str,
        source_worker_id: str,
        prompt_tokens: int,
        generated_tokens: int,
        expected_remaining_tokens: int,
        prefix_blocks: Sequence[str] = (),
    ) -> Ack:
        """Admit a request whose KV cache was sent here straight into decoding, if a slot is free."""
        ack = self._repeat("resume", request_id)
        if ack is not None:
            return ack
        self._refuse_if_here(request_id)
        if self._fabric is not None and self._kv_received.get(request_id) != source_worker_id:
            raise Refused(f"request_id: no KV cache of {request_id!r} has arrived from {source_worker_id!r}")
        if len(self._active) >= self.max_batch:
            raise Refused(
                f"request_id: no free slot for {request_id!r} "
                f"({len(self._active)}/{self.max_batch} sequences active)"
            )
        seq = _Seq(
            request_id=request_id,
            prompt_tokens=prompt_tokens,
            output_tokens=generated_tokens + expected_remaining_tokens,
            generated=float(generated_tokens),
            prefix_blocks=tuple(prefix_blocks),
            phase="decode",
        )
        self._active[request_id] = seq
        self._kv_received.pop(request_id, None)
        self._cache.touch(seq.prefix_blocks)  # the prefix's KV arrived with the request
        return self._admitted("resume", seq)

    def cancel(self, request_id: str) -> Ack:
        """Drop a request (it leaves as ``moved_out``); a transfer of its KV stops and fails."""
        ack = self._repeat("cancel", request_id)
        if ack is not None:
            return ack
        seq = self._find(request_id)
        if seq is None:
            raise Refused(self._absent(request_id))
        if seq.phase == "queued":
            self._queue.remove(seq)
        else:
            del self._active[request_id]
        job = self._transfers.pop(("transfer_kv", request_id), None)
        if job is not None:
            job.link.jobs.remove(job)
            self._ended.append(TransferEnded(job.transfer_id, f"request_id: {request_id!r} was cancelled"))
        self._leave(seq, "moved_out")
        ack = Ack(op="cancel", request_id=request_id, generated_tokens=seq.tokens)
        self._acks[("cancel", request_id)] = ack
        self.advance_to(self.now)  # a freed slot takes the next queued request
        return ack

    def transfer_kv(
        self, request_id: str, target_worker_id: str, target_instance_id: str, *, reply_by: float
    ) -> Ack | Pending:
        """Start sending a decoding request's KV cache to another worker; it pauses meanwhile."""
        key = ("transfer_kv", request_id)
        ack = self._repeat(*key)
        if ack is not None:
            return ack
        job = self._transfers.get(key)
        if job is not None:
            if job.target_worker_id != target_worker_id:
                raise Refused(
                    f"target_worker_id: {request_id!r} is already being sent to {job.target_worker_id!r}"
                )
            return Pending(job.transfer_id)
        seq = self._active.get(request_id)
        if seq is None:
            if self._find(request_id) is not None:
                raise Refused(f"request_id: {request_id!r} is queued here: it has no KV cache yet")
            raise Refused(self._absent(request_id))
        if seq.phase != "decode":
            raise Refused(f"request_id: {request_id!r} is in {seq.phase}: its KV cache is not complete")
        if target_worker_id == self.worker_id:
            raise Refused("target_worker_id: the target is this worker")
        if self._fabric is not None and not self._fabric.reachable(target_worker_id, self.now):
            raise Refused(f"target_worker_id: {target_worker_id!r} does not answer: cannot connect")
        link = self._same if target_instance_id == self.instance_id else self._cross
        size = self._kv_bytes(seq)
        self._check_link(link, size, reply_by, f"the KV cache of {request_id!r}")
        seq.generated = float(seq.tokens)  # the KV holds whole tokens; a partial one is redone
        seq.phase = "paused"
        return self._send(
            "transfer_kv", request_id, size, reply_by, link, seq=seq, target_worker_id=target_worker_id
        )

    def receive_blocks(
        self, key: str, source_worker_id: str, blocks: Sequence[Block], *, reply_by: float
    ) -> Ack | Pending:
        """Start copying prefix blocks in from another worker; ``key`` tells a repeat (the message's id)."""
        ack = self._repeat("receive_blocks", key)
        if ack is not None:
            return ack
        job = self._transfers.get(("receive_blocks", key))
        if job is not None:
            return Pending(job.transfer_id)
        size = float(sum(b.size_bytes for b in blocks))
        link = self._rx
        source = self._fabric.workers.get(source_worker_id) if self._fabric is not None else None
        if source is not None and source.instance_id == self.instance_id:
            link = self._rx_same
        self._check_link(link, size, reply_by, f"{len(blocks)} blocks")
        return self._send("receive_blocks", key, size, reply_by, link, blocks=tuple(blocks))

    # --- the fabric ----------------------------------------------------------------------------------

    def kv_arrived(self, request_id: str, source_worker_id: str) -> None:
        """The fabric's word that ``request_id``'s KV cache reached this worker from ``source_worker_id``
        (with a fabric, ``resume`` requires it)."""
        self._kv_received[request_id] = source_worker_id

    # --- checks -----------------------------------------------------------------------------------

    def _repeat(self, op: str, key: str) -> Ack | None:
        """The first outcome of a command already done; a command to a dead worker raises."""
        if self.stopped:
            raise WorkerStopped(f"{self.worker_id} is dead")
        return self._acks.get((op, key))

    def _find(self, request_id: str) -> _Seq | None:
        seq = self._active.get(request_id)
        if seq is not None:
            return seq
        return next((s for s in self._queue if s.request_id == request_id), None)

    def _absent(self, request_id: str) -> str:
        fate = self._fates.get(request_id)
        if fate is None:
            return f"request_id: {request_id!r} is not on this worker"
        return f"request_id: {request_id!r} is no longer on this worker ({fate})"

    def _refuse_if_here(self, request_id: str) -> None:
        seq = self._find(request_id)
        if seq is not None:
            raise Refused(f"request_id: {request_id!r} is already on this worker ({seq.phase})")

    def _check_link(self, link: SharedLink[_Transfer], size: float, reply_by: float, what: str) -> None:
        why = link.refusal(self.now, size, reply_by, what)
        if why is not None:
            raise Refused(why)

    # --- admission and leaving --------------------------------------------------------------------

    def _enqueue(
        self,
        op: str,
        request_id: str,
        prompt_tokens: int,
        generated: int,
        remaining: int,
        prefix_blocks: Sequence[str],
        *,
        first: bool = False,
    ) -> Ack:
        """Admit a request to the queue (its prompt still to prefill), at its head when ``first``."""
        self._refuse_if_here(request_id)
        if not self.has_room():
            raise Refused(
                f"no free slot: {len(self._active)}/{self.max_batch} sequences active and "
                f"{len(self._queue)}/{self.max_queued} queued"
            )
        seq = _Seq(
            request_id=request_id,
            prompt_tokens=prompt_tokens,
            output_tokens=generated + remaining,
            generated=float(generated),
            prefix_blocks=tuple(prefix_blocks),
            phase="queued",
        )
        if first:
            self._queue.appendleft(seq)
        else:
            self._queue.append(seq)
        return self._admitted(op, seq)

    def _admitted(self, op: str, seq: _Seq) -> Ack:
        self.started += 1
        self._fates.pop(seq.request_id, None)
        self._update(seq, "started")
        self.advance_to(self.now)  # a free slot takes it now
        ack = Ack(op=op, request_id=seq.request_id, detail=seq.phase)
        self._acks[(op, seq.request_id)] = ack
        return ack

    def _update(self, seq: _Seq, state: RequestState) -> None:
        self._updates.append(Update(seq.request_id, state, self.now, seq.tokens))

    def _leave(self, seq: _Seq, fate: Fate) -> None:
        self._fates[seq.request_id] = fate
        if fate == "moved_out":
            self.moved_out += 1
        elif fate == "done":
            self.completed += 1
            self.completed_prompt_tokens += seq.prompt_tokens
            self.completed_output_tokens += seq.output_tokens
            self.completions[seq.request_id] = self.now
        else:
            self.lost += 1
        self._update(seq, fate)

    def _die(self, *, notify: bool) -> None:
        self.stopped = True
        for seq in [*self._active.values(), *self._queue]:
            self._leave(seq, "lost")
        self._active.clear()
        self._queue.clear()
        for link in self._links:
            for job in link.jobs:
                why = f"the worker stopped at {self.now:.3f} before the transfer ended"
                self._ended.append(TransferEnded(job.transfer_id, why))
            link.jobs.clear()
        self._transfers.clear()
        if not notify:
            self._updates.clear()
            self._ended.clear()

    # --- slots -----------------------------------------------------------------------------------

    def _start(self, seq: _Seq) -> None:
        """``seq`` takes a slot: it prefills what its cached leading prefix blocks do not cover."""
        cached = min(self._cache.serve(seq.prefix_blocks) * self.block_tokens, seq.prompt_tokens)
        seq.prefill_total = seq.prefill_left = float(seq.prompt_tokens + seq.tokens - cached)
        seq.phase = "prefill"
        self._active[seq.request_id] = seq

    def _kv_bytes(self, seq: _Seq) -> float:
        return (seq.prompt_tokens + seq.tokens) * self.kv_bytes_per_token

    # --- transfers --------------------------------------------------------------------------------

    def _send(
        self,
        op: str,
        key: str,
        size: float,
        reply_by: float,
        link: SharedLink[_Transfer],
        *,
        seq: _Seq | None = None,
        target_worker_id: str = "",
        blocks: tuple[Block, ...] = (),
    ) -> Pending:
        """Put a transfer of ``size`` bytes on ``link`` (already checked against the reply_by's there)."""
        job = _Transfer(
            next(self._transfer_ids), op, key, size, size, reply_by, link, seq, target_worker_id, blocks
        )
        job.link.jobs.append(job)
        self._transfers[(job.op, job.key)] = job
        self.advance_to(self.now)  # nothing to move (an empty cache) ends at once
        return Pending(job.transfer_id)

    def _finish_transfer(self, job: _Transfer) -> None:
        self._transfers.pop((job.op, job.key), None)
        ack = self._hand_over(job) if job.seq is not None else self._take_in(job)
        if ack is not None:
            self._acks[(job.op, job.key)] = ack
            self._ended.append(TransferEnded(job.transfer_id, ack))

    def _hand_over(self, job: _Transfer) -> Ack | None:
        """The KV cache of ``job.seq`` reached its target: the request leaves (or, its target dead, stays)."""
        seq = job.seq
        assert seq is not None
        target = self._fabric.workers.get(job.target_worker_id) if self._fabric is not None else None
        if target is not None and not target.alive_at(self.now):
            seq.phase = "decode"  # the copy failed: the request goes on here
            why = f"target_worker_id: {job.target_worker_id!r} stopped before the transfer ended"
            self._ended.append(TransferEnded(job.transfer_id, why))
            return None
        if target is not None:
            target.kv_arrived(seq.request_id, self.worker_id)
        del self._active[seq.request_id]
        self._leave(seq, "moved_out")
        return Ack(
            op="transfer_kv",
            request_id=seq.request_id,
            generated_tokens=seq.tokens,
            bytes_moved=job.size,
            detail=f"to {job.target_worker_id} over the {job.link.name} link",
        )

    def _take_in(self, job: _Transfer) -> Ack:
        """Blocks copied in join the prefix cache, keeping the larger hit count."""
        self._cache.take_in(job.blocks)
        return Ack(op="receive_blocks", bytes_moved=job.size, detail=f"{len(job.blocks)} blocks")

    # --- the event loop ---------------------------------------------------------------------------

    def _settle(self) -> None:
        """Handle every event due at ``now`` and fill free slots from the queue."""
        changed = True
        while changed:
            changed = False
            for seq in list(self._active.values()):
                if seq.phase == "prefill" and seq.prefill_left <= _EPS * max(1.0, seq.prefill_total):
                    seq.prefill_left = 0.0
                    seq.phase = "decode"
                    changed = True
                if seq.phase == "decode" and seq.generated >= seq.output_tokens - _EPS * max(
                    1.0, seq.output_tokens
                ):
                    seq.generated = float(seq.output_tokens)
                    del self._active[seq.request_id]
                    self._leave(seq, "done")
                    changed = True
            for link in self._links:
                for job in link.take_finished():
                    self._finish_transfer(job)
                    changed = True
            while self._queue and len(self._active) < self.max_batch:
                self._start(self._queue.popleft())
                changed = True

    def _next_event_in(self) -> float:
        best = math.inf
        prefilling = [s for s in self._active.values() if s.phase == "prefill"]
        if prefilling:
            rate = self.instance_type.prefill_tokens_per_s / len(prefilling)
            best = min(s.prefill_left for s in prefilling) / rate
        for seq in self._active.values():
            if seq.phase == "decode":
                best = min(best, (seq.output_tokens - seq.generated) / self.decode_rate)
        for link in self._links:
            best = min(best, link.next_end_in())
        return max(best, 0.0)

    def _integrate(self, dt: float) -> None:
        prefilling = [s for s in self._active.values() if s.phase == "prefill"]
        if prefilling:
            tokens = self.instance_type.prefill_tokens_per_s / len(prefilling) * dt
            for seq in prefilling:
                seq.prefill_left = max(0.0, seq.prefill_left - tokens)
        for seq in self._active.values():
            if seq.phase == "decode":
                seq.generated = min(float(seq.output_tokens), seq.generated + self.decode_rate * dt)
        for link in self._links:
            link.advance(dt)
