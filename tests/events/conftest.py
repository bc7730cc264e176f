"""Fixtures for the event log tests: store backends and the ``support`` module."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from ledgerflow.events import EventStore, open_store


def _load_support() -> ModuleType:
    # With --import-mode=importlib, test files cannot import a sibling module
    # by name, so it is loaded by path once and handed out by a fixture.
    path = Path(__file__).with_name("support.py")
    spec = importlib.util.spec_from_file_location("ledgerflow_events_test_support", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_SUPPORT = _load_support()


@pytest.fixture
def support() -> ModuleType:
    """The support module: test event types (registered here too), helpers and the subprocess script."""
    return _SUPPORT


@dataclass
class Backend:
    """A store backend under test: how to name a fresh log and open it."""

    name: str
    make_url: Callable[[str], str]

    async def open(self, url: str, **options: Any) -> EventStore:
        options.setdefault("key", None)
        return await open_store(url, **options)


#: Backends that the contract suite runs against.
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Each store backend in turn, with fresh logs for the test.

    PostgreSQL logs get a fresh schema per log name, dropped after the test.
    """
    if request.param == "sqlite":
        return Backend("sqlite", lambda name: str(tmp_path / f"{name}.db"))
    if request.param == "postgres":
        return Backend("postgres", request.getfixturevalue("postgres_store_url"))
    raise AssertionError(f"no fixture code for backend {request.param!r}")


@pytest.fixture
async def store_factory(backend: Backend) -> AsyncIterator[Callable[..., Awaitable[EventStore]]]:
    """Open stores on the backend, a fresh log per name, and close them all after the test."""
    opened: list[EventStore] = []

    async def open_named(name: str = "log", **options: Any) -> EventStore:
        store = await backend.open(backend.make_url(name), **options)
        opened.append(store)
        return store

    yield open_named
    for store in opened:
        await store.close()


@pytest.fixture
async def store(store_factory: Callable[..., Awaitable[EventStore]]) -> EventStore:
    """A fresh, unkeyed store on each backend."""
    return await store_factory()
