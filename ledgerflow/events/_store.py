"""The event store contract shared by every backend."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ledgerflow.events._chain import format_recorded_at, parse_recorded_at
from ledgerflow.events._codec import decode_payload, encode_payload
from ledgerflow.events._errors import (
    EventDecodeError,
    PayloadValidationError,
    UnknownEventTypeError,
)
from ledgerflow.events._model import Event, event_class, upcast

#: Events fetched per query when reading; memory stays flat however long the stream.
READ_CHUNK = 2000


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event about to be appended, with the id that makes a retried append a no-op."""

    event: Event
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    recorded_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class EncodedEvent:
    """An event encoded for storage, before the store gives it a seq and a hash."""

    event_id: str
    event_type: str
    schema_version: int
    recorded_at: str
    payload: bytes
    payload_sha256: str

    @classmethod
    def from_new(cls, item: Event | NewEvent) -> EncodedEvent:
        new = item if isinstance(item, NewEvent) else NewEvent(item)
        payload = encode_payload(new.event)
        moment = new.recorded_at or dt.datetime.now(dt.timezone.utc)
        return cls(
            event_id=str(uuid.UUID(new.event_id)),
            event_type=type(new.event).event_type,
            schema_version=type(new.event).schema_version,
            recorded_at=format_recorded_at(moment),
            payload=payload,
            payload_sha256=hashlib.sha256(payload).hexdigest(),
        )


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """An event as stored: its envelope, its payload bytes and its place in the chain."""

    global_position: int
    stream_id: str
    seq: int
    event_id: str
    type: str
    schema_version: int
    recorded_at: str
    payload: bytes
    prev_hash: bytes
    hash: bytes

    @property
    def recorded_time(self) -> dt.datetime:
        """The ``recorded_at`` text as an aware UTC datetime."""
        return parse_recorded_at(self.recorded_at)

    def decode(self, path: str | None = None) -> Event:
        """Decode the payload into its current model, upcasting older versions.

        Raises:
            UnknownEventTypeError: The type is not registered here.
            PayloadValidationError: The payload does not fit the model.
        """
        cls = event_class(self.type)
        where = f"stream {self.stream_id!r} seq {self.seq}" + (f" in {path}" if path else "")
        if cls is None:
            raise UnknownEventTypeError(
                f"unknown event type {self.type!r} at {where}: upgrade ledgerflow or import "
                "the module that defines this event type",
                path=path, stream_id=self.stream_id, seq=self.seq, event_type=self.type,
            )
        if self.schema_version > cls.schema_version:
            raise EventDecodeError(
                f"{self.type} at {where} has schema version {self.schema_version}, newer than "
                f"the {cls.schema_version} this ledgerflow reads: upgrade ledgerflow",
                path=path, stream_id=self.stream_id, seq=self.seq, event_type=self.type,
            )
        try:
            data = decode_payload(self.payload)
            if self.schema_version < cls.schema_version:
                data = upcast(self.type, self.schema_version, data, cls.schema_version)
            return cls.model_validate(data)
        except Exception as err:  # msgpack, upcaster and pydantic errors alike
            raise PayloadValidationError(
                f"invalid {self.type} payload at {where}: {err}",
                path=path, stream_id=self.stream_id, seq=self.seq, event_type=self.type,
            ) from err


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Where an append left the stream."""

    stream_id: str
    first_seq: int
    last_seq: int
    head_hash: bytes
    #: False when every event id was already stored, so nothing was written.
    written: bool = True


@dataclass(frozen=True, slots=True)
class StreamHead:
    """A stream's head as the ``streams`` table records it."""

    stream_id: str
    head_seq: int
    head_hash: bytes


@dataclass(frozen=True, slots=True)
class StreamReport:
    """The result of verifying one stream's chain."""

    stream_id: str
    ok: bool
    events: int
    head_seq: int | None
    head_hash: str | None
    first_bad_seq: int | None = None
    reason: str | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The result of verifying a log: one report per stream."""

    path: str
    chain: str
    streams: tuple[StreamReport, ...]

    @property
    def ok(self) -> bool:
        return all(stream.ok for stream in self.streams)


@runtime_checkable
class EventStore(Protocol):
    """An append-only, hash-chained event store.

    Every backend passes the same contract test suite
    (``tests/events/test_store_contract.py``).
    """

    path: str

    async def append(
        self, stream_id: str, events: Sequence[Event | NewEvent], *, expected_version: int
    ) -> AppendResult:
        """Append a batch atomically after ``expected_version``.

        Raises:
            ConcurrencyError: The stream's head is not ``expected_version``.
        """
        ...

    async def head(self, stream_id: str) -> StreamHead | None: ...

    def read_stream(
        self, stream_id: str, *, from_seq: int = 1, to_seq: int | None = None, verify: bool = True
    ) -> AsyncIterator[RecordedEvent]: ...

    def read_all(self, *, from_position: int = 0) -> AsyncIterator[RecordedEvent]: ...

    def subscribe(
        self, *, from_position: int = 0, stream_id: str | None = None, poll_interval: float = 0.05
    ) -> AsyncIterator[RecordedEvent]: ...

    async def list_streams(self) -> list[StreamHead]: ...

    async def verify(self, stream_id: str | None = None) -> VerifyReport: ...

    async def close(self) -> None: ...
