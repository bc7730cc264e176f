"""Shared fixtures: one Ray cluster for the whole test session, a ledgerflow home per test, PostgreSQL schemas."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator

import pytest

from ledgerflow.events import run_sync

# Retry backoffs are scaled down so that retry tests take milliseconds.
os.environ.setdefault("LEDGERFLOW_BACKOFF_SCALE", "0.01")


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    """Start one local Ray cluster for the session; CLI subprocesses join it through RAY_ADDRESS."""
    import ray

    previous = os.environ.pop("RAY_ADDRESS", None)
    # Without an address, ray.init (Ray 2.60) joins the cluster named in /tmp/ray/ray_current_cluster
    # when another `ray start` on this machine left one running. "local" always starts a new one.
    ray.init(address="local", include_dashboard=False, namespace="ledgerflow", logging_level=logging.ERROR,
             log_to_driver=False)
    address = ray.get_runtime_context().gcs_address
    os.environ["RAY_ADDRESS"] = address
    yield address
    ray.shutdown()
    if previous is None:
        os.environ.pop("RAY_ADDRESS", None)
    else:
        os.environ["RAY_ADDRESS"] = previous


@pytest.fixture
def settings(tmp_path, ray_address):  # type: ignore[no-untyped-def]
    """Settings for a fresh ledgerflow home in the test's tmp_path, on the session's Ray."""
    import ledgerflow as lf

    return lf.Settings.resolve(home=str(tmp_path / "home"), address=ray_address)


# PostgreSQL

#: The server the PostgreSQL tests use; override with LEDGERFLOW_TEST_POSTGRES.
POSTGRES_URL = os.environ.get("LEDGERFLOW_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
# Pipelines that tests run read the server's URL from the environment, which Ray workers inherit
# from this process; it is set before the session's Ray starts.
os.environ.setdefault("LEDGERFLOW_TEST_POSTGRES_URL", POSTGRES_URL)


async def _server_version(url: str) -> str:
    import asyncpg

    connection = await asyncpg.connect(url, timeout=5)
    try:
        return await connection.fetchval("SHOW server_version")
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The URL of a reachable PostgreSQL server.

    Skips the test when none is reachable, except with CI=true, where a missing
    server fails the test instead.
    """
    try:
        run_sync(_server_version(POSTGRES_URL))
    except Exception as err:  # noqa: BLE001 - any failure means no usable server
        message = f"no PostgreSQL server at {POSTGRES_URL} ({type(err).__name__}: {err})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI=true requires one, so start it or set LEDGERFLOW_TEST_POSTGRES")
        pytest.skip(f"{message}: start one or set LEDGERFLOW_TEST_POSTGRES to run PostgreSQL tests")
    return POSTGRES_URL


async def _drop_schemas(url: str, schemas: list[str]) -> None:
    import asyncpg

    connection = await asyncpg.connect(url, timeout=5)
    try:
        for schema in schemas:
            await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await connection.close()


@pytest.fixture
def postgres_store_url(postgres_server: str) -> Iterator[Callable[[str], str]]:
    """Return a function that maps a log name to a store URL with a fresh schema; the schemas are dropped after the test."""
    schemas: dict[str, str] = {}

    def make(name: str = "log") -> str:
        if name not in schemas:
            schemas[name] = f"lf_test_{uuid.uuid4().hex[:16]}"
        return f"{postgres_server}?schema={schemas[name]}"

    yield make
    if schemas:
        run_sync(_drop_schemas(postgres_server, list(schemas.values())))
