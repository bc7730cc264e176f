"""Helpers for runtime tests: pipeline locators, reading a run's log, traces and warehouses.

Test modules cannot import one another (or this file) under
``--import-mode=importlib``, so the helpers reach them through the
``helpers`` fixture.
"""

from __future__ import annotations

import asyncio
import collections
import os
import pathlib
import secrets
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

import ledgerflow as lf
from ledgerflow.actors import ExecutorDiedError, lease_is_free
from ledgerflow.events import Event, open_store

PIPELINES = pathlib.Path(__file__).parent / "pipelines"

#: Where ``pipelines/sql_targets.py`` loads: a schema and a dataset directory (the
#: server's URL comes from tests/conftest.py). They are set at import, before the
#: session's Ray starts, so that workers inherit them.
os.environ.setdefault("LEDGERFLOW_TEST_POSTGRES_SCHEMA", f"lf_test_targets_{secrets.token_hex(4)}")
os.environ.setdefault("LEDGERFLOW_TEST_DATASET", os.path.join(tempfile.mkdtemp(prefix="lf-test-dataset-"), "items"))

#: An environment variable containing a secret for ``test_secrets.py``. Ray's
#: workers inherit the environment of the process that starts Ray, and the
#: session's cluster starts after every conftest is imported, so a variable set
#: here reaches the workers without Ray's ``runtime_env``.
SECRET_ENV = "LEDGERFLOW_TEST_API_TOKEN"
os.environ.setdefault(SECRET_ENV, "lf-test-secret-" + secrets.token_hex(16))


def pipeline_locator(file_name: str, attribute: str = "pipeline") -> str:
    """Return the locator of a pipeline defined in ``tests/actors/pipelines``."""
    return f"{PIPELINES / file_name}:{attribute}"


def wait_until(condition: Callable[[], bool], *, timeout_s: float = 60.0, description: str = "condition") -> None:
    """Poll ``condition`` every 20 ms until it is true, and fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {description}")
        time.sleep(0.02)


def read_trace(path: str | os.PathLike[str]) -> collections.Counter[str]:
    """Count the ``node[partition]`` lines that node attempts appended to a trace file."""
    try:
        text = pathlib.Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return collections.Counter()
    return collections.Counter(line for line in text.splitlines() if line)


def flip_byte(path: str | os.PathLike[str], offset: int = -40) -> None:
    """Invert one byte of a file in place (by default near its end, inside the Arrow footer)."""
    data = bytearray(pathlib.Path(path).read_bytes())
    data[offset] ^= 0xFF
    pathlib.Path(path).write_bytes(bytes(data))


@dataclass(frozen=True)
class Logged:
    """One event of a run's stream."""

    seq: int
    type: str
    event: Event
    recorded_at: str


class Home:
    """A ledgerflow home for one test: its settings and readers for its log and warehouse."""

    def __init__(self, settings: lf.Settings) -> None:
        self.settings = settings

    def events(self, run_id: str) -> list[Logged]:
        """Return the run's events in order, verifying the chain."""
        return asyncio.run(self._events(run_id))

    async def _events(self, run_id: str) -> list[Logged]:
        store = await open_store(self.settings.store_url, create=False)
        try:
            return [Logged(recorded.seq, recorded.type, recorded.decode(store.path), recorded.recorded_at)
                    async for recorded in store.read_stream(run_id)]
        finally:
            await store.close()

    def types(self, run_id: str) -> list[str]:
        return [logged.type for logged in self.events(run_id)]

    def of_type(self, run_id: str, event_type: str) -> list[Any]:
        return [logged.event for logged in self.events(run_id) if logged.type == event_type]

    def state(self, run_id: str) -> lf.RunState:
        return lf.load_state(run_id, settings=self.settings)

    def wait_lease_free(self, run_id: str, timeout_s: float = 30.0) -> None:
        wait_until(lambda: lease_is_free(self.settings.store_path, run_id), timeout_s=timeout_s,
                   description=f"the lease of run {run_id} to be free")

    def completed_partitions(self, run_id: str) -> set[tuple[str, str]]:
        """Return the (node, partition) pairs whose completion the log records now."""
        state = self.state(run_id)
        return {(name, key) for name, node in state.nodes.items()
                for key, part in node.partitions.items() if part.status == "completed"
                and node.spec.kind != "approval"}

    def rows(self, table: str, database: str | None = None, order_by: str = "1") -> list[tuple[Any, ...]]:
        """Return every row of a warehouse table, ordered. An absent table has no rows."""
        path = database or self.settings.warehouse
        if not os.path.exists(path):
            return []
        with sqlite3.connect(path) as conn:
            exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                  (table,)).fetchone()
            if exists is None:
                return []
            return conn.execute(f'SELECT * FROM "{table}" ORDER BY {order_by}').fetchall()

    def load_markers(self, run_id: str, database: str | None = None) -> list[tuple[str, str]]:
        """Return the (node, partition) load markers of a run, one per loaded partition."""
        path = database or self.settings.warehouse
        if not os.path.exists(path):
            return []
        with sqlite3.connect(path) as conn:
            return conn.execute("SELECT node, partition FROM _ledgerflow_loads WHERE run_id = ? "
                                "ORDER BY node, partition", (run_id,)).fetchall()


