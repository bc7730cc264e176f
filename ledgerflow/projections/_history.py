"""Notebook views of a run's history: events, nodes, state at any seq, a timeline chart."""

from __future__ import annotations

import hashlib
import html
import os
from typing import Any

from ledgerflow.events import (
    EventStore,
    RunState,
    is_postgres_url,
    load_run_state,
    open_store,
    resolve_home,
    resolve_store_url,
    run_sync,
)
from ledgerflow.projections._projector import LINEAGE_QUERY, Projector


def projections_path(store_url: str, home: str | None = None) -> str:
    """Return the read-model file of a log: beside a SQLite log, or under the home for a PostgreSQL log.

    A PostgreSQL log's file is ``HOME/projections/<first 16 hex digits of
    SHA-256 of the store URL without password>.projections.db``, with HOME
    from ``home``, else ``$LEDGERFLOW_HOME``, else ``./.ledgerflow``.
    """
    if is_postgres_url(store_url):
        from ledgerflow.events._postgres import parse_url

        digest = hashlib.sha256(parse_url(store_url).display.encode()).hexdigest()[:16]
        return os.path.join(resolve_home(home), "projections", f"{digest}.projections.db")
    path = store_url.removeprefix("sqlite:///") if store_url.startswith("sqlite:///") else store_url
    base, _ = os.path.splitext(path)
    return f"{base}.projections.db"


async def caught_up_projector(store: EventStore, home: str | None = None) -> Projector:
    """Return the projector of ``store`` (see :func:`projections_path`), caught up with the log."""
    projector = Projector(projections_path(store.path, home))
    await projector.catch_up(store)
    return projector


class History:
    """A run's history for notebooks. Reading never blocks a writing run (the log is in WAL mode).

    Get one with :func:`ledgerflow.history`.
    """

    def __init__(self, run_id: str, store_url: str, home: str | None = None) -> None:
        self.run_id = run_id
        self.store_url = store_url
        self.home = home

    def __repr__(self) -> str:
        return f"History({self.run_id!r}, store={self.store_url!r})"

    async def _with_store(self, work: Any) -> Any:
        store = await open_store(self.store_url, create=False)
        try:
            return await work(store)
        finally:
            await store.close()

    def state_at(self, seq: int | None = None) -> RunState:
        """Return the run's state right after event ``seq`` (the latest when None), chain verified."""

        async def work(store: EventStore) -> RunState:
            return await load_run_state(store, self.run_id, until_seq=seq)

        return run_sync(self._with_store(work))

    def events(self) -> Any:
        """Return a pandas DataFrame, one row per event, payload fields as columns."""
        import pandas as pd

        async def work(store: EventStore) -> list[dict[str, Any]]:
            rows = []
            async for recorded in store.read_stream(self.run_id):
                row: dict[str, Any] = {"seq": recorded.seq, "type": recorded.type,
                                       "recorded_at": pd.Timestamp(recorded.recorded_at),
                                       "event_id": recorded.event_id, "hash": recorded.hash.hex()}
                for key, value in recorded.decode(store.path).model_dump(mode="json").items():
                    row.setdefault(key, value)
                rows.append(row)
            return rows

        return pd.DataFrame(run_sync(self._with_store(work)))

    def _table(self, sql: str) -> Any:
        import pandas as pd

        async def work(store: EventStore) -> list[dict[str, Any]]:
            projector = await caught_up_projector(store, self.home)
            return [dict(row) for row in projector.query(sql, (self.run_id,))]

        return pd.DataFrame(run_sync(self._with_store(work)))

    def nodes(self) -> Any:
        """Return a DataFrame of nodes: status, partitions, rows, start, end and duration."""
        frame = self._table(
            "SELECT node, kind, status, partitions_done, partitions, rows_out, started_at, completed_at "
            "FROM nodes WHERE run_id = ? ORDER BY started_at IS NULL, started_at, node"
        )
        if not frame.empty:
            import pandas as pd

            started = pd.to_datetime(frame["started_at"], utc=True)
            completed = pd.to_datetime(frame["completed_at"], utc=True)
            frame["duration_s"] = (completed - started).dt.total_seconds()
        return frame

    def partitions(self) -> Any:
        """Return a DataFrame of partitions: status, attempts, rows and duration."""
        return self._table("SELECT node, partition, status, attempts, rows_in, rows_out, duration_s, completed_at, "
                           "last_error FROM partitions WHERE run_id = ? ORDER BY node, partition")

    def approvals(self) -> Any:
        """Return a DataFrame of approval requests and their decisions."""
        return self._table("SELECT gate, request_seq, requested_at, decision, reviewer, comment, decided_at "
                           "FROM approvals WHERE run_id = ? ORDER BY request_seq")

    def lineage(self) -> Any:
        """Return a DataFrame linking each output checkpoint to its inputs (one row per input) and code."""
        return self._table(LINEAGE_QUERY)

    def timeline(self) -> Any:
        """Plot node and partition durations as horizontal bars; needs matplotlib.

        Returns:
            The matplotlib Figure.
        """
        try:
            import matplotlib.pyplot as plt
        except ImportError as err:
            raise ImportError("timeline() needs matplotlib: pip install 'ledgerflow[notebook]'") from err
        import pandas as pd

        events = self.events()
        completed = events[events["type"] == "PartitionCompleted"]
        figure, axis = plt.subplots(figsize=(10, max(2.0, 0.3 * len(completed) + 1)))
        if not completed.empty:
            start = events["recorded_at"].min()
            ends = (completed["recorded_at"] - start).dt.total_seconds()
            durations = completed["duration_s"].astype(float)
            labels = [f"{node}[{part}]" if part else node
                      for node, part in zip(completed["node"], completed["partition"])]
            axis.barh(labels, durations, left=ends - durations)
        axis.set_xlabel("seconds since the run started")
        axis.set_title(f"run {self.run_id}")
        axis.invert_yaxis()
        figure.tight_layout()
        del pd
        return figure

    def _repr_html_(self) -> str:
        state = self.state_at()
        rows = "".join(
            f"<tr><td>{html.escape(name)}</td><td>{html.escape(node.spec.kind)}</td>"
            f"<td>{html.escape(node.status)}</td><td>{node.partitions_done}/{len(node.partitions)}</td></tr>"
            for name, node in state.nodes.items()
        )
        return (f"<b>run {html.escape(state.run_id)}</b> ({html.escape(state.pipeline)}): "
                f"{html.escape(state.status)}, {state.seq} events"
                f"<table><tr><th>node</th><th>kind</th><th>status</th><th>partitions</th></tr>{rows}</table>")


def history(run_id: str, *, home: str | None = None, store: str | None = None) -> History:
    """Open a run's history from the log under ``home`` (or ``$LEDGERFLOW_HOME``, or ``./.ledgerflow``)."""
    home_dir = resolve_home(home)
    return History(run_id, resolve_store_url(home_dir, store), home_dir)
