"""The event store contract shared by every backend."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, runtime_checkable

import msgpack

from ledgerflow.events._chain import format_recorded_at, parse_recorded_at
from ledgerflow.events._codec import decode_payload, encode_default
from ledgerflow.events._errors import (
    EventDecodeError,
    PayloadValidationError,
    UnknownEventTypeError,
    UsageError,
)
from ledgerflow.events._model import Event, event_class, upcast

#: Events fetched per query when reading; memory stays flat however long the stream.
READ_CHUNK = 2000


def new_event_id() -> str:
    """Return a fresh time-ordered event id: a UUID version 7 (RFC 9562) as 36 lowercase characters.

    Ids made in the same millisecond share their first 48 bits, so new ids
    land at the end of the ``event_id`` index instead of on random pages.
    """
    return _new_event_ids(1)[0]


def _new_event_ids(count: int) -> list[str]:
    millis = f"{time.time_ns() // 1_000_000:012x}"
    prefix = f"{millis[:8]}-{millis[8:]}-7"
    randomness = os.urandom(10 * count).hex()
    ids = []
    for start in range(0, 20 * count, 20):
        chunk = randomness[start : start + 20]
        # The variant field is the two bits 10, so this hex digit is one of 8, 9, a, b.
        variant = _VARIANT_DIGITS[chunk[3]]
        ids.append(f"{prefix}{chunk[:3]}-{variant}{chunk[4:7]}-{chunk[7:19]}")
    return ids


_VARIANT_DIGITS = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event about to be appended, with the id that makes a retried append a no-op.

    ``event_id`` may be in any form that ``uuid.UUID`` parses, and is stored as ``str(uuid)``.
    """

    event: Event
    event_id: str = field(default_factory=new_event_id)
    recorded_at: dt.datetime | None = None


class EncodedEvent(NamedTuple):
    """An event encoded for storage, before the store gives it a seq and a hash."""

    event_id: str
    event_type: str
    schema_version: int
    recorded_at: str
    payload: bytes
    payload_sha256: str

    @classmethod
    def from_new(cls, item: Event | NewEvent) -> EncodedEvent:
        """Encode one event. :func:`encode_events` encodes a whole batch faster."""
        return encode_events([item])[0]


def encode_events(items: Sequence[Event | NewEvent]) -> list[EncodedEvent]:
    """Encode a batch for appending: payload bytes and digest, id and time of each event.

    Events without their own time get the batch's time, and events without
    their own id get a fresh :func:`new_event_id`.

    Raises:
        UsageError: An item is not a registered event, a time is naive, an
            id is not a UUID, or two events share an id.
    """
    count = len(items)
    now = format_recorded_at(dt.datetime.now(dt.timezone.utc))
    pack = msgpack.Packer(default=encode_default, use_bin_type=True, datetime=False).pack
    sha256 = hashlib.sha256
    make = tuple.__new__
    encoded: list[EncodedEvent] = []
    for item, fresh_id in zip(items, _new_event_ids(count)):
        if isinstance(item, NewEvent):
            event = item.event
            event_id = _canonical_event_id(item.event_id)
            recorded_at = now if item.recorded_at is None else _recorded_at_of(item.recorded_at)
        else:
            event, event_id, recorded_at = item, fresh_id, now
        cls = type(event)
        event_type, schema_version = _ENCODINGS.get(cls) or _encoding_of(event)
        payload = pack(cls.__pydantic_serializer__.to_python(event))
        encoded.append(
            make(EncodedEvent, (event_id, event_type, schema_version, recorded_at, payload, sha256(payload).hexdigest()))
        )
    if count > 1 and len({item.event_id for item in encoded}) != count:
        raise UsageError("a batch repeats an event id: give each event of a batch its own id")
    return encoded


#: Type name and schema version per event class that encode_events has checked.
_ENCODINGS: dict[type, tuple[str, int]] = {}


def _encoding_of(event: object) -> tuple[str, int]:
    cls = type(event)
    if not isinstance(event, Event) or not cls.event_type:
        raise UsageError(
            f"cannot append a {cls.__module__}.{cls.__qualname__}: append instances of "
            "registered Event subclasses"
        )
    encoding = (cls.event_type, cls.schema_version)
    _ENCODINGS[cls] = encoding
    return encoding


def _canonical_event_id(value: str | uuid.UUID) -> str:
    if isinstance(value, str) and _CANONICAL_UUID.fullmatch(value):
        return value
    try:
        return str(value if isinstance(value, uuid.UUID) else uuid.UUID(value))
    except (ValueError, TypeError, AttributeError) as err:
        raise UsageError(f"invalid event id {value!r}: use a UUID, for example str(uuid.uuid4())") from err


def _recorded_at_of(moment: dt.datetime) -> str:
    try:
        return format_recorded_at(moment)
    except ValueError as err:
        raise UsageError(f"{err}: pass a timezone-aware recorded_at, for example in UTC") from err


class RecordedEvent(NamedTuple):
    """An event as stored: its envelope, its payload bytes and its place in the chain.

    A named tuple, in the ``events`` column order, because replays build one
    per stored event, and making a tuple took about a fifth of the time of a
    frozen dataclass with slots (timeit, Python 3.11).
    """

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
        if cls is not None and self.schema_version == cls.schema_version:
            # The common case, kept short because every replay runs it per event.
            try:
                return cls.model_validate(decode_payload(self.payload))
            except Exception as err:  # msgpack and pydantic errors alike
                raise self._invalid(path, err) from err
        if cls is None:
            raise UnknownEventTypeError(
                f"unknown event type {self.type!r} at {self._where(path)}: upgrade ledgerflow or import "
                "the module that defines this event type",
                path=path, stream_id=self.stream_id, seq=self.seq, event_type=self.type,
            )
        if self.schema_version > cls.schema_version:
            raise EventDecodeError(
                f"{self.type} at {self._where(path)} has schema version {self.schema_version}, newer than "
                f"the {cls.schema_version} this ledgerflow reads: upgrade ledgerflow",
                path=path, stream_id=self.stream_id, seq=self.seq, event_type=self.type,
            )
        try:
            data = upcast(self.type, self.schema_version, decode_payload(self.payload), cls.schema_version)
            return cls.model_validate(data)
        except Exception as err:  # msgpack, upcaster and pydantic errors alike
            raise self._invalid(path, err) from err

    def _invalid(self, path: str | None, err: Exception) -> PayloadValidationError:
        return PayloadValidationError(
            f"invalid {self.type} payload at {self._where(path)}: {err}",
            path=path, stream_id=self.stream_id, seq=self.seq, event_type=self.type,
        )

    def _where(self, path: str | None) -> str:
        return f"stream {self.stream_id!r} seq {self.seq}" + (f" in {path}" if path else "")


@dataclass(frozen=True, slots=True)
class AppendResult:
    """The stream's position after an append: the seqs written and the new head hash."""

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

    def read_all(self, *, after_position: int = 0) -> AsyncIterator[RecordedEvent]: ...

    def subscribe(
        self, *, after_position: int = 0, stream_id: str | None = None, poll_interval: float = 0.05
    ) -> AsyncIterator[RecordedEvent]: ...

    async def list_streams(self) -> list[StreamHead]: ...

    async def verify(self, stream_id: str | None = None) -> VerifyReport: ...

    async def close(self) -> None: ...
