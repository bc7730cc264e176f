"""Incremental SQL extracts: each run reads past the watermark the previous run advanced, once."""

from __future__ import annotations

import os
import sqlite3

import pytest

import ledgerflow as lf
from ledgerflow.actors import ExecutorDiedError
from ledgerflow.actors._errors import UnfinishedIncrementalRunError
from ledgerflow.actors._checkpoints import read_checkpoint
from ledgerflow.actors._sinks import load_into_sqlite
from ledgerflow.projections._history import projections_path

PIPELINE = "incremental.py"


def _add_orders(path, ids) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS orders (order_id INTEGER PRIMARY KEY, amount REAL, updated INTEGER)")
        conn.executemany("INSERT INTO orders VALUES (?, ?, ?)", [(i, i * 1.5, i) for i in ids])
    conn.close()


def _run(home, helpers, run_id, database, **options):
    return lf.start_run(helpers.pipeline_locator(PIPELINE), params={"database": str(database)}, run_id=run_id,
                        settings=home.settings, **options)


def _loaded_ids(home) -> list[int]:
    return [row[0] for row in home.rows("orders_copy", order_by="order_id")]


def _seq_of(home, run_id, event_type) -> int:
    return next(logged.seq for logged in home.events(run_id) if logged.type == event_type)


def test_second_run_reads_only_new_rows(home, helpers, tmp_path):
    database = tmp_path / "source.db"
    _add_orders(database, range(1, 11))

    first = _run(home, helpers, "orders-1", database)
    _add_orders(database, range(11, 16))
    second = _run(home, helpers, "orders-2", database)

    assert first.status == "completed", first.message
    assert second.status == "completed", second.message
    assert _loaded_ids(home) == list(range(1, 16))
    assert home.of_type("orders-1", "WatermarkInherited") == []
    assert [event.value for event in home.of_type("orders-1", "WatermarkAdvanced")] == [10]
    inherited = home.of_type("orders-2", "WatermarkInherited")
    assert [(event.name, event.value, event.from_run_id) for event in inherited] == [("orders", 10, "orders-1")]
    assert inherited[0].from_seq == _seq_of(home, "orders-1", "WatermarkAdvanced")
    advanced = home.of_type("orders-2", "WatermarkAdvanced")
    assert [(event.value, event.previous) for event in advanced] == [(15, 10)]
    loaded = sum(part.report["loaded_rows"] for part in home.state("orders-2").nodes["warehouse"].partitions.values())
    assert loaded == 5


def test_run_without_new_rows_keeps_origin(home, helpers, tmp_path):
    database = tmp_path / "source.db"
    _add_orders(database, range(1, 6))

    _run(home, helpers, "orders-1", database)
    quiet = _run(home, helpers, "orders-2", database)
    after_quiet = _run(home, helpers, "orders-3", database)

    assert quiet.status == "completed", quiet.message
    assert home.of_type("orders-2", "WatermarkAdvanced") == []
    inherited = home.of_type("orders-3", "WatermarkInherited")
    assert [(event.value, event.from_run_id) for event in inherited] == [(5, "orders-1")]
    assert home.state("orders-3").shared["watermark:orders"] == 5
    assert _loaded_ids(home) == list(range(1, 6))


def test_other_pipeline_watermark_not_inherited(home, helpers, tmp_path):
    database = tmp_path / "source.db"
    _add_orders(database, range(1, 4))
    _run(home, helpers, "orders-1", database)

    other = lf.start_run(helpers.pipeline_locator("etl.py"), params={"trace": str(tmp_path / "trace.txt")},
                         run_id="etl-1", settings=home.settings)

    assert other.status == "completed", other.message
    assert home.of_type("etl-1", "WatermarkInherited") == []


def test_replay_shows_inherited_watermark(home, helpers, tmp_path):
    database = tmp_path / "source.db"
    _add_orders(database, range(1, 4))
    _run(home, helpers, "orders-1", database)
    _run(home, helpers, "orders-2", database)
    inherited_seq = _seq_of(home, "orders-2", "WatermarkInherited")

    state = lf.load_state("orders-2", settings=home.settings)

    assert state.shared["watermark:orders"] == 3
    assert inherited_seq <= state.seq


def _crash_when_loads_start(home, helpers, tmp_path, database):  # type: ignore[no-untyped-def]
    """Run ``orders-1`` in a fresh home until its loads start, then kill its executor; return that home.

    A completed probe run in ``home`` gives the seq at which the loads start.
    """
    probe = _run(home, helpers, "probe", database, max_in_flight=1)
    assert probe.status == "completed", probe.message
    load_started = next(logged.seq for logged in home.events("probe")
                        if logged.type == "NodeStarted" and logged.event.node == "warehouse")
    crashed = type(home)(lf.Settings.resolve(home=str(tmp_path / "fresh"), address=home.settings.address))
    with pytest.raises(ExecutorDiedError):
        lf.start_run(helpers.pipeline_locator(PIPELINE), params={"database": str(database)}, run_id="orders-1",
                     settings=crashed.settings, max_in_flight=1, fault_exit_after_seq=load_started,
                     max_restarts=0)
    crashed.wait_lease_free("orders-1")
    return crashed


