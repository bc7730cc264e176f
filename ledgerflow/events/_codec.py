"""msgpack encoding of event payloads.

Values msgpack has no type for travel as extension types, so that they read
back exactly: datetime (ISO 8601 with its UTC offset, if any), date, time,
UUID, Decimal. bytes stay msgpack binary. Tuples come back as lists, which
pydantic validates back into tuples where a model declares them.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from decimal import Decimal
from typing import Any

import msgpack
from pydantic import BaseModel

_EXT_DATETIME = 1
_EXT_DATE = 2
_EXT_UUID = 3
_EXT_DECIMAL = 4
_EXT_TIME = 5


def encode_default(value: Any) -> Any:
    """Convert a value that msgpack has no type for. Every packer here uses it as its ``default`` hook."""
    # datetime is a subclass of date, so it is tested first.
    if isinstance(value, dt.datetime):
        return msgpack.ExtType(_EXT_DATETIME, value.isoformat().encode("ascii"))
    if isinstance(value, dt.date):
        return msgpack.ExtType(_EXT_DATE, value.isoformat().encode("ascii"))
    if isinstance(value, dt.time):
        return msgpack.ExtType(_EXT_TIME, value.isoformat().encode("ascii"))
    if isinstance(value, uuid.UUID):
        return msgpack.ExtType(_EXT_UUID, value.bytes)
    if isinstance(value, Decimal):
        return msgpack.ExtType(_EXT_DECIMAL, str(value).encode("ascii"))
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, BaseModel):
        return value.model_dump(mode="python")
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"cannot encode a value of type {type(value).__name__} in an event payload")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _EXT_DATETIME:
        return dt.datetime.fromisoformat(data.decode("ascii"))
    if code == _EXT_DATE:
        return dt.date.fromisoformat(data.decode("ascii"))
    if code == _EXT_TIME:
        return dt.time.fromisoformat(data.decode("ascii"))
    if code == _EXT_UUID:
        return uuid.UUID(bytes=data)
    if code == _EXT_DECIMAL:
        return Decimal(data.decode("ascii"))
    return msgpack.ExtType(code, data)


def encode_payload(model: BaseModel) -> bytes:
    """Encode a model's fields as msgpack bytes.

    The fields come from the model's pydantic serializer, as
    ``model.model_dump(mode="python")`` returns them.
    """
    fields = type(model).__pydantic_serializer__.to_python(model)
    return msgpack.packb(fields, default=encode_default, use_bin_type=True, datetime=False)


def encode_value(value: Any) -> bytes:
    """Encode any supported value (dicts, lists, scalars, models) as msgpack bytes."""
    return msgpack.packb(value, default=encode_default, use_bin_type=True, datetime=False)


def decode_payload(data: bytes) -> Any:
    """Decode msgpack bytes written by :func:`encode_payload` or :func:`encode_value`."""
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
