"""Commands to the request router (frontend), request/reply on ``{ns}.cmd.router.{op}``.

The router answers each with a :class:`RouterAck` (or an ``error.reply.v1``). Every command is idempotent:
sending it twice has the effect of sending it once.
"""

from __future__ import annotations

from schemas.envelope import Count, Key, Message


class StopRouting(Message, frozen=True, tag="router.stop_routing.v1"):
    """Send no new request to ``worker_id`` (op ``stop_routing``)."""

    worker_id: Key


class Requeue(Message, frozen=True, tag="router.requeue.v1"):
    """Take ``request_id`` back from ``worker_id`` and serve it elsewhere (op ``requeue``).

    The router serves it again from the prompt plus the ``generated_tokens`` already streamed to the
    client (0: from the prompt alone).
    """

    request_id: Key
    worker_id: Key
    generated_tokens: Count = 0


class WorkerLost(Message, frozen=True, tag="router.worker_lost.v1"):
    """``worker_id`` died without notice (op ``worker_lost``): requeue everything the router had sent to it
    and not seen finish, from the prompt, and stop routing to it."""

    worker_id: Key


class RouterAck(Message, frozen=True, tag="router.ack.v1"):
    op: Key
    ok: bool
    requests: Count = 0
    """How many requests the command affected (requeued, for ``worker_lost``)."""
    detail: str = ""
