"""Every NATS subject the agent uses, built here and nowhere else.

Form: ``{ns}.{evt|cmd|req}.{domain}.{name}[.{key}]``. The namespace comes first so that permissions and
JetStream streams can scope by ``{ns}.>``; a key comes last and is escaped (see :func:`escape_key`), so an
instance id with a dot cannot split into two tokens. Subscriptions use the ``*_all`` patterns.

The worker protocol, ``{ns}.req.worker.{worker_id}.{op}``, carries two keys: the worker and the operation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_NAMESPACE = "costagent"
_NAMESPACE = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*$")
_SAFE = re.compile(r"[A-Za-z0-9_\-]")
_SAFE_KEY = re.compile(r"[A-Za-z0-9_\-]+")


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
    if _SAFE_KEY.fullmatch(key):
        return key  # the common case, on every publish: no copy
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

    # Spot preemption.
    def spot_notice(self, instance_id: str) -> str:
        """A node sidecar's (or the simulated cloud's) preemption notice."""
        return f"{self.ns}.evt.spot.notice.{escape_key(instance_id)}"

    @property
    def spot_notice_all(self) -> str:
        return f"{self.ns}.evt.spot.notice.*"

    def spot_drain(self, instance_id: str) -> str:
        """Drain orders, spot monitor → migration coordinator."""
        return f"{self.ns}.evt.spot.drain.{escape_key(instance_id)}"

    @property
    def spot_drain_all(self) -> str:
        return f"{self.ns}.evt.spot.drain.*"

    def migration_report(self, instance_id: str) -> str:
        return f"{self.ns}.evt.migration.report.{escape_key(instance_id)}"

    @property
    def migration_report_all(self) -> str:
        return f"{self.ns}.evt.migration.report.*"

    # The router (frontend) and the workers.
    def router_command(self, op: str) -> str:
        """``stop_routing``, ``requeue``, ``worker_lost``: request/reply, answered with a RouterAck."""
        return f"{self.ns}.cmd.router.{escape_key(op)}"

    @property
    def router_command_all(self) -> str:
        return f"{self.ns}.cmd.router.*"

    def worker_request(self, worker_id: str, op: str) -> str:
        """The worker protocol (schemas/workerproto.py), request/reply."""
        return f"{self.ns}.req.worker.{escape_key(worker_id)}.{escape_key(op)}"

    def worker_requests_all(self, worker_id: str) -> str:
        return f"{self.ns}.req.worker.{escape_key(worker_id)}.*"

    def request_update(self, worker_id: str) -> str:
        """Request progress, worker → router."""
        return f"{self.ns}.evt.request.update.{escape_key(worker_id)}"

    @property
    def request_update_all(self) -> str:
        return f"{self.ns}.evt.request.update.*"
