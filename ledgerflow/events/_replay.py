"""Opening stores and rebuilding a run's state from its stream."""

from __future__ import annotations

import os

from ledgerflow.events._chain import key_from_environment
from ledgerflow.events._errors import RunNotFoundError, UsageError
from ledgerflow.events._sqlite import SqliteEventStore
from ledgerflow.events._state import RunState, apply
from ledgerflow.events._store import EventStore

_KEY_FROM_ENVIRONMENT = object()
HOME_ENV = "LEDGERFLOW_HOME"
STORE_ENV = "LEDGERFLOW_STORE"
DEFAULT_HOME = ".ledgerflow"


def resolve_home(home: str | os.PathLike[str] | None = None) -> str:
    """Return the home directory: ``home``, else ``$LEDGERFLOW_HOME``, else ``./.ledgerflow``."""
    return os.path.abspath(home or os.environ.get(HOME_ENV) or DEFAULT_HOME)


def resolve_store_url(home_dir: str, store: str | None = None) -> str:
    """Return the store URL: ``store``, else ``$LEDGERFLOW_STORE``, else ``HOME/ledgerflow.db``."""
    url = store or os.environ.get(STORE_ENV) or os.path.join(home_dir, "ledgerflow.db")
    return url if "://" in url else os.path.abspath(url)


async def open_store(
    url: str | os.PathLike[str], *, key: bytes | None | object = _KEY_FROM_ENVIRONMENT, create: bool = True
) -> EventStore:
    """Open an event store by URL: a SQLite file path (or ``sqlite:///path``) or a ``postgresql://`` URL.

    A PostgreSQL URL may pick the log's schema with ``?schema=NAME``
    (default ``ledgerflow``); see :mod:`ledgerflow.events._postgres`.

    The log key comes from ``LEDGERFLOW_LOG_KEY`` unless ``key`` is given.

    Raises:
        UsageError: The URL names a backend this version does not have, or
            ``LEDGERFLOW_LOG_KEY`` is not a valid key.
    """
    text = os.fspath(url)
    if key is _KEY_FROM_ENVIRONMENT:
        try:
            resolved_key = key_from_environment()
        except ValueError as err:
            raise UsageError(str(err)) from err
    else:
        resolved_key = key
    if is_postgres_url(text):
        # Imported here so that SQLite users do not pay for loading asyncpg.
        from ledgerflow.events._postgres import PostgresEventStore

        return await PostgresEventStore.open(text, key=resolved_key, create=create)  # type: ignore[arg-type]
    if text.startswith("sqlite:///"):
        text = text[len("sqlite:///") - 1 :] if text.startswith("sqlite:////") else text[len("sqlite:///") :]
    elif "://" in text:
        raise UsageError(
            f"unsupported store URL {text!r}: pass a SQLite file path or a "
            "postgresql://USER@HOST:PORT/DATABASE?schema=NAME URL"
        )
    return await SqliteEventStore.open(text, key=resolved_key, create=create)  # type: ignore[arg-type]


def is_postgres_url(url: str) -> bool:
    """Return whether ``url`` names a PostgreSQL store (``postgresql://`` or ``postgres://``)."""
    return url.lower().startswith(("postgresql://", "postgres://"))


async def load_run_state(
    store: EventStore, run_id: str, *, until_seq: int | None = None, verify: bool = True
) -> RunState:
    """Fold a run's stream into its state, verifying the chain on the way unless ``verify`` is false.

    Raises:
        StoreError: The run has no events.
        TamperedLogError: The chain does not verify.
    """
    state = RunState()
    async for recorded in store.read_stream(run_id, to_seq=until_seq, verify=verify):
        apply(state, recorded.decode(store.path), seq=recorded.seq, recorded_at=recorded.recorded_at)
    if state.seq == 0:
        raise RunNotFoundError(run_id, store.path)
    return state

