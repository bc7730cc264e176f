"""The projector: folds the whole log into read-model tables in their own SQLite file.

Each event maps to a few SQL statements that depend only on the event and on
rows written for earlier events, so dropping the file and rebuilding from
the log gives identical tables. The last applied global position is stored
with the rows, in the same transaction.
"""

from __future__ import annotations

import gc
import json
import os
import sqlite3
from collections.abc import Callable
from typing import Any

import structlog

from ledgerflow.events import (
    ApprovalGranted,
    ApprovalRejected,
    ApprovalRequested,
    CancelRequested,
    CheckpointInvalidated,
    CheckpointsRemoved,
    CodeChangeAccepted,
    Event,
    EventStore,
    ExecutorAttached,
    NodeAttemptFailed,
    NodeCompleted,
    NodeStarted,
    PartitionCompleted,
    PolicyViolated,
    RecordedEvent,
    RouteTaken,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunInterrupted,
    RunQuarantined,
    RunResumed,
    RunStarted,
    StateRecorded,
    StoreError,
    WATERMARK_PREFIX,
    WatermarkAdvanced,
    WatermarkInherited,
    decode_payload,
    enable_wal,
)

SCHEMA_VERSION = 3

logger = structlog.get_logger("ledgerflow.projections")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS projection_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, pipeline TEXT, locator TEXT, fingerprint TEXT, submitter TEXT,
    params TEXT, status TEXT NOT NULL, interrupted INTEGER NOT NULL DEFAULT 0,
    started_at TEXT, ended_at TEXT, duration_s REAL, events INTEGER NOT NULL DEFAULT 0,
    failed_attempts INTEGER NOT NULL DEFAULT 0, rows_loaded INTEGER, error TEXT, quarantine_reason TEXT,
    executor_host TEXT, executor_pid INTEGER, cancel_requested_by TEXT
);
CREATE TABLE IF NOT EXISTS nodes (
    run_id TEXT NOT NULL, node TEXT NOT NULL, kind TEXT NOT NULL, fingerprint TEXT,
    status TEXT NOT NULL, partitions INTEGER NOT NULL, partitions_done INTEGER NOT NULL DEFAULT 0,
    rows_out INTEGER, started_at TEXT, completed_at TEXT, inputs TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (run_id, node)
);
CREATE TABLE IF NOT EXISTS partitions (
    run_id TEXT NOT NULL, node TEXT NOT NULL, partition TEXT NOT NULL, status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, rows_in INTEGER, rows_out INTEGER, duration_s REAL,
    completed_at TEXT, last_error TEXT,
    PRIMARY KEY (run_id, node, partition)
);
CREATE TABLE IF NOT EXISTS attempts (
    run_id TEXT NOT NULL, seq INTEGER NOT NULL, node TEXT NOT NULL, partition TEXT NOT NULL,
    attempt INTEGER NOT NULL, outcome TEXT NOT NULL, error_type TEXT, message TEXT,
    timed_out INTEGER NOT NULL DEFAULT 0, duration_s REAL, recorded_at TEXT,
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    run_id TEXT NOT NULL, node TEXT NOT NULL, partition TEXT NOT NULL, port TEXT NOT NULL,
    uri TEXT NOT NULL, sha256 TEXT NOT NULL, rows INTEGER NOT NULL, bytes INTEGER,
    seq INTEGER NOT NULL, valid INTEGER NOT NULL DEFAULT 1, invalid_reason TEXT, invalid_seq INTEGER,
    removed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, node, partition, port, seq)
);
CREATE TABLE IF NOT EXISTS lineage (
    run_id TEXT NOT NULL, seq INTEGER NOT NULL, node TEXT NOT NULL, partition TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE IF NOT EXISTS fingerprints (
    run_id TEXT NOT NULL, seq INTEGER NOT NULL, fingerprint TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE IF NOT EXISTS approvals (
    run_id TEXT NOT NULL, gate TEXT NOT NULL, request_seq INTEGER NOT NULL, requested_at TEXT,
    summary TEXT, checkpoints TEXT, sample_uri TEXT, reviewers TEXT, four_eyes INTEGER, submitter TEXT,
    decision TEXT, reviewer TEXT, comment TEXT, decided_at TEXT, decision_seq INTEGER,
    PRIMARY KEY (run_id, request_seq)
);
CREATE TABLE IF NOT EXISTS routes (
    run_id TEXT NOT NULL, seq INTEGER NOT NULL, source TEXT NOT NULL, route TEXT NOT NULL,
    condition_met INTEGER NOT NULL, taken TEXT, skipped TEXT, reason TEXT, recorded_at TEXT,
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE IF NOT EXISTS quarantine (
    run_id TEXT NOT NULL, node TEXT NOT NULL, partition TEXT NOT NULL, reason TEXT NOT NULL, rows INTEGER NOT NULL,
    PRIMARY KEY (run_id, node, partition, reason)
);
CREATE TABLE IF NOT EXISTS findings (
    run_id TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL, node TEXT, partition TEXT,
    detail TEXT NOT NULL, recorded_at TEXT,
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE IF NOT EXISTS shared_state (
    run_id TEXT NOT NULL, key TEXT NOT NULL, value TEXT, seq INTEGER NOT NULL, node TEXT,
    PRIMARY KEY (run_id, key)
);
"""

#: Lineage with each output's inputs: the checkpoints of its source nodes
#: (the same partition when the source has it, else all partitions) that
#: were recorded before the output and not invalidated by then.
LINEAGE_QUERY = """
SELECT lineage.node, lineage.partition, lineage.seq, output.uri AS output_uri, output.sha256 AS output_sha256,
       nodes.fingerprint, (SELECT fingerprint FROM fingerprints WHERE fingerprints.run_id = lineage.run_id
           AND fingerprints.seq < lineage.seq ORDER BY fingerprints.seq DESC LIMIT 1) AS run_fingerprint,
       source.node AS input_node,
       source.partition AS input_partition, source.uri AS input_uri, source.sha256 AS input_sha256
FROM lineage
JOIN nodes ON nodes.run_id = lineage.run_id AND nodes.node = lineage.node
LEFT JOIN checkpoints AS output ON output.run_id = lineage.run_id AND output.node = lineage.node
    AND output.partition = lineage.partition AND output.port = 'output' AND output.seq = lineage.seq
JOIN json_each(nodes.inputs) AS edge
JOIN checkpoints AS source ON source.run_id = lineage.run_id
    AND source.node = json_extract(edge.value, '$[0]') AND source.port = json_extract(edge.value, '$[1]')
    AND source.seq < lineage.seq AND (source.invalid_seq IS NULL OR source.invalid_seq > lineage.seq)
    AND (source.partition = lineage.partition OR NOT EXISTS (
        SELECT 1 FROM checkpoints AS same WHERE same.run_id = lineage.run_id AND same.node = source.node
        AND same.partition = lineage.partition))
WHERE lineage.run_id = ?
ORDER BY lineage.seq, input_node, input_partition
"""

#: The read-model tables, in the order a rebuild compares them.
TABLES = ("runs", "nodes", "partitions", "attempts", "checkpoints", "lineage", "fingerprints", "approvals", "routes",
          "quarantine", "findings", "shared_state")

Handler = Callable[[sqlite3.Connection, RecordedEvent, Any], None]


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


class Projector:
    """Keeps the read models in ``path`` up to date with an event store."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)

    def _connect(self) -> sqlite3.Connection:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        found = _schema_version(conn)
        if found is not None and found != SCHEMA_VERSION:
            # Read models hold nothing the log does not, so an older layout is rebuilt rather than migrated.
            conn.close()
            logger.info("rebuilding read models of an older layout", path=self.path, found_version=found,
                        version=SCHEMA_VERSION)
            self.drop()
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        # Several processes may create the file at once, and the switch to WAL must wait them out.
        enable_wal(conn)
        conn.execute("PRAGMA synchronous = NORMAL")
        # A rebuild touches far more pages than the default 2 MiB cache holds.
        conn.execute("PRAGMA cache_size = -65536")
        # Checkpointing the WAL every 10,000 pages (about 40 MB) rather than 1,000 costs a rebuild fewer fsyncs.
        conn.execute("PRAGMA wal_autocheckpoint = 10000")
        conn.executescript(_SCHEMA)
        return conn

    def position(self) -> int:
        """Return the last global position applied (0 for a new file)."""
        conn = self._connect()
        try:
            return _position(conn)
        finally:
            conn.close()

    def drop(self) -> None:
        """Delete the read-model file; the next catch-up rebuilds it from the log."""
        for suffix in ("", "-wal", "-shm"):
            try:
                os.remove(self.path + suffix)
            except FileNotFoundError:
                pass

    async def catch_up(self, store: EventStore, *, chunk: int = 20000) -> int:
        """Apply every event after the stored position; return how many were applied.

        Concurrent catch-ups from several processes are safe: each chunk is
        applied in one write transaction that re-reads the position first.
        """
        conn = self._connect()
        applied = 0
        # The batches hold many small objects without reference cycles, and the
        # cycle collector's passes over them took about a quarter of a rebuild's CPU time.
        collecting = gc.isenabled()
        gc.disable()
        try:
            identity = await _log_identity(store)
            _check_identity(conn, identity, self.path)
            position = _position(conn)
            batch: list[tuple[RecordedEvent, Event | dict[str, Any]]] = []
            async for recorded in store.read_all(after_position=position):
                batch.append((recorded, _decode(recorded, store.path)))
                if len(batch) >= chunk:
                    applied += self._apply_batch(conn, batch, store.path)
                    batch = []
            if batch:
                applied += self._apply_batch(conn, batch, store.path)
        finally:
            if collecting:
                gc.enable()
            conn.close()
        return applied

    def _apply_batch(
        self, conn: sqlite3.Connection, batch: list[tuple[RecordedEvent, Event | dict[str, Any]]], log_path: str
    ) -> int:
        conn.execute("BEGIN IMMEDIATE")
        try:
            position = _position(conn)
            applied = 0
            heads: dict[str, int] = {}
            completions = _Completions()
            for recorded, event in batch:
                if recorded.global_position <= position:
                    continue
                if isinstance(event, dict):
                    completions.add(recorded, event, log_path)
                else:
                    handler = _HANDLERS.get(type(event))
                    if handler is not None:
                        # Other handlers read rows that completions write, so those go first.
                        completions.flush(conn)
                        handler(conn, recorded, event)
                heads[recorded.stream_id] = recorded.seq
                applied += 1
            completions.flush(conn)

            conn.executemany("UPDATE runs SET events = ? WHERE run_id = ?",
                             [(seq, run_id) for run_id, seq in heads.items()])
            if applied:
                conn.execute("INSERT OR REPLACE INTO projection_meta (key, value) VALUES ('position', ?)",
                             (str(batch[-1][0].global_position),))
            conn.execute("COMMIT")
            return applied
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def query(self, sql: str, parameters: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """Run a read-only query against the read models."""
        conn = self._connect()
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute(sql, parameters).fetchall()
        finally:
            conn.close()

    def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        """Return every read-model table's rows in primary-key order, for comparisons."""
        conn = self._connect()
        try:
            return {table: conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2, 3").fetchall() for table in TABLES}
        finally:
            conn.close()


_COMPLETED = PartitionCompleted.event_type


def _decode(recorded: RecordedEvent, path: str) -> Event | dict[str, Any]:
    """Decode an event, leaving a current PartitionCompleted as its stored fields.

    Those are most of a log, and validating each one into a model is a large
    share of a rebuild's time. The fields were validated when the event was
    appended. A payload that lacks one is decoded in full in
    :meth:`_Completions.add`, which raises the usual error.
    """
    if recorded.type == _COMPLETED and recorded.schema_version == PartitionCompleted.schema_version:
        fields = decode_payload(recorded.payload)
        if isinstance(fields, dict):
            return fields
    return recorded.decode(path)


def _schema_version(conn: sqlite3.Connection) -> int | None:
    """Return the layout version a read-model file was written with (None for a new file)."""
    try:
        row = conn.execute("SELECT value FROM projection_meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.OperationalError:
        return None
    return int(row[0]) if row else None


def _position(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM projection_meta WHERE key = 'position'").fetchone()
    return int(row[0]) if row else 0


async def _log_identity(store: EventStore) -> str:
    """Identify the log by its first event, so read models of another log are never mixed in."""
    async for recorded in store.read_all(after_position=0):
        return recorded.event_id
    return ""


def _check_identity(conn: sqlite3.Connection, identity: str, path: str) -> None:
    row = conn.execute("SELECT value FROM projection_meta WHERE key = 'log'").fetchone()
    if row is None and identity:
        conn.execute("INSERT OR IGNORE INTO projection_meta (key, value) VALUES ('log', ?)", (identity,))
        conn.execute("INSERT OR IGNORE INTO projection_meta (key, value) VALUES ('schema_version', ?)",
                     (str(SCHEMA_VERSION),))
    elif row is not None and identity and row[0] != identity:
        raise StoreError(
            f"read models {path} were built from another log: delete the file (it is rebuilt from the log)",
            path=path,
        )


# Handlers: one per event type, each a few statements keyed by run id.


def _run_started(conn: sqlite3.Connection, recorded: RecordedEvent, event: RunStarted) -> None:
    run_id = recorded.stream_id
    conn.execute(
        "INSERT OR REPLACE INTO runs (run_id, pipeline, locator, fingerprint, submitter, params, status, "
        "started_at, events) VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?)",
        (run_id, event.pipeline, event.locator, event.fingerprint, event.submitter, _json(event.params),
         recorded.recorded_at, recorded.seq),
    )
    # Lineage names the code fingerprint in force when each output was recorded.
    conn.execute("INSERT OR REPLACE INTO fingerprints (run_id, seq, fingerprint) VALUES (?, ?, ?)",
                 (run_id, recorded.seq, event.fingerprint))
    for spec in event.nodes:
        keys = spec.partitions or ("",)
        inputs = [[source.removesuffix(".rejected"), "rejected" if source.endswith(".rejected") else "output"]
                  for source in spec.inputs.values()]
        conn.execute(
            "INSERT OR REPLACE INTO nodes (run_id, node, kind, fingerprint, status, partitions, inputs) "
            "VALUES (?, ?, ?, ?, 'pending', ?, ?)",
            (run_id, spec.name, spec.kind, spec.fingerprint, len(keys), _json(inputs)),
        )
        conn.executemany(
            "INSERT OR REPLACE INTO partitions (run_id, node, partition, status) VALUES (?, ?, ?, 'pending')",
            [(run_id, spec.name, key) for key in keys],
        )


def _executor_attached(conn: sqlite3.Connection, recorded: RecordedEvent, event: ExecutorAttached) -> None:
    conn.execute("UPDATE runs SET executor_host = ?, executor_pid = ?, interrupted = 0 WHERE run_id = ?",
                 (event.host, event.pid, recorded.stream_id))


def _run_resumed(conn: sqlite3.Connection, recorded: RecordedEvent, event: RunResumed) -> None:
    conn.execute("UPDATE runs SET interrupted = 0 WHERE run_id = ?", (recorded.stream_id,))


def _code_change(conn: sqlite3.Connection, recorded: RecordedEvent, event: CodeChangeAccepted) -> None:
    conn.execute("UPDATE runs SET fingerprint = ? WHERE run_id = ?", (event.new_fingerprint, recorded.stream_id))
    conn.execute("INSERT OR REPLACE INTO fingerprints (run_id, seq, fingerprint) VALUES (?, ?, ?)",
                 (recorded.stream_id, recorded.seq, event.new_fingerprint))
    conn.execute(
        "INSERT OR REPLACE INTO findings (run_id, seq, kind, node, detail, recorded_at) VALUES (?, ?, ?, ?, ?, ?)",
        (recorded.stream_id, recorded.seq, "code change accepted", None,
         f"changed nodes {', '.join(event.changed_nodes)} accepted by {event.accepted_by}", recorded.recorded_at),
    )


def _node_started(conn: sqlite3.Connection, recorded: RecordedEvent, event: NodeStarted) -> None:
    conn.execute("UPDATE nodes SET status = 'running', started_at = COALESCE(started_at, ?) "
                 "WHERE run_id = ? AND node = ?", (recorded.recorded_at, recorded.stream_id, event.node))


class _Completions:
    """PartitionCompleted events buffered and written with one statement per table.

    They are most of a log, and a statement per event and table took most of
    a rebuild's time. The result equals applying them one by one: later rows
    replace earlier ones as they would, and a node's completed count is
    recounted from its partitions.
    """

    def __init__(self) -> None:
        self.partitions: list[tuple[Any, ...]] = []
        self.checkpoints: list[tuple[Any, ...]] = []
        self.quarantine: list[tuple[Any, ...]] = []
        self.lineage: list[tuple[Any, ...]] = []
        self.nodes: set[tuple[str, str]] = set()

    def add(self, recorded: RecordedEvent, fields: dict[str, Any], log_path: str) -> None:
        """Buffer one PartitionCompleted, given as its stored fields."""
        try:
            self._add(recorded, fields)
        except (KeyError, TypeError, AttributeError):
            recorded.decode(log_path)  # raises the error that names the event and the field
            raise

    def _add(self, recorded: RecordedEvent, fields: dict[str, Any]) -> None:
        run_id, seq = recorded.stream_id, recorded.seq
        node, partition = fields["node"], fields["partition"]
        manifest = fields.get("manifest")
        report = fields.get("report") or {}
        self.nodes.add((run_id, node))

        self.partitions.append((
            fields["attempt"], report.get("rows_in"), manifest["rows"] if manifest else report.get("loaded_rows"),
            fields.get("duration_s", 0.0), recorded.recorded_at, run_id, node, partition,
        ))

        if manifest:
            self.checkpoints.append((run_id, node, partition, "output", manifest["uri"], manifest["sha256"],
                                     manifest["rows"], manifest.get("bytes", 0), seq))
        extra = fields.get("extra")
        if extra:
            self.checkpoints.extend(
                (run_id, node, partition, port, item["uri"], item["sha256"], item["rows"], item.get("bytes", 0), seq)
                for port, item in extra.items()
            )

        reasons = report.get("rejected_by_reason")
        if reasons:
            self.quarantine.extend((run_id, node, partition, str(reason), int(count))
                                   for reason, count in reasons.items())

        # Inputs are resolved when lineage is read (see LINEAGE_QUERY): they are
        # the source checkpoints that were valid when this event was recorded.
        self.lineage.append((run_id, seq, node, partition))

    def flush(self, conn: sqlite3.Connection) -> None:
        """Write the buffered completions and empty the buffer."""
        if not self.nodes:
            return
        conn.executemany(
            "UPDATE partitions SET status = 'completed', attempts = MAX(attempts, ?), rows_in = ?, rows_out = ?, "
            "duration_s = ?, completed_at = ? WHERE run_id = ? AND node = ? AND partition = ?",
            self.partitions,
        )
        conn.executemany(
            "UPDATE nodes SET partitions_done = (SELECT count(*) FROM partitions WHERE partitions.run_id = ? "
            "AND partitions.node = ? AND status = 'completed') WHERE run_id = ? AND node = ?",
            [(run_id, node, run_id, node) for run_id, node in self.nodes],
        )
        conn.executemany(
            "INSERT OR REPLACE INTO checkpoints (run_id, node, partition, port, uri, sha256, rows, bytes, seq) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            self.checkpoints,
        )
        conn.executemany(
            "INSERT OR REPLACE INTO quarantine (run_id, node, partition, reason, rows) VALUES (?, ?, ?, ?, ?)",
            self.quarantine,
        )

        conn.executemany("INSERT OR REPLACE INTO lineage (run_id, seq, node, partition) VALUES (?, ?, ?, ?)",
                         self.lineage)
        self.__init__()  # type: ignore[misc]


def _attempt_failed(conn: sqlite3.Connection, recorded: RecordedEvent, event: NodeAttemptFailed) -> None:
    run_id = recorded.stream_id
    partition = event.partition or ""
    conn.execute(
        "INSERT OR REPLACE INTO attempts (run_id, seq, node, partition, attempt, outcome, error_type, message, "
        "timed_out, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (run_id, recorded.seq, event.node, partition, event.attempt, "retried" if event.will_retry else "failed",
         event.error_type, event.message, int(event.timed_out), recorded.recorded_at),
    )
    conn.execute(
        "UPDATE partitions SET attempts = MAX(attempts, ?), last_error = ?, "
        "status = CASE WHEN ? THEN status ELSE 'failed' END WHERE run_id = ? AND node = ? AND partition = ?",
        (event.attempt, f"{event.error_type}: {event.message}", int(event.will_retry), run_id, event.node, partition),
    )
    conn.execute("UPDATE runs SET failed_attempts = failed_attempts + 1 WHERE run_id = ?", (run_id,))


def _node_completed(conn: sqlite3.Connection, recorded: RecordedEvent, event: NodeCompleted) -> None:
    conn.execute("UPDATE nodes SET status = 'completed', rows_out = ?, completed_at = ? WHERE run_id = ? AND node = ?",
                 (event.rows, recorded.recorded_at, recorded.stream_id, event.node))


def _checkpoint_invalidated(conn: sqlite3.Connection, recorded: RecordedEvent, event: CheckpointInvalidated) -> None:
    run_id = recorded.stream_id
    conn.execute("UPDATE checkpoints SET valid = 0, invalid_reason = ?, invalid_seq = ? "
                 "WHERE run_id = ? AND node = ? AND partition = ? AND valid = 1",
                 (event.reason, recorded.seq, run_id, event.node, event.partition))
    conn.execute("UPDATE partitions SET status = 'pending' WHERE run_id = ? AND node = ? AND partition = ?",
                 (run_id, event.node, event.partition))
    conn.execute("UPDATE nodes SET status = CASE WHEN status = 'completed' THEN 'running' ELSE status END, "
                 "partitions_done = partitions_done - 1 WHERE run_id = ? AND node = ?", (run_id, event.node))
    conn.execute(
        "INSERT OR REPLACE INTO findings (run_id, seq, kind, node, partition, detail, recorded_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (run_id, recorded.seq, "checkpoint invalidated", event.node, event.partition,
         f"{event.uri}: {event.reason}", recorded.recorded_at),
    )


def _state_recorded(conn: sqlite3.Connection, recorded: RecordedEvent, event: StateRecorded) -> None:
    conn.execute("INSERT OR REPLACE INTO shared_state (run_id, key, value, seq, node) VALUES (?, ?, ?, ?, ?)",
                 (recorded.stream_id, event.key, _json(event.value), recorded.seq, event.node))


def _watermark_set(conn: sqlite3.Connection, recorded: RecordedEvent,
                   event: WatermarkInherited | WatermarkAdvanced) -> None:
    conn.execute("INSERT OR REPLACE INTO shared_state (run_id, key, value, seq, node) VALUES (?, ?, ?, ?, ?)",
                 (recorded.stream_id, WATERMARK_PREFIX + event.name, _json(event.value), recorded.seq, ""))


def _route_taken(conn: sqlite3.Connection, recorded: RecordedEvent, event: RouteTaken) -> None:
    run_id = recorded.stream_id
    conn.execute(
        "INSERT OR REPLACE INTO routes (run_id, seq, source, route, condition_met, taken, skipped, reason, recorded_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (run_id, recorded.seq, event.source, event.route, int(event.condition_met), _json(list(event.taken)),
         _json(list(event.skipped)), event.reason, recorded.recorded_at),
    )
    conn.executemany("UPDATE nodes SET status = 'skipped' WHERE run_id = ? AND node = ?",
                     [(run_id, name) for name in event.skipped])


def _approval_requested(conn: sqlite3.Connection, recorded: RecordedEvent, event: ApprovalRequested) -> None:
    run_id = recorded.stream_id
    conn.execute(
        "INSERT OR REPLACE INTO approvals (run_id, gate, request_seq, requested_at, summary, checkpoints, sample_uri, "
        "reviewers, four_eyes, submitter) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (run_id, event.gate, recorded.seq, recorded.recorded_at, _json(event.summary), _json(event.checkpoints),
         event.sample.uri if event.sample else None,
         _json(list(event.reviewers)) if event.reviewers is not None else None, int(event.four_eyes),
         event.submitter),
    )
    conn.execute("UPDATE nodes SET status = 'waiting', started_at = COALESCE(started_at, ?) "
                 "WHERE run_id = ? AND node = ?", (recorded.recorded_at, run_id, event.gate))
    conn.execute("UPDATE runs SET status = 'waiting_for_approval' WHERE run_id = ?", (run_id,))


def _approval_granted(conn: sqlite3.Connection, recorded: RecordedEvent, event: ApprovalGranted) -> None:
    run_id = recorded.stream_id
    conn.execute("UPDATE approvals SET decision = 'approved', reviewer = ?, comment = ?, decided_at = ?, "
                 "decision_seq = ? WHERE run_id = ? AND request_seq = ?",
                 (event.reviewer, event.comment, recorded.recorded_at, recorded.seq, run_id, event.request_seq))
    conn.execute("UPDATE nodes SET status = 'completed', completed_at = ?, partitions_done = 1 "
                 "WHERE run_id = ? AND node = ?", (recorded.recorded_at, run_id, event.gate))
    conn.execute("UPDATE runs SET status = 'running' WHERE run_id = ?", (run_id,))


def _approval_rejected(conn: sqlite3.Connection, recorded: RecordedEvent, event: ApprovalRejected) -> None:
    run_id = recorded.stream_id
    conn.execute("UPDATE approvals SET decision = 'rejected', reviewer = ?, comment = ?, decided_at = ?, "
                 "decision_seq = ? WHERE run_id = ? AND request_seq = ?",
                 (event.reviewer, event.comment, recorded.recorded_at, recorded.seq, run_id, event.request_seq))
    conn.execute("UPDATE nodes SET status = 'rejected' WHERE run_id = ? AND node = ?", (run_id, event.gate))
    _end(conn, recorded, "rejected")


def _policy_violated(conn: sqlite3.Connection, recorded: RecordedEvent, event: PolicyViolated) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO findings (run_id, seq, kind, node, partition, detail, recorded_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (recorded.stream_id, recorded.seq, f"policy {event.rule}: {event.action}", event.node, event.partition,
         event.detail, recorded.recorded_at),
    )


def _cancel_requested(conn: sqlite3.Connection, recorded: RecordedEvent, event: CancelRequested) -> None:
    conn.execute("UPDATE runs SET cancel_requested_by = ? WHERE run_id = ?", (event.requested_by, recorded.stream_id))


def _interrupted(conn: sqlite3.Connection, recorded: RecordedEvent, event: RunInterrupted) -> None:
    conn.execute("UPDATE runs SET interrupted = 1 WHERE run_id = ?", (recorded.stream_id,))


def _end(conn: sqlite3.Connection, recorded: RecordedEvent, status: str, **columns: Any) -> None:
    assignments = "".join(f", {name} = ?" for name in columns)
    conn.execute(
        f"UPDATE runs SET status = ?, ended_at = ?, duration_s = (julianday(?) - julianday(started_at)) * 86400"
        f"{assignments} WHERE run_id = ?",
        (status, recorded.recorded_at, recorded.recorded_at, *columns.values(), recorded.stream_id),
    )


def _completed(conn: sqlite3.Connection, recorded: RecordedEvent, event: RunCompleted) -> None:
    _end(conn, recorded, "completed", rows_loaded=event.rows_loaded)


def _quarantined(conn: sqlite3.Connection, recorded: RecordedEvent, event: RunQuarantined) -> None:
    _end(conn, recorded, "quarantined", quarantine_reason=event.reason)


def _failed(conn: sqlite3.Connection, recorded: RecordedEvent, event: RunFailed) -> None:
    _end(conn, recorded, "failed", error=event.message)


def _cancelled(conn: sqlite3.Connection, recorded: RecordedEvent, event: RunCancelled) -> None:
    _end(conn, recorded, "cancelled", cancel_requested_by=event.requested_by)


def _checkpoints_removed(conn: sqlite3.Connection, recorded: RecordedEvent, event: CheckpointsRemoved) -> None:
    # One pass over the run's checkpoints, not one per URI: the table is keyed by partition, not by URI.
    conn.execute("UPDATE checkpoints SET removed = 1 WHERE run_id = ? AND uri IN (SELECT value FROM json_each(?))",
                 (recorded.stream_id, json.dumps(list(event.uris))))


_HANDLERS: dict[type[Event], Handler] = {
    RunStarted: _run_started,
    ExecutorAttached: _executor_attached,
    RunResumed: _run_resumed,
    CodeChangeAccepted: _code_change,
    NodeStarted: _node_started,
    NodeAttemptFailed: _attempt_failed,
    NodeCompleted: _node_completed,
    CheckpointInvalidated: _checkpoint_invalidated,
    StateRecorded: _state_recorded,
    WatermarkInherited: _watermark_set,
    WatermarkAdvanced: _watermark_set,
    RouteTaken: _route_taken,
    ApprovalRequested: _approval_requested,
    ApprovalGranted: _approval_granted,
    ApprovalRejected: _approval_rejected,
    PolicyViolated: _policy_violated,
    CancelRequested: _cancel_requested,
    RunInterrupted: _interrupted,
    RunCompleted: _completed,
    RunQuarantined: _quarantined,
    RunFailed: _failed,
    RunCancelled: _cancelled,
    CheckpointsRemoved: _checkpoints_removed,
}
