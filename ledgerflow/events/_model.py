"""Event models: the frozen pydantic base class, the type registry and upcasters."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

TYPE_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_.]*")

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

_registry: dict[str, type[Event]] = {}
_upcasters: dict[tuple[str, int], Upcaster] = {}


class Event(BaseModel):
    """Base class of every event: a fact in the past tense, frozen once made.

    A subclass is registered under its class name unless it passes
    ``type_name=...``; ``version=...`` sets its current ``schema_version``
    (1 by default). Older stored versions are read through upcasters
    registered with :func:`upcaster`.

    Example::

        class PartitionCompleted(Event, version=2):
            node: str
            partition: str
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_type: ClassVar[str] = ""
    schema_version: ClassVar[int] = 1

    def __init_subclass__(
        cls, *, type_name: str | None = None, version: int = 1, abstract: bool = False, **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        if abstract:
            return
        name = type_name or cls.__name__
        if not TYPE_PATTERN.fullmatch(name):
            raise ValueError(f"invalid event type name {name!r}: it must match {TYPE_PATTERN.pattern}")
        if version < 1:
            raise ValueError(f"invalid schema version {version} for event type {name!r}: use 1 or more")
        existing = _registry.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(
                f"event type {name!r} is already registered by {existing.__module__}.{existing.__qualname__}"
            )
        cls.event_type = name
        cls.schema_version = version
        _registry[name] = cls


def upcaster(event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register a function that turns a payload of ``from_version`` into ``from_version + 1``.

    The function receives the decoded payload as a dict and returns the new
    dict; stored bytes are never rewritten.
    """

    def decorate(function: Upcaster) -> Upcaster:
        _upcasters[(event_type, from_version)] = function
        return function

    return decorate


def event_class(event_type: str) -> type[Event] | None:
    """Return the registered class for ``event_type``, or None if unknown."""
    return _registry.get(event_type)


def registered_types() -> dict[str, type[Event]]:
    """Return a copy of the registry, type name to class."""
    return dict(_registry)


def upcast(event_type: str, stored_version: int, data: dict[str, Any], current_version: int) -> dict[str, Any]:
    """Apply upcasters from ``stored_version`` up to ``current_version``.

    Raises:
        LookupError: A step of the chain has no registered upcaster.
    """
    for version in range(stored_version, current_version):
        step = _upcasters.get((event_type, version))
        if step is None:
            raise LookupError(f"no upcaster registered for {event_type} from version {version} to {version + 1}")
        data = step(data)
    return data
