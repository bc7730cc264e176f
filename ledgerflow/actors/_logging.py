"""structlog set-up: JSON lines off a terminal, readable lines on one, secrets redacted.

ledgerflow configures structlog once per process (the command line, each
executor and each Ray worker). Lines go to standard error, so a worker's
lines also reach Ray's session logs, and every value of every line passes
through :func:`ledgerflow.events.redact` first.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

from ledgerflow.events import redact

LEVEL_ENV = "LEDGERFLOW_LOG_LEVEL"
LEVELS = ("debug", "info", "warning", "error", "critical")

_configured: str | None = None


def redact_processor(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Mask secrets in every value of a log line, including a formatted traceback."""
    return redact(event_dict)


def resolve_level(level: str | None = None) -> str:
    """Return the log level to use: ``level``, else ``LEDGERFLOW_LOG_LEVEL``, else ``info``.

    Raises:
        ValueError: The level is not one of :data:`LEVELS`.
    """
    name = (level or os.environ.get(LEVEL_ENV) or "info").lower()
    if name not in LEVELS:
        raise ValueError(f"invalid log level {name!r}: use one of {', '.join(LEVELS)}")
    return name


def configure_logging(level: str | None = None, *, force: bool = False) -> None:
    """Configure structlog for this process.

    A later call changes the configuration only when it names another
    level or sets ``force``, so library calls without a level keep the level
    the command line chose.

    Off a terminal each line is one JSON object; in a terminal it is a
    readable line. Lines logged inside a node attempt carry ``run_id``,
    ``node``, ``partition`` and ``attempt`` through structlog's context
    variables, which the logging middleware binds.
    """
    global _configured
    if level is None and _configured is not None and not force:
        return
    name = resolve_level(level)
    if _configured == name and not force:
        return
    renderer: Any
    if sys.stderr.isatty():
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, name.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    _configured = name
