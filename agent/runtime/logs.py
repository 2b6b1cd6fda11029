"""structlog set-up, done once by the CLI: JSON lines on a pipe or file, readable lines on a terminal."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import msgspec
import structlog


def _dumps(obj: Any, default: Any = None, **_: Any) -> str:
    # structlog's JSONRenderer passes default=; msgspec calls it enc_hook.
    return msgspec.json.encode(obj, enc_hook=default).decode()


def _fallback(obj: Any) -> str:
    return repr(obj)


def configure_logging(*, json: bool | None = None, level: str = "info", stream: TextIO | None = None) -> None:
    out = stream if stream is not None else sys.stderr
    as_json = (not out.isatty()) if json is None else json
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"log level {level!r}: use debug, info, warning or error")
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_dumps, default=_fallback)
        if as_json
        else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info if as_json else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
