"""Payload encoding: exact round trips of every supported type, and upcasting of old payload versions."""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import json
import uuid
import zoneinfo
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from ledgerflow.events import (
    Event,
    EventDecodeError,
    PayloadValidationError,
    decode_payload,
    encode_payload,
    encode_value,
    event_class,
    upcaster,
)
from ledgerflow.events import _model

INDIA = dt.timezone(dt.timedelta(hours=5, minutes=30))
WEST = dt.timezone(dt.timedelta(hours=-3, minutes=-15))


class CodecInner(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    label: str
    when: dt.datetime
    amount: Decimal


class CodecSampled(Event):
    naive: dt.datetime
    aware: dt.datetime
    day: dt.date
    clock: dt.time
    clock_aware: dt.time
    ident: uuid.UUID
    amount: Decimal
    raw: bytes
    missing: str | None
    inner: CodecInner
    inners: tuple[CodecInner, ...]
    #: Untyped values, which pydantic passes through, so only the codec makes them exact.
    loose: dict[str, Any]


class Colour(enum.Enum):
    RED = "red"


def _sample() -> CodecSampled:
    inner = CodecInner(label="a", when=dt.datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=INDIA), amount=Decimal("0.10"))
    return CodecSampled(
        naive=dt.datetime(2024, 1, 2, 3, 4, 5, 678901),
        aware=dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=WEST),
        day=dt.date(1999, 12, 31),
        clock=dt.time(23, 0, 0, 1),
        clock_aware=dt.time(1, 2, 3, tzinfo=INDIA),
        ident=uuid.UUID("12345678-1234-5678-1234-567812345678"),
        amount=Decimal("-1234567890.123456789012345678"),
        raw=b"\x00\xff\x80 not utf-8 \xc3",
        missing=None,
        inner=inner,
        inners=(inner, inner.model_copy(update={"label": "b"})),
        loose={
            "naive": dt.datetime(2020, 5, 5),
            "utc": dt.datetime(2020, 5, 5, tzinfo=dt.timezone.utc),
            "day": dt.date(2020, 5, 5),
            "clock": dt.time(12, 30, tzinfo=WEST),
            "ident": uuid.UUID(int=1),
            "amount": Decimal("1E+3"),
            "raw": b"",
            "none": None,
            "nested": [{"deep": [Decimal("2.50"), None, b"\x01"]}],
        },
    )


def _assert_exact(decoded: Any, original: Any, where: str = "value") -> None:
    """Assert the same type, value and, for times, the same UTC offset, recursively."""
    assert type(decoded) is type(original), f"{where}: {type(decoded).__name__} is not {type(original).__name__}"
    if isinstance(original, dict):
        assert decoded.keys() == original.keys(), where
        for name in original:
            _assert_exact(decoded[name], original[name], f"{where}[{name!r}]")
    elif isinstance(original, (list, tuple)):
        assert len(decoded) == len(original), where
        for index, (left, right) in enumerate(zip(decoded, original)):
            _assert_exact(left, right, f"{where}[{index}]")
    elif isinstance(original, BaseModel):
        for name in type(original).model_fields:
            _assert_exact(getattr(decoded, name), getattr(original, name), f"{where}.{name}")
    elif isinstance(original, Decimal):
        assert str(decoded) == str(original), where
    elif isinstance(original, (dt.datetime, dt.time)):
        assert decoded == original, where
        assert decoded.utcoffset() == original.utcoffset(), where
    else:
        assert decoded == original, where


@pytest.mark.parametrize(
    "value",
    [
        dt.datetime(2024, 1, 2, 3, 4, 5, 678901),
        dt.datetime(2024, 1, 2, 3, 4, 5),
        dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone.utc),
        dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=INDIA),
        dt.datetime(1, 1, 1),
        dt.datetime.max.replace(tzinfo=WEST),
        dt.date(2024, 2, 29),
        dt.time(0, 0),
        dt.time(13, 14, 15, 161718, tzinfo=WEST),
        uuid.UUID(int=0),
        uuid.uuid4(),
        Decimal("0.10"),
        Decimal("-0.000"),
        Decimal("1E+3"),
        Decimal("NaN"),
        Decimal("-Infinity"),
        b"",
        b"\x00\xff\xfe",
        None,
        {"list": [1, "two", 3.5, True, None], "map": {"a": {"b": b"c"}}},
        {1: "int key", 2: [dt.date(2000, 1, 1)]},
    ],
    ids=repr,
)
def test_codec_value_round_trip_exact(value):
    _assert_exact(decode_payload(encode_value(value)), value)


def test_codec_zone_name_becomes_offset():
    paris = dt.datetime(2024, 7, 1, 12, 0, tzinfo=zoneinfo.ZoneInfo("Europe/Paris"))

    decoded = decode_payload(encode_value(paris))

    assert decoded == paris
    assert decoded.utcoffset() == dt.timedelta(hours=2)
    assert decoded.tzinfo == dt.timezone(dt.timedelta(hours=2))


def test_codec_documented_conversions():
    decoded = decode_payload(encode_value({"tuple": (1, 2), "set": {3, 1, 2}, "enum": Colour.RED}))

    assert decoded == {"tuple": [1, 2], "set": [1, 2, 3], "enum": "red"}


def test_codec_unsupported_type_raises():
    with pytest.raises(TypeError, match="cannot encode a value of type object"):
        encode_value({"bad": object()})


def test_codec_model_round_trip_exact():
    sample = _sample()

    decoded = CodecSampled.model_validate(decode_payload(encode_payload(sample)))

    _assert_exact(decoded, sample, "sample")
    assert decoded == sample


