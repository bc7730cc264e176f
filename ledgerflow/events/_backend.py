"""Pieces that every SQL event store shares: the meta check, chaining a batch, retried appends, verified reads.

A backend subclasses :class:`ChainedStore` and supplies the few queries it
needs; the chain rules stay in one place.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

from ledgerflow.events._chain import CHAIN_HMAC, CHAIN_SHA256, chain_step, format_envelope, key_id
from ledgerflow.events._errors import LogFormatError, NotALogError, StoreError, TamperedLogError, UsageError
from ledgerflow.events._store import EncodedEvent, RecordedEvent, StreamHead, StreamReport, VerifyReport, AppendResult
from ledgerflow.events._verify import ChainChecker

FORMAT_NAME = "ledgerflow-log"
FORMAT_VERSION = 1


def chain_rows(
    stream_id: str, encoded: list[EncodedEvent], version: int, prev_hash: bytes, key: bytes | None
) -> tuple[list[tuple[Any, ...]], bytes]:
    """Chain a batch after seq ``version`` and return its rows and the last hash.

    Each row is in insert order: stream_id, seq, event_id, type,
    schema_version, recorded_at, payload, prev_hash, hash.
    """
    rows: list[tuple[Any, ...]] = []
    seq = version
    sha256 = hashlib.sha256
    for event_id, event_type, schema_version, recorded_at, payload, payload_sha256 in encoded:
        seq += 1
        # encode_events made every field of the envelope, so it needs no escaping check.
        envelope = format_envelope(event_id, payload_sha256, recorded_at, schema_version, seq, stream_id, event_type)
        digest = sha256(prev_hash + envelope).digest() if key is None else chain_step(prev_hash, envelope, key)
        rows.append((stream_id, seq, event_id, event_type, schema_version, recorded_at, payload, prev_hash, digest))
        prev_hash = digest
    return rows, prev_hash


def initial_meta(key: bytes | None) -> dict[str, str]:
    """Return the ``meta`` rows of a new log."""
    chain = CHAIN_HMAC if key is not None else CHAIN_SHA256
    initial = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), "chain": chain}
    if key is not None:
        initial["key_id"] = key_id(key)
    return initial


def check_meta(meta: dict[str, str], path: str, key: bytes | None) -> str:
    if meta.get("format") != FORMAT_NAME:
        raise NotALogError(f"{path} is not a ledgerflow log (meta has no format row): pass another --home or --store", path=path)
    try:
        version = int(meta.get("format_version", "0"))
    except ValueError:
        raise LogFormatError(
            f"{path} has an invalid log format version {meta.get('format_version')!r} in its meta table",
            path=path,
        ) from None
    if version > FORMAT_VERSION:
        raise LogFormatError(
            f"{path} has log format version {version}, newer than the {FORMAT_VERSION} this ledgerflow "
            "reads: upgrade ledgerflow",
            path=path,
        )
    chain = meta.get("chain", CHAIN_SHA256)
    if chain not in (CHAIN_SHA256, CHAIN_HMAC):
        raise LogFormatError(
            f"{path} uses the chain {chain!r}, which this ledgerflow does not know: upgrade ledgerflow",
            path=path,
        )
    if chain == CHAIN_HMAC and key is None:
        raise UsageError(
            f"the log {path} is keyed (key id {meta.get('key_id')}): set LEDGERFLOW_LOG_KEY to its key"
        )
    if chain == CHAIN_SHA256 and key is not None:
        raise TamperedLogError(
            f"log {path} is unkeyed but LEDGERFLOW_LOG_KEY is set: a keyed log never loses its key, "
            "so treat this file as tampered (or unset the key if the log was created without one)",
            stream_id="", seq=None, reason="wrong key",
        )
    if key is not None and meta.get("key_id") != key_id(key):
        raise TamperedLogError(
            f"log {path} was keyed with key id {meta.get('key_id')}, not {key_id(key)}: "
            "set LEDGERFLOW_LOG_KEY to the log's key",
            stream_id="", seq=None, reason="wrong key",
        )
    return chain


def retried_append(
    stream_id: str, encoded: list[EncodedEvent], stored: dict[str, tuple[str, int, bytes]]
) -> AppendResult:
    if len(stored) != len(encoded) or any(stream != stream_id for stream, _, _ in stored.values()):
        raise repeated_ids_error(stream_id, encoded, stored)
    seqs = sorted(stored.values(), key=lambda entry: entry[1])
    return AppendResult(stream_id, seqs[0][1], seqs[-1][1], seqs[-1][2], written=False)


def repeated_ids_error(
    stream_id: str, encoded: list[EncodedEvent], stored: dict[str, tuple[str, int, bytes]]
) -> StoreError:
    example = next(iter(stored.items()), None)
    where = f"; for example {example[0]} is seq {example[1][1]} of stream {example[1][0]!r}" if example else ""
    return StoreError(
        f"append to stream {stream_id!r} repeats {len(stored)} of {len(encoded)} event ids that are "
        f"already stored{where}: a retried append must resend the same batch to the same stream"
    )


class ChainedStore:
    """Verified reads and ``verify`` on top of a backend's row queries.

    A subclass sets ``path``, ``chain`` and ``_key`` and implements
    ``head``, ``_head_with_mac``, ``_stream_chunks``, ``_has_event`` and
    ``_all_stream_ids``.
    """

    path: str
    chain: str
    _key: bytes | None

    async def head(self, stream_id: str) -> StreamHead | None:
        raise NotImplementedError

    async def _head_with_mac(self, stream_id: str) -> tuple[StreamHead, bytes | None] | None:
        raise NotImplementedError

    def _stream_chunks(self, stream_id: str, from_seq: int, to_seq: int) -> AsyncIterator[list[Any]]:
        """Yield the stream's rows from seq ``from_seq`` to ``to_seq`` in ``events`` column order, in chunks."""
        raise NotImplementedError

    async def _has_event(self, stream_id: str, seq: int) -> bool:
        raise NotImplementedError

    async def _all_stream_ids(self) -> list[str]:
        """Return the ids of streams with a head row or events, sorted."""
        raise NotImplementedError

    async def read_stream(
        self, stream_id: str, *, from_seq: int = 1, to_seq: int | None = None, verify: bool = True
    ) -> AsyncIterator[RecordedEvent]:
        """Yield the stream's events in seq order, fetched in chunks of ``READ_CHUNK``.

        The read stops at the head as of its start (or at ``to_seq``, if
        lower), so events appended meanwhile are not included. With
        ``verify`` the chain is checked on the way, and a read that reaches
        that head also checks the head row. Events before a bad one are
        yielded before the error is raised.

        Raises:
            TamperedLogError: The chain does not verify.
        """
        head_row = await self._head_with_mac(stream_id) if verify or to_seq is None else None
        head_seq = head_row[0].head_seq if head_row else None
        if head_seq is None:
            end = 2**62 if to_seq is None else to_seq
        else:
            end = head_seq if to_seq is None else min(to_seq, head_seq)
        checker = ChainChecker(stream_id, key=self._key, path=self.path, start_seq=from_seq) if verify else None

        async for rows in self._stream_chunks(stream_id, from_seq, end):
            if checker is None:
                for row in rows:
                    yield RecordedEvent._make(row)
                continue
            events, error = checker.check_rows(rows)
            for event in events:
                yield event
            if error is not None:
                raise error

        if checker is None:
            return
        if head_row is None:
            if checker.count:
                checker.finish(None, None)
        elif end == head_seq and from_seq <= head_seq:
            checker.finish(head_row[0], head_row[1], events_after_head=await self._events_after_head(stream_id, head_seq))
        else:
            checker.check_reached(end)

    async def _events_after_head(self, stream_id: str, head_seq: int) -> bool:
        """Return whether events follow ``head_seq`` while the head row still ends the stream there.

        An append commits its events and the head row together, and the
        event is looked up first, so only a rewound head row returns True.
        """
        if not await self._has_event(stream_id, head_seq + 1):
            return False
        head = await self.head(stream_id)
        return head is None or head.head_seq == head_seq


    # Verification

    async def verify(self, stream_id: str | None = None) -> VerifyReport:
        """Recompute every chain (or one stream's) and report the first bad seq of each."""
        if stream_id is not None:
            stream_ids = [stream_id]
        else:
            stream_ids = await self._all_stream_ids()
        reports = [await self._verify_stream(stream) for stream in stream_ids]
        return VerifyReport(path=self.path, chain=self.chain, streams=tuple(reports))

    async def _verify_stream(self, stream_id: str) -> StreamReport:
        checker = ChainChecker(stream_id, key=self._key, path=self.path)
        head_row = None
        try:
            # Events are read before the head row. An append commits both
            # together, so a head past the last event read means appends
            # landed meanwhile (read on) or the tail was cut (nothing more).
            while True:
                count_before = checker.count
                async for rows in self._stream_chunks(stream_id, checker.expected_seq, 2**62):
                    _, error = checker.check_rows(rows)
                    if error is not None:
                        raise error
                head_row = await self._head_with_mac(stream_id)
                behind = head_row is not None and head_row[0].head_seq >= checker.expected_seq
                if not behind or checker.count == count_before:
                    break
            checker.finish(head_row[0] if head_row else None, head_row[1] if head_row else None)
        except TamperedLogError as err:
            if head_row is None:
                head_row = await self._head_with_mac(stream_id)
            return StreamReport(
                stream_id=stream_id, ok=False, events=checker.count,
                head_seq=head_row[0].head_seq if head_row else None,
                head_hash=head_row[0].head_hash.hex() if head_row else None,
                first_bad_seq=err.seq, reason=err.reason, detail=str(err),
            )
        return StreamReport(
            stream_id=stream_id, ok=True, events=checker.count,
            head_seq=head_row[0].head_seq if head_row else None,
            head_hash=head_row[0].head_hash.hex() if head_row else None,
        )