@dataclass
class Drive:
    """The outcome of driving a run to its end: the result, the crashes and what was complete at the crash."""

    result: lf.RunResult
    crashes: int = 0
    completed_at_crash: frozenset[tuple[str, str]] = frozenset()
    trace_at_crash: collections.Counter[str] | None = None
    approvals: int = 0


def drive_to_end(home: Home, locator: str, *, run_id: str, params: dict[str, Any],
                 fault_exit_after_seq: int | None = None, reviewer: str = "bob",
                 submitter: str = "alice", trace: str | None = None) -> Drive:
    """Start a run one partition at a time and continue it until it ends.

    The executor exits after the batch containing ``fault_exit_after_seq``.
    Later executors get the same seq, which their batches never contain again.
    A crashed run is resumed once its lease is free, and a run waiting at a
    gate is approved by ``reviewer``.
    """
    drive = Drive(result=lf.RunResult(run_id, "new"))
    started = False
    while True:
        try:
            if not started:
                started = True
                result = lf.start_run(locator, params=params, run_id=run_id, submitter=submitter,
                                      settings=home.settings, max_in_flight=1,
                                      fault_exit_after_seq=fault_exit_after_seq, max_restarts=0)
            else:
                result = lf.resume_run(run_id, settings=home.settings, max_in_flight=1,
                                       fault_exit_after_seq=fault_exit_after_seq, max_restarts=0)
        except ExecutorDiedError:
            drive.crashes += 1
            home.wait_lease_free(run_id)
            drive.completed_at_crash = frozenset(home.completed_partitions(run_id))
            if trace is not None:
                drive.trace_at_crash = read_trace(trace)
            continue
        if result.status == "waiting_for_approval":
            lf.decide(run_id, reviewer=reviewer, approve=True, settings=home.settings)
            drive.approvals += 1
            continue
        drive.result = result
        return drive


def postgres_fetch(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Run one statement on PostgreSQL and return its rows as tuples."""
    import asyncpg

    async def fetch() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(url)
        try:
            return [tuple(row) for row in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    return asyncio.run(fetch())


class Helpers:
    """The module-level helpers of this file, for test modules (which cannot import it)."""

    secret_env = SECRET_ENV
    pipeline_locator = staticmethod(pipeline_locator)
    wait_until = staticmethod(wait_until)
    read_trace = staticmethod(read_trace)
    flip_byte = staticmethod(flip_byte)
    drive_to_end = staticmethod(drive_to_end)
    postgres_fetch = staticmethod(postgres_fetch)


@pytest.fixture(scope="session")
def helpers() -> type[Helpers]:
    return Helpers


@pytest.fixture
def home(settings: lf.Settings) -> Home:
    """A fresh ledgerflow home on the session's Ray."""
    return Home(settings)


@pytest.fixture
def make_home(tmp_path: pathlib.Path, ray_address: str) -> Callable[[str], Home]:
    """Return a factory of further fresh homes, named inside the test's tmp_path."""

    def make(name: str) -> Home:
        return Home(lf.Settings.resolve(home=str(tmp_path / name), address=ray_address))

    return make


@pytest.fixture(scope="session")
def make_shared_home(tmp_path_factory: pytest.TempPathFactory, ray_address: str) -> Callable[[str], Home]:
    """Return a factory of fresh homes for module- or session-scoped fixtures."""

    def make(name: str) -> Home:
        return Home(lf.Settings.resolve(home=str(tmp_path_factory.mktemp(name) / "home"), address=ray_address))

    return make


@dataclass(frozen=True)
class Reference:
    """An uninterrupted run of a pipeline, to compare interrupted runs against."""

    run_id: str
    home: Home
    events: list[Logged]
    trace: collections.Counter[str]
    rows: list[tuple[Any, ...]]


@pytest.fixture(scope="session")
def etl_reference(tmp_path_factory: pytest.TempPathFactory, ray_address: str) -> Reference:
    """A clean run of ``pipelines/etl.py``, one partition at a time."""
    base = tmp_path_factory.mktemp("etl-reference")
    home = Home(lf.Settings.resolve(home=str(base / "home"), address=ray_address))
    trace = base / "trace.txt"
    result = lf.start_run(pipeline_locator("etl.py"), params={"trace": str(trace)}, run_id="etl-reference",
                          settings=home.settings, max_in_flight=1)
    assert result.status == "completed", result.message
    return Reference(run_id="etl-reference", home=home, events=home.events("etl-reference"),
                     trace=read_trace(trace), rows=home.rows("amounts", order_by="order_id"))


# PostgreSQL

@pytest.fixture(scope="session")
def postgres_url(postgres_server: str) -> str:
    """The URL of the test database on the local PostgreSQL server (skips or fails as ``postgres_server`` says)."""
    return postgres_server


@pytest.fixture
def postgres_schema(postgres_url: str) -> Iterator[str]:
    """A fresh schema of the test database, dropped with everything in it after the test."""
    import asyncpg

    name = f"lf_test_{secrets.token_hex(6)}"

    async def execute(sql: str) -> None:
        conn = await asyncpg.connect(postgres_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(execute(f'CREATE SCHEMA "{name}"'))
    yield name
    asyncio.run(execute(f'DROP SCHEMA "{name}" CASCADE'))
