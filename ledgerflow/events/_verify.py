"""Incremental chain checking, shared by ``verify`` and verified reads."""

from __future__ import annotations

import hashlib
import hmac

from ledgerflow.events._chain import ZERO_HASH, chain_step, envelope_bytes, head_mac
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
        if event.seq != self.expected_seq:
            raise self._fail(
                self.expected_seq, "gap", f"expected seq {self.expected_seq}, found {event.seq}"
            )
        if self.prev_hash is not None and event.prev_hash != self.prev_hash:
            raise self._fail(event.seq, "hash mismatch", "prev_hash does not match the previous event's hash")
        envelope = envelope_bytes(
            event_id=event.event_id,
            payload_sha256=hashlib.sha256(event.payload).hexdigest(),
            recorded_at=event.recorded_at,
            schema_version=event.schema_version,
            seq=event.seq,
            stream_id=event.stream_id,
            event_type=event.type,
        )
        if not hmac.compare_digest(chain_step(event.prev_hash, envelope, self.key), event.hash):
            raise self._fail(event.seq, "hash mismatch", "the stored hash does not match the recomputed one")
        self.prev_hash = event.hash
        self.expected_seq += 1
        self.count += 1

    def finish(self, head: StreamHead | None, mac: bytes | None) -> None:
        """Check that the events read end exactly at the recorded head.

        Raises:
            TamperedLogError: A truncated tail, a head that does not match or a bad head MAC.
        """
        last_seq = self.expected_seq - 1
        if head is None:
            raise self._fail(None, "head mismatch", "the stream has events but no head row")
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