def test_marker_committed_before_log_not_duplicated(home, helpers, tmp_path):
    """The loads commit their markers, then the executor dies before the log records them."""
    database = tmp_path / "source.db"
    _add_orders(database, range(1, 11))
    crashed = _crash_when_loads_start(home, helpers, tmp_path, database)
    settings = crashed.settings
    state = crashed.state("orders-1")
    for key, part in state.nodes["orders"].partitions.items():
        rows = read_checkpoint(part.manifest, node="orders", partition=key)
        load_into_sqlite(settings.warehouse, "orders_copy", rows, run_id="orders-1", node="warehouse", partition=key)
    resumed = lf.resume_run("orders-1", settings=settings, max_restarts=0)

    assert resumed.status == "completed", resumed.message
    assert _loaded_ids(crashed) == list(range(1, 11))
    completed = crashed.of_type("orders-1", "PartitionCompleted")
    assert [event.already_loaded for event in completed if event.node == "warehouse"] == [True, True]
    assert [event.value for event in crashed.of_type("orders-1", "WatermarkAdvanced")] == [10]


def test_new_run_refused_while_earlier_unfinished(home, helpers, tmp_path):
    database = tmp_path / "source.db"
    _add_orders(database, range(1, 11))
    fresh = _crash_when_loads_start(home, helpers, tmp_path, database)

    with pytest.raises(UnfinishedIncrementalRunError, match=r"'orders-1'.*ledgerflow resume orders-1"):
        _run(fresh, helpers, "orders-2", database)
    refused_events = fresh.events("orders-2")
    resumed = lf.resume_run("orders-1", settings=fresh.settings)
    second = _run(fresh, helpers, "orders-2", database)

    assert resumed.status == "completed", resumed.message
    assert second.status == "completed", second.message
    assert refused_events == []
    assert [event.from_run_id for event in fresh.of_type("orders-2", "WatermarkInherited")] == ["orders-1"]
    assert _loaded_ids(fresh) == list(range(1, 11))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_crash_anywhere_loads_rows_once(home, make_home, helpers, tmp_path):
    database = tmp_path / "source.db"
    _add_orders(database, range(1, 11))
    reference = _run(home, helpers, "reference", database, max_in_flight=1)
    assert reference.status == "completed", reference.message
    seqs = [logged.seq for logged in home.events("reference")]

    for k in seqs:
        crashed = make_home(f"home-{k}")
        source = tmp_path / f"source-{k}.db"
        _add_orders(source, range(1, 11))

        drive = helpers.drive_to_end(crashed, helpers.pipeline_locator(PIPELINE), run_id="first",
                                     params={"database": str(source)}, fault_exit_after_seq=k)
        _add_orders(source, range(11, 16))
        second = lf.start_run(helpers.pipeline_locator(PIPELINE), params={"database": str(source)},
                              run_id="second", settings=crashed.settings)

        assert drive.result.status == "completed", f"k={k}: {drive.result.message}"
        assert drive.crashes == 1, f"k={k}"
        assert second.status == "completed", f"k={k}: {second.message}"
        assert _loaded_ids(crashed) == list(range(1, 16)), f"k={k}: rows skipped or loaded twice"
        assert [event.value for event in crashed.of_type("first", "WatermarkAdvanced")] == [10], f"k={k}"
        assert [event.value for event in crashed.of_type("second", "WatermarkInherited")] == [10], f"k={k}"



def test_watermark_in_read_model(home, helpers, tmp_path):
    database = tmp_path / "source.db"
    _add_orders(database, range(1, 4))
    _run(home, helpers, "orders-1", database)
    _run(home, helpers, "orders-2", database)

    lf.history("orders-2", home=home.settings.home).nodes()  # catches the read models up
    with sqlite3.connect(projections_path(home.settings.store_url)) as conn:
        rows = conn.execute("SELECT run_id, value, seq FROM shared_state WHERE key = 'watermark:orders' "
                            "ORDER BY run_id").fetchall()
    conn.close()

    assert rows == [("orders-1", "3", _seq_of(home, "orders-1", "WatermarkAdvanced")),
                    ("orders-2", "3", _seq_of(home, "orders-2", "WatermarkInherited"))]


@pytest.mark.postgres
def test_postgres_timestamp_watermark_runs(home, helpers, postgres_url):
    schema = os.environ["LEDGERFLOW_TEST_POSTGRES_SCHEMA"]
    helpers.postgres_fetch(postgres_url, f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    try:
        helpers.postgres_fetch(postgres_url, f'CREATE TABLE "{schema}".events (id bigint, happened_at timestamptz)')
        insert = (f"""INSERT INTO "{schema}".events SELECT g, timestamptz '2024-03-31 00:30+00' + g * interval """
                  """'1 second' FROM generate_series($1::int, $2::int) AS g""")
        helpers.postgres_fetch(postgres_url, insert, 1, 5)
        locator = helpers.pipeline_locator("incremental_postgres.py")

        first = lf.start_run(locator, run_id="events-1", settings=home.settings)
        helpers.postgres_fetch(postgres_url, insert, 6, 8)
        second = lf.start_run(locator, run_id="events-2", settings=home.settings)
    finally:
        helpers.postgres_fetch(postgres_url, f'DROP SCHEMA "{schema}" CASCADE')

    assert first.status == "completed", first.message
    assert second.status == "completed", second.message
    assert [row[0] for row in home.rows("events_copy", order_by="id")] == list(range(1, 9))
    assert [event.value for event in home.of_type("events-1", "WatermarkAdvanced")] == [
        "2024-03-31T00:30:05.000000+00:00"]
    inherited = home.of_type("events-2", "WatermarkInherited")
    assert [(event.value, event.from_run_id) for event in inherited] == [
        ("2024-03-31T00:30:05.000000+00:00", "events-1")]
    assert home.state("events-2").nodes["warehouse"].partitions[""].report["loaded_rows"] == 3
