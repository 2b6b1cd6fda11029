"""Every NATS subject the agent uses, built here and nowhere else.

Form: ``{ns}.{evt|cmd|req}.{domain}.{name}[.{key}]``. The namespace comes first so that permissions and
JetStream streams can scope by ``{ns}.>``; a key comes last and is escaped (see :func:`escape_key`), so an
instance id with a dot cannot split into two tokens. Subscriptions use the ``*_all`` patterns.

Reserved for the preemption work (named here so nobody else takes them): ``{ns}.evt.spot.notice.{id}``
(a sidecar's preemption notice), ``{ns}.cmd.drain.order.{id}`` (drain orders),
``{ns}.evt.drain.result.{id}`` (migration results) and ``{ns}.req.worker.{worker_id}.{verb}`` (orders to a
worker, request/reply).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_NAMESPACE = "costagent"
_NAMESPACE = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*$")
_SAFE = re.compile(r"[A-Za-z0-9_\-]")


def check_namespace(ns: str) -> str:
    """Lowercase tokens of letters, digits, ``_`` and ``-``, separated by dots."""
    if not _NAMESPACE.fullmatch(ns):  # not match: "$" would accept a trailing newline
        raise ValueError(
            f"namespace {ns!r}: use lowercase letters, digits, '_' or '-', in dot-separated tokens"
        )
    return ns


def escape_key(key: str) -> str:
    """One subject token from any string: characters other than ``[A-Za-z0-9_-]`` become ``%XX`` (UTF-8).

    Reversible with :func:`unescape_key`; never contains ``.``, ``*``, ``>`` or whitespace.
    """
    if not key:
        raise ValueError("a subject key must not be empty")
    return "".join(c if _SAFE.match(c) else "".join(f"%{b:02X}" for b in c.encode()) for c in key)


def unescape_key(token: str) -> str:
    raw = bytearray()
    i = 0
    while i < len(token):
        if token[i] == "%":
            raw.append(int(token[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.extend(token[i].encode())
            i += 1
    return raw.decode()


@dataclass(frozen=True, slots=True)
class Subjects:
    """The subjects of one namespace. ``pattern(subject)`` strips the namespace for metric labels."""

    ns: str = DEFAULT_NAMESPACE

    def __post_init__(self) -> None:
        check_namespace(self.ns)

    def label(self, subject: str) -> str:
        """The subject without its namespace: a bounded metric label when given a pattern."""
        prefix = self.ns + "."
        return subject[len(prefix) :] if subject.startswith(prefix) else subject

    # Worker metrics: each GPU worker, every few seconds.
    def worker_metrics(self, worker_id: str) -> str:
        return f"{self.ns}.evt.worker.metrics.{escape_key(worker_id)}"

    @property
    def worker_metrics_all(self) -> str:
        return f"{self.ns}.evt.worker.metrics.*"

    # Spot prices: a price feed, per pool (zone).
    def spot_price(self, pool: str) -> str:
        return f"{self.ns}.evt.spot.price.{escape_key(pool)}"

    @property
    def spot_price_all(self) -> str:
        return f"{self.ns}.evt.spot.price.*"

    # Fleet changes: the actuator, per instance.
    def fleet_instance(self, instance_id: str) -> str:
        return f"{self.ns}.evt.fleet.instance.{escape_key(instance_id)}"

    @property
    def fleet_instance_all(self) -> str:
        return f"{self.ns}.evt.fleet.instance.*"

    # The agent's outputs and commands.
    @property
    def plan_allocation(self) -> str:
        return f"{self.ns}.evt.plan.allocation"

    @property
    def plan_tick(self) -> str:
        return f"{self.ns}.cmd.plan.tick"

    @property
    def demand_snapshot(self) -> str:
        return f"{self.ns}.evt.demand.snapshot"

    @property
    def cost_report(self) -> str:
        return f"{self.ns}.evt.cost.report"

    @property
    def cost_report_request(self) -> str:
        return f"{self.ns}.req.cost.report"

    # Reserved for preemption handling (issue 5).
    def spot_notice(self, instance_id: str) -> str:
        return f"{self.ns}.evt.spot.notice.{escape_key(instance_id)}"

    def drain_order(self, instance_id: str) -> str:
        return f"{self.ns}.cmd.drain.order.{escape_key(instance_id)}"

    def drain_result(self, instance_id: str) -> str:
        return f"{self.ns}.evt.drain.result.{escape_key(instance_id)}"

    def worker_request(self, worker_id: str, verb: str) -> str:
        return f"{self.ns}.req.worker.{escape_key(worker_id)}.{escape_key(verb)}"
