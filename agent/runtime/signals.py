"""SIGTERM and SIGINT as a stop event: how ``cost-agent run`` and ``cost-agent sidecar`` are told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator
from typing import Final

STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event, *, install: bool = True) -> Iterator[None]:
    """Within the block, SIGTERM or SIGINT sets ``stop`` (nothing else: shutdown is the owner's, so that
    it drains first). ``install=False`` leaves the handlers alone, for a caller that is not the process's
    main loop (a test)."""
    signals = STOP_SIGNALS if install else ()
    loop = asyncio.get_running_loop()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        yield
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
