"""Incremental chain checking, shared by ``verify`` and verified reads."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import Any

from ledgerflow.events._chain import ZERO_HASH, chain_step, envelope_bytes, format_envelope, head_mac
from ledgerflow.events._errors import TamperedLogError
from ledgerflow.events._store import RecordedEvent, StreamHead


class ChainChecker:
    """Check one stream's events in seq order and its head row.

    Starting anywhere but seq 1 trusts the first event's stored ``prev_hash``.
    """

    def __init__(self, stream_id: str, *, key: bytes | None, path: str, start_seq: int = 1) -> None:
        self.stream_id = stream_id
        self.key = key
        self.path = path
        self.expected_seq = start_seq
        self.prev_hash: bytes | None = ZERO_HASH if start_seq == 1 else None
        self.count = 0
        # Type names seen to need no JSON escaping, so the fast envelope applies.
        self._plain_types: set[str] = set()
        self._plain_stream = _needs_no_escaping(stream_id)

    def _fail(self, seq: int | None, reason: str, detail: str) -> TamperedLogError:
        where = f"seq {seq}" if seq is not None else "its head"
        return TamperedLogError(
            f"log {self.path} is tampered: stream {self.stream_id!r} fails at {where} ({reason}): {detail}",
            stream_id=self.stream_id, seq=seq, reason=reason,
        )

    def check(self, event: RecordedEvent) -> None:
        """Check the next event.

        Raises:
            TamperedLogError: A gap, a broken link or a hash that does not recompute.
        """
        _, error = self.check_rows([event])
        if error is not None:
            raise error

    def check_rows(self, rows: Sequence[Sequence[Any]]) -> tuple[list[RecordedEvent], TamperedLogError | None]:
        """Check the next rows, in ``events`` column order, and build their events.

        Returns the events that verified and, if a row did not, the error
        for it; rows after a bad one are not checked. The chain is hashed in
        this one loop because it is the hot path of every replay.
        """
        events: list[RecordedEvent] = []
        expected_seq = self.expected_seq
        prev_hash = self.prev_hash
        stream_id = self.stream_id
        key = self.key
        plain_types = self._plain_types
        sha256 = hashlib.sha256
        compare = hmac.compare_digest
        make_event = RecordedEvent._make
        error = None
        for row in rows:
            _, row_stream, seq, event_id, event_type, schema_version, recorded_at, payload, row_prev, row_hash = row
            if seq != expected_seq:
                error = self._fail(expected_seq, "gap", f"expected seq {expected_seq}, found {seq}")
                break
            if prev_hash is not None and row_prev != prev_hash:
                error = self._fail(seq, "hash mismatch", "prev_hash does not match the previous event's hash")
                break
            try:
                payload_sha256 = sha256(payload).hexdigest()
                ids = event_id + recorded_at
                if (
                    event_type in plain_types
                    and row_stream == stream_id
                    and ids.isascii()
                    and ids.isprintable()
                    and '"' not in ids
                    and "\\" not in ids
                    and type(seq) is int
                    and type(schema_version) is int
                ):
                    envelope = format_envelope(
                        event_id, payload_sha256, recorded_at, schema_version, seq, stream_id, event_type
                    )
                else:
                    envelope = self._checked_envelope(row, payload_sha256)
                digest = sha256(row_prev + envelope).digest() if key is None else chain_step(row_prev, envelope, key)
                intact = compare(digest, row_hash)
            except TypeError:  # a column of the wrong type, say a BLOB where TEXT belongs
                intact = False
            if not intact:
                error = self._fail(seq, "hash mismatch", "the stored hash does not match the recomputed one")
                break
            prev_hash = row_hash
            expected_seq += 1
            events.append(make_event(row))
        self.expected_seq = expected_seq
        self.prev_hash = prev_hash
        self.count += len(events)
        return events, error

    def _checked_envelope(self, row: Sequence[Any], payload_sha256: str) -> bytes:
        """Build a row's envelope through :func:`envelope_bytes`, which escapes what JSON would.

        A type name that needs no escaping is remembered, so that the next
        rows of that type, in a stream whose id needs none either, take the
        fast path in :meth:`check_rows`.
        """
        _, row_stream, seq, event_id, event_type, schema_version, recorded_at, _, _, _ = row
        envelope = envelope_bytes(
            event_id=event_id,
            payload_sha256=payload_sha256,
            recorded_at=recorded_at,
            schema_version=schema_version,
            seq=seq,
            stream_id=row_stream,
            event_type=event_type,
        )
        if self._plain_stream and isinstance(event_type, str) and _needs_no_escaping(event_type):
            self._plain_types.add(event_type)
        return envelope

    def check_reached(self, seq: int) -> None:
        """Check that the events read reach ``seq``, below the head.

        Raises:
            TamperedLogError: The events end before ``seq`` (a truncated tail).
        """
        if self.expected_seq <= seq:
            raise self._fail(
                self.expected_seq, "truncated tail", f"the head is past seq {seq} but events end at seq {self.expected_seq - 1}"
            )

    def finish(self, head: StreamHead | None, mac: bytes | None, *, events_after_head: bool = False) -> None:
        """Check that the events read end exactly at the recorded head.

        ``events_after_head`` is true when the caller, having read up to the
        head only, found events after it.

        Raises:
            TamperedLogError: A truncated tail, a head that does not match or a bad head MAC.
        """
        last_seq = self.expected_seq - 1
        if head is None:
            raise self._fail(None, "head mismatch", "the stream has events but no head row")
        if events_after_head:
            raise self._fail(
                head.head_seq, "head mismatch", f"events follow seq {head.head_seq}, where the head row ends the stream"
            )
        if last_seq < head.head_seq:
            raise self._fail(
                last_seq + 1, "truncated tail", f"head is seq {head.head_seq} but events end at seq {last_seq}"
            )
        if last_seq > head.head_seq or (self.prev_hash is not None and self.prev_hash != head.head_hash):
            raise self._fail(
                head.head_seq, "head mismatch", f"the head row (seq {head.head_seq}) does not match the last event"
            )
        if self.key is not None:
            expected = head_mac(self.key, self.stream_id, head.head_seq, head.head_hash)
            if mac is None or not hmac.compare_digest(expected, mac):
                raise self._fail(head.head_seq, "wrong key", "the head MAC does not match the log key")


def _needs_no_escaping(text: str) -> bool:
    return text.isascii() and text.isprintable() and '"' not in text and "\\" not in text
