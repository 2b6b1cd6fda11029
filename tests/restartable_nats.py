"""A real nats-server that a test can stop and start again on the same port (an outage, not a new server).

Clients reconnect to the same URL, as they would after a NATS restart in production. With ``jetstream``
its store directory survives the restart, so a stream can record what reached the server while no test
subscriber was connected yet.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from agent.runtime.nats_server import find_nats_server


class RestartableServer:
    def __init__(self, workdir: Path, *, jetstream: bool = False) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.workdir = workdir
        self.jetstream = jetstream
        self.url = f"nats://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [str(find_nats_server()), "-a", "127.0.0.1", "-p", str(self.port)]
        args += ["-l", str(self.workdir / "nats-server.log")]
        if self.jetstream:
            args += ["-js", "-sd", str(self.workdir / "js")]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_listening()

    def _wait_listening(self, timeout_s: float = 10.0) -> None:
        """Return once the port accepts a connection: a client's first connect is not retried."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)  # a poll of the port, bounded by the deadline above

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
            self._proc = None
