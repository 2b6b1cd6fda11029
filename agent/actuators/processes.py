"""Worker processes that outlive the agent: started in their own session, found again by pid and start time.

A process is identified by its pid *and* its start time (``/proc/<pid>/stat``, field 22, in clock ticks since
boot), so that a pid reused by an unrelated process after a worker exited is never taken for the worker
(Linux). Signals go to the process group: a worker that forks helpers takes them with it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ProcessId:
    pid: int
    started: int
    """Clock ticks since boot when it started; 0 when unknown (then the pid alone identifies it)."""


def start_ticks(pid: int) -> int | None:
    """The process's start time in ticks since boot; None when there is no such process (or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces: split after its last ")".
    fields = stat[stat.rfind(")") + 2 :].split()
    if not fields or fields[0] == "Z":
        return None  # a zombie has exited: only its exit status is left
    return int(fields[19])


def alive(process: ProcessId) -> bool:
    """Whether this very process is still running (not a zombie, not a newer process with its pid)."""
    ticks = start_ticks(process.pid)
    return ticks is not None and (process.started == 0 or ticks == process.started)


def spawn(argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> ProcessId:
    """Start ``argv`` (searched on PATH) in a new session, so that a signal meant for the agent is not one
    for its workers and they run on when the agent stops; stdin from /dev/null, stdout and stderr appended
    to ``log_path``. Raises OSError when it cannot be started (no such program, not executable).

    ``posix_spawn``, not ``subprocess``: the agent may be restarted in-process and forget a worker, which
    must not be reaped or warned about by a Popen object's finaliser; :func:`reap` collects the exit."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(log_path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    pid = os.posix_spawnp(argv[0], list(argv), dict(env), file_actions=actions, setsid=True)
    return ProcessId(pid, start_ticks(pid) or 0)


def reap(pid: int) -> int | None:
    """The exit status of ``pid`` if it is a child of this process that has exited (collected now);
    None when it runs, or is not our child (a worker adopted after a restart)."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status) if done == pid else None


def signal_group(process: ProcessId, sig: signal.Signals) -> bool:
    """Send ``sig`` to the process's group (its session: it leads it); False when it is already gone."""
    if not alive(process):
        return False
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        os.kill(process.pid, sig)  # not the group leader any more: at least the worker itself
    return True


def listening_ports(pid: int) -> set[tuple[str, int]]:
    """``(ip, port)`` of the TCP sockets process ``pid`` listens on (IPv4, from ``/proc``): how a worker is
    seen to be up (a Dynamo worker listens on its request plane once registered), and how the test harness
    learns the ports the OS gave Dynamo, which does not log its HTTP port."""
    inodes: set[str] = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue  # closed meanwhile
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
        table = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return set()  # gone, or not yet there
    ports: set[tuple[str, int]] = set()
    for line in table:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and inode in inodes:  # 0A: LISTEN
            address, port = local.split(":")
            ip = ".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0))  # little-endian
            ports.add((ip, int(port, 16)))
    return ports
