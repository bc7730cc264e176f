"""structlog set-up: JSON lines off a terminal, readable lines on one, secrets redacted."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

_configured = False
_REDACTED_KEYS = ("secret", "password", "token", "api_key", "apikey", "authorization")


def _redact(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    for key in list(event_dict):
        if any(marker in key.lower() for marker in _REDACTED_KEYS):
            event_dict[key] = "[redacted]"
    return event_dict


def configure_logging(level: str | None = None, *, force: bool = False) -> None:
    """Configure structlog once per process (level from ``LEDGERFLOW_LOG_LEVEL``, default info)."""
    global _configured
    if _configured and not force:
        return
    name = (level or os.environ.get("LEDGERFLOW_LOG_LEVEL") or "info").upper()
    numeric = getattr(logging, name, logging.INFO)
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
            _redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    _configured = True
