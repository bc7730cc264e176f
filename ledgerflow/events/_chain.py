"""The hash chain: envelope bytes, chain steps, log keys and head MACs.

For event n of stream S::

    envelope = json.dumps({"event_id": E, "payload_sha256": P, "recorded_at": R,
                           "schema_version": V, "seq": n, "stream_id": S, "type": T},
                          sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    hash = sha256(prev_hash + envelope)            # unkeyed log
    hash = hmac_sha256(key, prev_hash + envelope)  # keyed log

``prev_hash`` is 32 zero bytes for n = 1. docs/log-format.md has the full
recipe and a standalone verifier.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import re

from ledgerflow.events._errors import InvalidStreamIdError

ZERO_HASH = bytes(32)
CHAIN_SHA256 = "sha256"
CHAIN_HMAC = "hmac-sha256"
KEY_ENV = "LEDGERFLOW_LOG_KEY"
MIN_KEY_BYTES = 32

STREAM_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_UUID_PATTERN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TIMESTAMP_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")


def format_recorded_at(moment: dt.datetime) -> str:
    """Format a time as the 27-character UTC string that is stored and hashed."""
    if moment.tzinfo is None:
        raise ValueError(f"recorded_at must be timezone-aware, got naive {moment!r}")
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_recorded_at(text: str) -> dt.datetime:
    """Parse a stored ``recorded_at`` string back into an aware UTC datetime."""
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc)


def envelope_bytes(
    *,
    event_id: str,
    payload_sha256: str,
    recorded_at: str,
    schema_version: int,
    seq: int,
    stream_id: str,
    event_type: str,
) -> bytes:
    """Return the canonical envelope bytes that a chain step hashes.

    The values are constrained (a UUID, a hex digest, a fixed-format time,
    integers, and ids and type names from small ASCII alphabets), so the
    string below is byte for byte what ``json.dumps(..., sort_keys=True,
    separators=(",", ":"))`` produces, without its cost; a test pins the
    equality. Values outside those alphabets fall back to ``json.dumps``.
    """
    if (
        STREAM_ID_PATTERN.fullmatch(stream_id)
        and _UUID_PATTERN.fullmatch(event_id)
        and _TIMESTAMP_PATTERN.fullmatch(recorded_at)
        and '"' not in event_type
        and "\\" not in event_type
        and event_type.isascii()
    ):
        return (
            f'{{"event_id":"{event_id}","payload_sha256":"{payload_sha256}",'
            f'"recorded_at":"{recorded_at}","schema_version":{int(schema_version)},'
            f'"seq":{int(seq)},"stream_id":"{stream_id}","type":"{event_type}"}}'
        ).encode("ascii")
    return json.dumps(
        {
            "event_id": event_id,
            "payload_sha256": payload_sha256,
            "recorded_at": recorded_at,
            "schema_version": schema_version,
            "seq": seq,
            "stream_id": stream_id,
            "type": event_type,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    ).encode("utf-8")


def chain_step(prev_hash: bytes, envelope: bytes, key: bytes | None = None) -> bytes:
    """Return the hash of an event from its predecessor's hash and its envelope."""
    if key is None:
        return hashlib.sha256(prev_hash + envelope).digest()
    return hmac.new(key, prev_hash + envelope, hashlib.sha256).digest()


def key_id(key: bytes) -> str:
    """Return the public identifier of a log key (16 hex characters)."""
    return hmac.new(key, b"ledgerflow key id", hashlib.sha256).hexdigest()[:16]


def head_mac(key: bytes, stream_id: str, head_seq: int, head_hash: bytes) -> bytes:
    """Return the MAC that binds a stream's head row to the log key."""
    message = stream_id.encode() + b"\0" + str(head_seq).encode() + b"\0" + head_hash
    return hmac.new(key, message, hashlib.sha256).digest()


def parse_key(text: str) -> bytes:
    """Parse a hex log key.

    Raises:
        ValueError: The text is not hex or is shorter than 32 bytes.
    """
    try:
        key = bytes.fromhex(text.strip())
    except ValueError as err:
        raise ValueError(f"{KEY_ENV} is not a hex string: {err}") from err
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(
            f"{KEY_ENV} holds {len(key)} bytes; use at least {MIN_KEY_BYTES} "
            "(for example: python -c 'import secrets; print(secrets.token_hex(32))')"
        )
    return key


def key_from_environment() -> bytes | None:
    """Return the log key from ``LEDGERFLOW_LOG_KEY``, or None when it is unset or empty."""
    text = os.environ.get(KEY_ENV, "")
    return parse_key(text) if text.strip() else None


def validate_stream_id(stream_id: str) -> str:
    """Return ``stream_id`` unchanged, or raise InvalidStreamIdError."""
    if not isinstance(stream_id, str) or not STREAM_ID_PATTERN.fullmatch(stream_id):
        raise InvalidStreamIdError(str(stream_id))
    return stream_id