def test_codec_model_encoding_matches_model_dump():
    sample = _sample()

    assert encode_payload(sample) == encode_value(sample.model_dump(mode="python"))


async def test_codec_store_round_trip_exact(store):
    sample = _sample()

    await store.append("codec", [sample], expected_version=0)
    stored = [event async for event in store.read_stream("codec")]

    _assert_exact(stored[0].decode(store.path), sample, "stored")
    assert stored[0].payload == encode_payload(sample)


class CodecRenamed(Event):
    """Version 1 of an event whose field ``title`` later becomes ``name``."""

    title: str


# The version 2 code, run in a fresh interpreter as an upgraded ledgerflow would be.
UPGRADED_READER = """
import json, sys
from ledgerflow.events import Event, open_store, upcaster
import asyncio

class CodecRenamed(Event, version=2):
    name: str
    priority: int

@upcaster("CodecRenamed", 1)
def rename_title(data):
    data = dict(data)
    data["name"] = data.pop("title")
    data["priority"] = 0
    return data

async def main(path):
    store = await open_store(path, key=None)
    head = await store.head("codec")
    await store.append("codec", [CodecRenamed(name="written by v2", priority=7)], expected_version=head.head_seq)
    decoded = []
    async for recorded in store.read_stream("codec"):
        event = recorded.decode(store.path)
        decoded.append({"stored_version": recorded.schema_version, "class_version": event.schema_version,
                        **event.model_dump()})
    print(json.dumps(decoded))
    await store.close()

asyncio.run(main(sys.argv[1]))
"""


async def _stored_rows(store) -> list[tuple]:
    return [(event.seq, event.schema_version, event.payload, event.hash) async for event in store.read_all()]


async def test_upcast_v1_reads_as_v2(store, support):
    await store.append("codec", [CodecRenamed(title="first"), CodecRenamed(title="second")], expected_version=0)
    stored_before = await _stored_rows(store)

    completed = support.run_python(UPGRADED_READER, store.path)

    assert json.loads(completed.stdout) == [
        {"stored_version": 1, "class_version": 2, "name": "first", "priority": 0},
        {"stored_version": 1, "class_version": 2, "name": "second", "priority": 0},
        {"stored_version": 2, "class_version": 2, "name": "written by v2", "priority": 7},
    ]
    stored_after = await _stored_rows(store)
    assert stored_after[:2] == stored_before
    assert stored_after[2][1] == 2


async def test_upcast_newer_version_rejected(store_factory, support):
    store = await store_factory("codec")
    await store.append("codec", [CodecRenamed(title="first")], expected_version=0)
    support.run_python(UPGRADED_READER, store.path)

    stored = [event async for event in store.read_stream("codec")]
    with pytest.raises(EventDecodeError, match="schema version 2, newer than the 1") as caught:
        stored[1].decode(store.path)

    assert stored[0].decode() == CodecRenamed(title="first")
    assert caught.value.seq == 2
    assert caught.value.stream_id == "codec"
    assert caught.value.path == store.path


class CodecChained(Event):
    """Version 1 of an event that the next test upgrades twice."""

    amount: int


@contextlib.contextmanager
def _registry_copies() -> Iterator[None]:
    """Swap in copies of the type and upcaster registries; the originals come back on exit."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_model, "_registry", dict(_model._registry))
        patch.setattr(_model, "_upcasters", dict(_model._upcasters))
        yield


@pytest.fixture
def scratch_registry() -> Iterator[None]:
    """Let the test register new versions of event types without leaking them to other tests."""
    with _registry_copies():
        yield


async def test_upcast_chain_in_process(store, scratch_registry):
    await store.append("codec", [CodecChained(amount=5)], expected_version=0)
    del _model._registry["CodecChained"]

    class CodecChainedV2(Event, type_name="CodecChained", version=2):
        cents: int

    await store.append("codec", [CodecChainedV2(cents=250)], expected_version=1)
    del _model._registry["CodecChained"]

    class CodecChainedV3(Event, type_name="CodecChained", version=3):
        cents: int
        currency: str

    @upcaster("CodecChained", 1)
    def to_cents(data):
        return {"cents": data["amount"] * 100}

    @upcaster("CodecChained", 2)
    def add_currency(data):
        return {**data, "currency": "EUR"}

    decoded = [event.decode() async for event in store.read_stream("codec")]
    stored_versions = [event.schema_version async for event in store.read_stream("codec")]

    assert decoded == [CodecChainedV3(cents=500, currency="EUR"), CodecChainedV3(cents=250, currency="EUR")]
    assert stored_versions == [1, 2]
    assert event_class("CodecChained") is CodecChainedV3


async def test_upcast_missing_step_raises(store, scratch_registry):
    await store.append("codec", [CodecChained(amount=5)], expected_version=0)
    del _model._registry["CodecChained"]

    class CodecChainedV2(Event, type_name="CodecChained", version=2):
        cents: int

    stored = [event async for event in store.read_stream("codec")]
    with pytest.raises(PayloadValidationError, match="no upcaster registered for CodecChained from version 1 to 2"):
        stored[0].decode(store.path)


def test_registry_copies_restore_originals():
    with _registry_copies():
        del _model._registry["CodecChained"]

        class CodecChainedV2(Event, type_name="CodecChained", version=2):
            cents: int

        @upcaster("CodecChained", 1)
        def to_cents(data):
            return {"cents": data["amount"] * 100}

        assert event_class("CodecChained") is CodecChainedV2

    assert event_class("CodecChained") is CodecChained
    assert ("CodecChained", 1) not in _model._upcasters
