"""The one redaction function: masks secrets in text, mappings and events.

Every boundary where text leaves a process applies it: log lines, events
before they are appended, errors the command line prints, approval samples
and exports. It masks

- values registered with :func:`register_secret` (a revealed secret
  parameter registers its value in the process that reads it),
- passwords in URLs (``scheme://user:PASSWORD@host``),
- values of keys that name a credential (``password=…``, ``"token": …``,
  ``Authorization: …``), in text and in mappings such as an MCP server's
  environment or headers,
- well-known token formats: GitHub (``ghp_…``, ``github_pat_…``), Slack
  (``xoxb-…``, ``xoxp-…``), AWS access key ids (``AKIA…``), ``Bearer …``
  credentials and JSON Web Tokens.

Pattern matching is a safety net: a secret of no known shape that never
went through :func:`register_secret` is not recognised.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import Any

from ledgerflow.events._model import Event

MASK = "[redacted]"

#: Parts of key names whose values are credentials (compared in lower case).
SECRET_KEY_MARKERS = ("password", "passwd", "pwd", "secret", "token", "api_key", "apikey", "api-key",
                      "authorization", "credential", "cookie", "private_key")

#: Suffixes of key names that refer to a credential's location rather than contain it.
REFERENCE_SUFFIXES = ("_file", "_path", "_env", "_ref")

#: Registered values shorter than this are not masked, because masking "a" or "42" everywhere hides real data.
MIN_SECRET_LENGTH = 6

_KEY_WORDS = r"[A-Za-z0-9_-]*(?:password|passwd|pwd|secret|token|api[_-]?key|authorization|credential)[A-Za-z0-9_-]*"
#: Between a credential key and its value: ``=``, or a colon followed by a space or inside quotes.
#: A bare colon is left alone, so locators such as ``secrets.py:pipeline`` keep their attribute.
_KEY_SEPARATOR = r"(?:[\"']?\s*=\s*[\"']?|:\s+[\"']?|[\"']\s*:\s*[\"']?)"

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # scheme://user:PASSWORD@host, keeping the scheme, user and host.
    (re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s:/@'\"]*:)[^\s@/'\"]+(@)"), rf"\1{MASK}\2"),
    (re.compile(r"\bBearer\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE), f"Bearer {MASK}"),
    (re.compile(r"\bBasic\s+[A-Za-z0-9+/=]{8,}", re.IGNORECASE), f"Basic {MASK}"),
    (re.compile(r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{20,}"), MASK),
    (re.compile(r"\bgithub_pat_[A-Za-z0-9_]{20,}"), MASK),
    (re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"), MASK),
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), MASK),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]+"), MASK),
    # key=value, key: value and "key": "value", for keys that name a credential.
    (re.compile(rf"(?i)(\b{_KEY_WORDS}{_KEY_SEPARATOR})(?!\[redacted\])[^\s\"',;&}}]+"), rf"\1{MASK}"),
)

_lock = threading.Lock()
_registered: set[str] = set()
_registered_pattern: re.Pattern[str] | None = None


def register_secret(value: str) -> None:
    """Mask ``value`` wherever this process redacts from now on.

    Values shorter than :data:`MIN_SECRET_LENGTH` are ignored.
    """
    global _registered_pattern
    if not isinstance(value, str) or len(value) < MIN_SECRET_LENGTH:
        return
    with _lock:
        if value in _registered:
            return
        _registered.add(value)
        # Sorted by length, longest first, so that a secret containing another is masked whole.
        ordered = sorted(_registered, key=len, reverse=True)
        _registered_pattern = re.compile("|".join(re.escape(item) for item in ordered))


def is_secret_key(key: str) -> bool:
    """Return whether a key name (an environment variable, a header, a field) names a credential.

    Names ending in one of :data:`REFERENCE_SUFFIXES` (``token_file``) say where a
    credential is, not what it is, so they do not count.
    """
    lowered = key.lower()
    if lowered.endswith(REFERENCE_SUFFIXES):
        return False
    return any(marker in lowered for marker in SECRET_KEY_MARKERS)


def redact(value: Any) -> Any:
    """Return ``value`` with secrets masked.

    Strings are masked in place of each secret. Mappings, lists and tuples
    are copied with their items redacted, and the values of credential keys
    (see :func:`is_secret_key`) are masked whole. Other values are returned
    unchanged.
    """
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {key: MASK if isinstance(key, str) and isinstance(item, str) and item and is_secret_key(key)
                else redact(item) for key, item in value.items()}
    if isinstance(value, list):
        return [redact(item) for item in value]
    if isinstance(value, tuple):
        return tuple(redact(item) for item in value)
    return value


def redact_event(event: Event) -> Event:
    """Return ``event`` with secrets masked in its fields, or ``event`` itself when none were found."""
    data = event.model_dump(mode="python")
    cleaned = redact(data)
    if cleaned == data:
        return event
    return type(event).model_validate(cleaned)


def redact_text(text: str) -> str:
    """Return ``text`` with registered secrets and known credential shapes masked."""
    pattern = _registered_pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    for compiled, replacement in _PATTERNS:
        text = compiled.sub(replacement, text)
    return text
