"""Operational logging: structlog to stderr, JSON lines (or console for people).

Contract: imported and configured only by ``proc/*`` entry points. Log events are snake_case
past-tense facts with fixed keys (``queue_id``, ``rcpt``, ``site``, ``mx``, ``ip``, ``code``...).
"""

from __future__ import annotations

import logging
import sys

import orjson
import structlog

from ..config import Config

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def tune_gc() -> None:
    """Fewer cyclic-GC passes: engine processes allocate many short-lived, acyclic objects per
    recipient (dicts, tuples), and the default thresholds (700, 10, 10) run a full collection of
    a large heap every few rounds. Objects alive after startup are frozen out of collection."""
    import gc

    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def configure(cfg: Config, *, role: str) -> None:
    renderer: structlog.typing.Processor
    if cfg.log.format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
        logger_factory = structlog.PrintLoggerFactory(sys.stderr)
    else:
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        logger_factory = structlog.BytesLoggerFactory(sys.stderr.buffer)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[cfg.log.level]),
        logger_factory=logger_factory,
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(role=role)
    tune_gc()
