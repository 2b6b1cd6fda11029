"""Commands to the request router (frontend), request/reply on ``{ns}.cmd.router.{op}``.

The router answers each with a :class:`RouterAck` (or an ``error.reply.v1``). Every command is idempotent:
sending it twice has the effect of sending it once.
"""

from __future__ import annotations

from typing import Annotated

from schemas.envelope import Key, Message, Requests, Text, Tokens, doc


class StopRouting(Message, frozen=True, tag="router.stop_routing.v1"):
    """Send no new request to ``worker_id`` (op ``stop_routing``)."""

    worker_id: Annotated[Key, doc("Send no new request to this worker (requests already there stay).")]


class Requeue(Message, frozen=True, tag="router.requeue.v1"):
    """Take ``request_id`` back from ``worker_id`` and serve it elsewhere (op ``requeue``).

    The router serves it again from the prompt plus the ``generated_tokens`` already streamed to the
    client (0: from the prompt alone).
    """

    request_id: Annotated[Key, doc("Take this request back from `worker_id` and serve it on another worker.")]
    worker_id: Annotated[
        Key,
        doc(
            "The worker it is taken from. If the request is no longer there (finished, or held by another "
            "worker after a migration), change nothing and say so in the ack's `detail`."
        ),
    ]
    generated_tokens: Annotated[
        Tokens,
        doc(
            "Output tokens already generated (and streamed to the client): serve it again from the prompt "
            "plus these, and continue the client's stream after them (0: from the prompt alone)."
        ),
    ] = 0


class WorkerLost(Message, frozen=True, tag="router.worker_lost.v1"):
    """``worker_id`` died without notice (op ``worker_lost``): requeue everything the router had sent to it
    and not seen finish, from the prompt, and stop routing to it."""

    worker_id: Annotated[
        Key,
        doc(
            "The worker died without notice: requeue, from the prompt, every request sent to it that the "
            "router has not seen finish, and stop routing to it."
        ),
    ]


class RouterAck(Message, frozen=True, tag="router.ack.v1"):
    """The router's reply to a command; ``correlation_id`` is the command's ``msg_id``."""

    op: Annotated[Key, doc("The op answered: `stop_routing`, `requeue`, `worker_lost`.")]
    ok: Annotated[bool, doc("Done (or already done); false: not carried out, see `detail`.")]
    requests: Annotated[
        Requests,
        doc(
            "Requests the command affected: 1 for a `requeue` that took the request back, the number "
            "requeued for `worker_lost` (a repeat returns the first answer's number)."
        ),
    ] = 0
    detail: Annotated[
        Text, doc('Free text for the logs (`"already completed"`, `"taken from vllm-worker-7"`).')
    ] = ""
