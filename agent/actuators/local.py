"""The local actuator: each node is one worker process on this machine (a Dynamo worker: the mocker in tests
and the demo, or any ``python -m dynamo.<engine>`` command line from ``[actuator.local] command``).

A node's life, as its InstanceEvents say it:

- ``launched``: a plan asked for it; its process is started at once with the simulated boot as
  ``{startup_time}`` and its labels (type, pool, tier, instance id) in its environment.
- ``ready``: once ``boot_seconds`` have passed since the launch and (``ready_when_listening``) its process
  listens on a TCP port: a Dynamo worker's request plane, open once it is registered. (The mocker's
  simulated ``--startup-time`` does not delay its registration; the boot rule is what keeps it out of the
  plan's count until then.)
- ``draining``: released by a plan (SIGTERM: a Dynamo worker leaves discovery, the frontend stops routing
  to it, and it exits when its streams are done; SIGKILL ``release_grace_seconds`` later if still running),
  or reclaimed by a spot notice (SIGTERM at once; at the notice's deadline the node dies: SIGKILL, and the
  frontend migrates what was still running to the survivors). A node released while booting never served:
  it is killed at once.
- ``terminated``: its process is gone (exited, killed at a deadline, or found gone after a restart).

Every node is recorded in ``<state_dir>/nodes.json`` (written atomically at each change), so that an agent
restarted mid-load adopts the workers that still run (by pid *and* start time) and launches nothing twice;
the workers run in their own sessions and outlive the agent.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import structlog

from agent.actuators.base import NodeChange
from agent.actuators.processes import ProcessId, alive, listening_ports, reap, signal_group, spawn
from agent.actuators.settings import LocalSettings
from agent.core.catalog import Tier
from agent.core.reconcile import Decision, Launch, NodeNow, Refuse, Release, Standing, TakeBack
from agent.runtime.clock import Clock
from schemas import InstanceState

_log = structlog.get_logger("agent.actuators.local")
_STATE_FILE = "nodes.json"
_STATE_VERSION = 1


@dataclass(slots=True)
class LocalNode:
    instance_id: str
    instance_type: str
    pool: str
    tier: Tier
    seq: int
    launched_at: float
    boot_due: float
    pid: int
    started: int
    state: InstanceState = "launched"
    standing: Standing = "held"
    leave_at: float | None = None
    leave_cause: str = ""
    kill_at: float | None = None
    """SIGKILL then: the end of a release's grace, or a notice's deadline."""
    cause: str = ""
    """The plan or notice behind its latest change."""

    @property
    def process(self) -> ProcessId:
        return ProcessId(self.pid, self.started)

    def change(self, state: InstanceState, at: float, cause: str) -> NodeChange:
        self.state = state
        return NodeChange(self.instance_id, self.instance_type, self.pool, self.tier, state, at, cause)


class LocalActuator:
    """See the module's docstring. ``namespace`` names the default state directory."""

    mode = "local"

    def __init__(
        self,
        settings: LocalSettings,
        clock: Clock,
        *,
        boot_s: float,
        namespace: str,
        python: str = sys.executable,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.boot_s = boot_s
        self.python = python
        default_dir = Path.home() / ".local" / "state" / "cost-agent" / namespace
        self.state_dir = Path(settings.state_dir) if settings.state_dir else default_dir
        self.nodes: dict[str, LocalNode] = {}
        """Every node not yet terminated, by instance id."""
        self.launch_failures = 0
        self._exit_codes: dict[str, int] = {}
        self._seq = 0

    # --- the protocol ----------------------------------------------------------------------------

    async def open(self, now: float) -> list[NodeChange]:
        changes: list[NodeChange] = []
        for node in self._load():
            self._seq = max(self._seq, node.seq)
            if node.state == "terminated":
                continue
            if alive(node.process):
                self.nodes[node.instance_id] = node
                changes.append(node.change(node.state, now, node.cause))  # what it is now, said again
                _log.info("worker_adopted", instance_id=node.instance_id, pid=node.pid, state=node.state)
            else:
                changes.append(node.change("terminated", now, "gone while the agent was down"))
        self._save()
        return changes

    def fleet(self, now: float) -> Sequence[NodeNow]:
        return [
            NodeNow(
                node_id=n.instance_id,
                slot=(n.instance_type, n.pool, n.tier),
                launch_order=n.seq,
                ready_at=n.boot_due if n.state == "launched" else None,
                standing=n.standing,
                leave_at=n.leave_at if n.standing == "leaving" else None,
            )
            for n in self.nodes.values()
        ]

    async def carry_out(self, decisions: Sequence[Decision], now: float, cause: str) -> list[NodeChange]:
        changes: list[NodeChange] = []
        for decision in decisions:
            if isinstance(decision, Launch):
                for _ in range(decision.count):
                    changes.extend(self._launch(decision, now, cause))
            elif isinstance(decision, Refuse):
                continue  # nothing to do: the actor counts refusals
            elif isinstance(decision, TakeBack):
                node = self.nodes[decision.node_id]
                node.standing, node.leave_at, node.leave_cause = "held", None, ""
            elif isinstance(decision, Release) and decision.leave_at is not None:
                node = self.nodes[decision.node_id]
                node.standing, node.leave_at, node.leave_cause = "leaving", decision.leave_at, cause
            else:
                changes.extend(self._release(self.nodes[decision.node_id], now, cause))
        self._save()
        return changes

    async def reclaim(self, instance_id: str, deadline: float, now: float, cause: str) -> list[NodeChange]:
        node = self.nodes.get(instance_id)
        if node is None or node.standing == "reclaimed":
            return []
        node.standing, node.leave_at, node.kill_at, node.cause = "reclaimed", None, deadline, cause
        signal_group(node.process, signal.SIGTERM)
        _log.info("worker_draining", instance_id=instance_id, pid=node.pid, why="notice", deadline=deadline)
        changes = [] if node.state == "draining" else [node.change("draining", now, cause)]
        self._save()
        return changes

    async def poll(self, now: float) -> list[NodeChange]:
        changes: list[NodeChange] = []
        for node in sorted(self.nodes.values(), key=lambda n: n.seq):
            if not self._running(node):
                drained = node.standing in ("released", "reclaimed")
                changes.append(self._gone(node, now, node.cause if drained else "", self._exit_reason(node)))
            elif node.kill_at is not None and now >= node.kill_at:
                signal_group(node.process, signal.SIGKILL)
                self._reap(node)
                why = (
                    "notice deadline: the node died" if node.standing == "reclaimed" else "release grace over"
                )
                changes.append(self._gone(node, now, node.cause, why))
            elif node.state == "launched" and now >= node.boot_due and self._serving(node):
                changes.append(node.change("ready", now, node.cause))
            elif node.standing == "leaving" and node.leave_at is not None and now >= node.leave_at:
                cause = node.leave_cause
                node.leave_at, node.leave_cause = None, ""
                changes.extend(self._release(node, now, cause))
        if changes:
            self._save()
        return changes

    async def close(self) -> None:
        self._save()  # the workers run on: a restarted agent adopts them

    # --- queries ---------------------------------------------------------------------------------

    def runs(self, instance_id: str) -> bool:
        return instance_id in self.nodes

    async def stop_all(self, grace_s: float = 5.0) -> None:
        """SIGTERM every worker, SIGKILL what is left after ``grace_s`` real seconds (the demo's end; an
        agent stopping never does this: the fleet outlives it)."""
        for node in self.nodes.values():
            signal_group(node.process, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        for _ in range(max(1, int(grace_s / 0.05))):
            if not any(self._running(n) for n in self.nodes.values()) or loop.time() > deadline:
                break
            await asyncio.sleep(0.05)  # a poll: a process's exit has no event to await here
        for node in self.nodes.values():
            signal_group(node.process, signal.SIGKILL)
            self._reap(node)

    # --- one node --------------------------------------------------------------------------------

    def _launch(self, decision: Launch, now: float, cause: str) -> list[NodeChange]:
        name, pool, tier = decision.slot
        self._seq += 1
        instance_id = f"{name}-{pool}-{tier}-{self._seq}"
        labels = {"instance_id": instance_id, "instance_type": name, "pool": pool, "tier": tier}
        argv = self._argv(labels)
        env = {**os.environ, **self.settings.env}
        env.update({f"COSTAGENT_{k.upper()}": v for k, v in labels.items()})
        try:
            pid = spawn(argv, env, self.state_dir / "logs" / f"{instance_id}.log")
        except OSError as err:
            self.launch_failures += 1
            _log.error("launch_failed", instance_id=instance_id, command=argv[0], error=str(err))
            return []
        node = LocalNode(
            instance_id=instance_id,
            instance_type=name,
            pool=pool,
            tier=tier,
            seq=self._seq,
            launched_at=now,
            boot_due=now + self.boot_s,
            pid=pid.pid,
            started=pid.started,
            cause=cause,
        )
        self.nodes[instance_id] = node
        _log.info("worker_launched", instance_id=instance_id, pid=pid.pid)
        return [node.change("launched", now, cause)]

    def _argv(self, labels: Mapping[str, str]) -> list[str]:
        values = {
            **labels,
            "python": self.python,
            "startup_time": f"{self.clock.real_seconds(self.boot_s):g}",
        }
        return [arg.format_map(values) for arg in self.settings.command]

    def _release(self, node: LocalNode, now: float, cause: str) -> list[NodeChange]:
        """A plan gives the node up: a booting one never served and goes at once; a running one drains."""
        node.cause = cause
        if node.state == "launched":
            signal_group(node.process, signal.SIGKILL)
            self._reap(node)
            return [self._gone(node, now, cause, "released while booting")]
        node.standing, node.leave_at = "released", None
        node.kill_at = now + self.settings.release_grace_seconds
        signal_group(node.process, signal.SIGTERM)
        _log.info("worker_draining", instance_id=node.instance_id, pid=node.pid, why="released")
        return [node.change("draining", now, cause)]

    def _gone(self, node: LocalNode, now: float, cause: str, why: str) -> NodeChange:
        del self.nodes[node.instance_id]
        self._exit_codes.pop(node.instance_id, None)
        _log.info("worker_gone", instance_id=node.instance_id, pid=node.pid, why=why)
        return node.change("terminated", now, cause)

    def _running(self, node: LocalNode) -> bool:
        code = reap(node.pid)
        if code is not None:
            self._exit_codes[node.instance_id] = code
            return False  # our child exited (collected now)
        return node.instance_id not in self._exit_codes and alive(node.process)

    def _serving(self, node: LocalNode) -> bool:
        return not self.settings.ready_when_listening or bool(listening_ports(node.pid))

    def _exit_reason(self, node: LocalNode) -> str:
        code = self._exit_codes.get(node.instance_id)
        return "exited" if code is None else f"exited with code {code}"

    def _reap(self, node: LocalNode) -> None:
        """After a SIGKILL: collect the child's exit, so that no zombie is left (waits at most 2 s)."""
        for _ in range(200):
            if not self._running(node):
                return
            time.sleep(0.01)  # a SIGKILLed process is gone within milliseconds
        _log.warning("worker_not_reaped", instance_id=node.instance_id, pid=node.pid)

    # --- the record ------------------------------------------------------------------------------

    def _load(self) -> list[LocalNode]:
        path = self.state_dir / _STATE_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as err:
            raise RuntimeError(
                f"{path}: unreadable node record ({err}); move it away to start afresh"
            ) from None
        if not isinstance(data, dict) or data.get("version") != _STATE_VERSION:
            raise RuntimeError(
                f"{path}: not a version-{_STATE_VERSION} node record; move it away to start afresh"
            )
        self._seq = int(data.get("seq", 0))
        try:
            return [LocalNode(**record) for record in data.get("nodes", [])]
        except TypeError as err:
            raise RuntimeError(f"{path}: a node record does not fit ({err})") from None

    def _save(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        path = self.state_dir / _STATE_FILE
        tmp = path.with_suffix(".tmp")
        data = {
            "version": _STATE_VERSION,
            "seq": self._seq,
            "nodes": [asdict(n) for n in self.nodes.values()],
        }
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, path)  # atomic: a crash leaves the old record or the new one
