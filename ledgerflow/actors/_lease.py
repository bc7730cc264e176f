"""The run lease: one executor per run.

Beside a SQLite log the lease is a file lock, which the OS releases when its
process dies, so a crashed executor never leaves a stale lease behind. For a
PostgreSQL log it is a session-level advisory lock held on a dedicated
connection (see :class:`PostgresLease`). :func:`open_lease`,
:func:`lease_is_free` and :func:`lease_holder` pick the kind by store URL.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import socket
import threading
import time
from typing import Any

import structlog

from ledgerflow.actors._errors import LeaseHeldError
from ledgerflow.events import is_postgres_url, run_sync

logger = structlog.get_logger("ledgerflow.lease")


def lease_path(store_path: str, run_id: str) -> str:
    """Return the lease file of ``run_id`` for the log at ``store_path``."""
    return os.path.join(f"{store_path}.leases", f"{run_id}.lock")


class Lease:
    """An exclusive, non-blocking lock on one run, released on :meth:`release` or process exit."""

    def __init__(self, store_path: str, run_id: str) -> None:
        self.path = lease_path(store_path, run_id)
        self.run_id = run_id
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, *, holder: dict[str, object] | None = None, wait_s: float = 0.0) -> None:
        """Take the lease or raise LeaseHeldError naming the current holder.

        Args:
            holder: What to write into the lease file (None: write nothing, for probes).
            wait_s: Keep trying this long; covers a probe that holds the lock for a moment.
        """
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise LeaseHeldError(self.run_id, describe_holder(self.path)) from None
                time.sleep(0.05)
        if holder is not None:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Release the lease if held."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Lease:
        self.acquire(holder={"host": socket.gethostname(), "pid": os.getpid()})
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def describe_holder(path: str) -> str:
    """Return 'host HOST, pid PID' from a lease file, as far as it can be read."""
    try:
        with open(path, encoding="utf-8") as handle:
            info = json.load(handle)
        return f"host {info.get('host')}, pid {info.get('pid')}"
    except (OSError, ValueError):
        return "unknown holder"




# Choosing the kind by store URL


def open_lease(store_url: str, run_id: str) -> Lease | PostgresLease:
    """Return an unheld lease on ``run_id`` of the log at ``store_url`` (a file path, ``sqlite:///`` or ``postgresql://`` URL)."""
    if is_postgres_url(store_url):
        return PostgresLease(store_url, run_id)
    return Lease(_file_path(store_url), run_id)


def lease_is_free(store_url: str, run_id: str) -> bool:
    """Return True when no executor holds the run.

    For a SQLite log this takes the lock briefly; for PostgreSQL it looks
    the advisory lock up in ``pg_locks`` and takes nothing.
    """
    if is_postgres_url(store_url):
        return run_sync(PostgresLease(store_url, run_id).probe()) is None
    lease = Lease(_file_path(store_url), run_id)
    try:
        lease.acquire()
    except LeaseHeldError:
        return False
    lease.release()
    return True


def lease_holder(store_url: str, run_id: str) -> str:
    """Return 'host HOST, pid PID' of the run's lease holder, as far as it is recorded."""
    if is_postgres_url(store_url):
        return run_sync(PostgresLease(store_url, run_id).probe()) or "no holder"
    return describe_holder(lease_path(_file_path(store_url), run_id))


def _file_path(store_url: str) -> str:
    return store_url.removeprefix("sqlite:///") if store_url.startswith("sqlite:///") else store_url


# PostgreSQL

#: Server-side TCP keepalive for the lease connection: the server probes a
#: silent client after 5 s, every 2 s, and drops it after 3 unanswered
#: probes, so the lock of a host that died is free about 11 s later.
#: PostgreSQL ignores these settings on Unix-domain sockets, where a dead
#: client cannot occur without the server's host dying too.
KEEPALIVE_SETTINGS = {
    "tcp_keepalives_idle": "5",
    "tcp_keepalives_interval": "2",
    "tcp_keepalives_count": "3",
    "application_name": "ledgerflow lease",
}


class PostgresLease:
    """A session-level advisory lock on one run, held on a dedicated connection.

    The key is derived from the log's schema and the run id
    (:func:`ledgerflow.events._postgres.advisory_key`). The server releases
    the lock when the session ends: on :meth:`release`, on process exit
    (the socket closes), or when TCP keepalive finds the client's host dead
    (:data:`KEEPALIVE_SETTINGS`). The holder's host and pid go into the log's
    ``leases`` table, which only :meth:`probe` reads.

    asyncpg is asynchronous but this class keeps the blocking interface of
    the file lease, so the connection lives on an event loop in a private
    thread for as long as the lease is held.
    """

    def __init__(self, store_url: str, run_id: str) -> None:
        from ledgerflow.events._postgres import advisory_key, parse_url

        self.location = parse_url(store_url)
        self.path = self.location.display
        self.run_id = run_id
        self.key = advisory_key("lease", self.location.schema, run_id)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._connection: Any = None

    @property
    def held(self) -> bool:
        return self._connection is not None

    def acquire(self, *, holder: dict[str, object] | None = None, wait_s: float = 0.0) -> None:
        """Take the lease or raise LeaseHeldError naming the current holder.

        Args:
            holder: What to record as the holder (None: record nothing).
            wait_s: Keep trying this long.

        Raises:
            LeaseHeldError: Another session holds the lock.
            StoreError: The server cannot be reached.
        """
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name=f"ledgerflow-lease-{self.run_id}", daemon=True)
        thread.start()
        try:
            self._connection = asyncio.run_coroutine_threadsafe(self._acquire(holder, wait_s), loop).result()
        except BaseException:
            _stop_loop(loop, thread)
            raise
        self._loop, self._thread = loop, thread
        logger.info("lease acquired", run_id=self.run_id, store=self.path)

    async def _acquire(self, holder: dict[str, object] | None, wait_s: float) -> Any:
        from ledgerflow.events._postgres import connect

        connection = await connect(self.location, server_settings=KEEPALIVE_SETTINGS)
        try:
            _set_client_keepalive(connection)
            deadline = time.monotonic() + wait_s
            while not await connection.fetchval("SELECT pg_try_advisory_lock($1)", self.key):
                if time.monotonic() >= deadline:
                    raise LeaseHeldError(self.run_id, await self._holder(connection) or "unknown holder")
                await asyncio.sleep(0.05)
            if holder is not None:
                await self._record_holder(connection, holder)
        except BaseException:
            await connection.close()
            raise
        connection.add_termination_listener(self._lost)
        return connection

    def _lost(self, *_: object) -> None:
        # NOTE: the executor is not stopped here; it keeps appending, and only
        # expected_version checks guard the stream if another executor starts.
        logger.error("lease connection lost: the lease may now be taken by another executor",
                     run_id=self.run_id, store=self.path)

    async def _record_holder(self, connection: Any, holder: dict[str, object]) -> None:
        import asyncpg

        try:
            await connection.execute(
                f"INSERT INTO {self.location.quoted_schema}.leases (run_id, holder) VALUES ($1, $2) "
                "ON CONFLICT (run_id) DO UPDATE SET holder = excluded.holder, acquired_at = now()",
                self.run_id, json.dumps(holder),
            )
        except asyncpg.UndefinedTableError:
            logger.warning("log has no leases table; the lease holder is not recorded",
                           run_id=self.run_id, store=self.path)

    def release(self) -> None:
        """Release the lease if held, by closing its session."""
        if self._loop is None or self._thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=30)
        finally:
            _stop_loop(self._loop, self._thread)
            self._loop = self._thread = None
            self._connection = None
        logger.info("lease released", run_id=self.run_id, store=self.path)

    async def _close(self) -> None:
        connection = self._connection
        connection.remove_termination_listener(self._lost)
        try:
            await connection.execute("SELECT pg_advisory_unlock($1)", self.key)
        finally:
            await connection.close()

    async def probe(self) -> str | None:
        """Return the holder's description if a session holds the lock, else None. Takes no lock."""
        from ledgerflow.events._postgres import connect

        connection = await connect(self.location)
        try:
            return await self._holder(connection)
        finally:
            await connection.close()

    async def _holder(self, connection: Any) -> str | None:
        import asyncpg

        # pg_locks shows a bigint advisory key as its high and low 32 bits, with objsubid 1.
        held = await connection.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND classid = $1 AND objid = $2",
            (self.key >> 32) & 0xFFFFFFFF, self.key & 0xFFFFFFFF,
        )
        if not held:
            return None
        try:
            text = await connection.fetchval(
                f"SELECT holder FROM {self.location.quoted_schema}.leases WHERE run_id = $1", self.run_id
            )
        except asyncpg.UndefinedTableError:
            text = None
        try:
            info = json.loads(text) if text else {}
        except ValueError:
            info = {}
        if "host" not in info:
            return "unknown holder"
        return f"host {info.get('host')}, pid {info.get('pid')}"

    def __enter__(self) -> PostgresLease:
        self.acquire(holder={"host": socket.gethostname(), "pid": os.getpid()})
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _set_client_keepalive(connection: Any) -> None:
    """Turn on client-side TCP keepalive, so this process also notices a dead server within seconds.

    asyncpg has no keepalive option (its 0.32 connect code never sets one), so the socket
    is reached through the connection's private ``_transport``.
    """
    transport = getattr(connection, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def _stop_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=30)
    loop.close()


