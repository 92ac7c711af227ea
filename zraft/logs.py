"""structlog setup for applications. The library itself only gets loggers.

JSON lines (one file per node) are what ``zraft tail`` reads: keys ``timestamp``
(ISO 8601 UTC), ``level``, ``event`` and the bound ``node``/``term``/``role``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, TextIO

import structlog


def configure(
    log_format: str = "console", log_file: str | None = None, level: str = "info"
) -> TextIO:
    """Configure structlog for a node process; returns the stream written to."""
    if log_file:  # `--log-file logs/n1.jsonl` on a fresh machine: make logs/
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    stream: TextIO = open(log_file, "a", buffering=1) if log_file else sys.stderr  # noqa: SIM115
    renderer: Any
    if log_format == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    return stream
