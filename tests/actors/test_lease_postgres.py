"""The PostgreSQL run lease: an advisory lock on a keepalive connection, freed when its holder dies."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

import ledgerflow as lf
from ledgerflow.actors._lease import PostgresLease, lease_holder, lease_is_free, open_lease
from ledgerflow.events import open_store

pytestmark = pytest.mark.postgres


@pytest.fixture
def store_url(postgres_store_url) -> str:  # type: ignore[no-untyped-def]
    """The URL of a fresh PostgreSQL log (its schema exists, so the leases table does too)."""
    url = postgres_store_url()

    async def create() -> None:
        store = await open_store(url, key=None)
        await store.close()

    asyncio.run(create())
    return url


def _holder_process(store_url: str, run_id: str) -> subprocess.Popen[str]:
    """Start a process that takes the lease, prints 'held' and then waits to be killed."""
    script = textwrap.dedent(f"""
        import os, socket, sys, time
        from ledgerflow.actors._lease import open_lease
        from ledgerflow.actors._logging import configure_logging
        configure_logging()
        lease = open_lease({store_url!r}, {run_id!r})
        lease.acquire(holder={{"host": socket.gethostname(), "pid": os.getpid()}})
        print("held", flush=True)
        sys.stdin.read()
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if line.strip() != "held":
        process.kill()
        _, errors = process.communicate(timeout=30)
        pytest.fail(f"the lease holder printed {line!r} instead of 'held':\n{errors}")
    return process


def test_open_lease_picks_kind_by_url(store_url, tmp_path):
    assert isinstance(open_lease(store_url, "run-1"), PostgresLease)
    assert isinstance(open_lease(str(tmp_path / "log.db"), "run-1"), lf.actors.Lease)
    assert isinstance(open_lease(f"sqlite:///{tmp_path / 'log.db'}", "run-1"), lf.actors.Lease)


def test_lease_acquire_release(store_url):
    lease = open_lease(store_url, "run-1")
    assert lease_is_free(store_url, "run-1")

    lease.acquire(holder={"host": "builder", "pid": 4242})
    try:
        assert lease.held
        assert not lease_is_free(store_url, "run-1")
        assert lease_is_free(store_url, "run-2")
        assert lease_holder(store_url, "run-1") == "host builder, pid 4242"
    finally:
        lease.release()

    assert not lease.held
    assert lease_is_free(store_url, "run-1")


def test_lease_probe_leaves_lock_free(store_url):
    for _ in range(3):
        assert lease_is_free(store_url, "run-1")

    lease = open_lease(store_url, "run-1")
    lease.acquire(wait_s=0.0)
    lease.release()


def test_lease_keys_differ_by_schema(postgres_store_url):
    first, second = postgres_store_url("first"), postgres_store_url("second")

    assert PostgresLease(first, "run-1").key != PostgresLease(second, "run-1").key
    assert PostgresLease(first, "run-1").key != PostgresLease(first, "run-2").key
    assert PostgresLease(first, "run-1").key == PostgresLease(first, "run-1").key


def test_lease_held_by_other_process_names_it(store_url):
    holder = _holder_process(store_url, "run-1")
    try:
        lease = open_lease(store_url, "run-1")
        with pytest.raises(lf.LeaseHeldError) as caught:
            lease.acquire(holder={"host": "second", "pid": 1}, wait_s=0.2)

        assert caught.value.holder == f"host {socket.gethostname()}, pid {holder.pid}"
        assert not lease.held
        assert lease_holder(store_url, "run-1") == f"host {socket.gethostname()}, pid {holder.pid}"
    finally:
        holder.kill()
        holder.communicate(timeout=30)


def test_lease_freed_when_holder_killed(store_url, helpers):
    holder = _holder_process(store_url, "run-1")
    assert not lease_is_free(store_url, "run-1")

    os.kill(holder.pid, signal.SIGKILL)
    holder.communicate(timeout=30)

    helpers.wait_until(lambda: lease_is_free(store_url, "run-1"), timeout_s=30,
                       description="the server to end the killed holder's session")
    lease = open_lease(store_url, "run-1")
    lease.acquire()
    lease.release()


def test_lease_connection_keepalive(store_url):
    # A dead host cannot be simulated here; this checks the settings that make the server find one.
    lease = open_lease(store_url, "run-1")
    lease.acquire()
    try:
        async def settings() -> list[str]:
            return [await lease._connection.fetchval(f"SHOW {name}")
                    for name in ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count")]

        server_side = asyncio.run_coroutine_threadsafe(settings(), lease._loop).result(timeout=30)
        sock = lease._connection._transport.get_extra_info("socket")
        client_side = sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        idle = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
    finally:
        lease.release()

    assert server_side == ["5", "2", "3"]
    assert client_side != 0
    assert idle == 5


def test_actor_name_ignores_password(tmp_path):
    from ledgerflow.actors._runner import _actor_name

    with_password = lf.Settings.resolve(home=str(tmp_path), store="postgresql://alice:s3cret@db:5432/test?schema=s")
    without = lf.Settings.resolve(home=str(tmp_path), store="postgresql://alice@db:5432/test?schema=s")
    other_schema = lf.Settings.resolve(home=str(tmp_path), store="postgresql://alice@db:5432/test?schema=t")

    assert _actor_name("run-1", with_password) == _actor_name("run-1", without)
    assert _actor_name("run-1", with_password) != _actor_name("run-1", other_schema)
