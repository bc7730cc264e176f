"""Incremental extract of a PostgreSQL table by a timestamptz column, into the warehouse.

The URL and schema come from environment variables set by tests/actors/conftest.py.
"""

from __future__ import annotations

import os

import pyarrow as pa

import ledgerflow as lf

SCHEMA = os.environ.get("LEDGERFLOW_TEST_POSTGRES_SCHEMA", "public")

events = lf.SqlSource(lf.Secret(env="LEDGERFLOW_TEST_POSTGRES_URL"), table=f"{SCHEMA}.events", name="events",
                      watermark="happened_at", batch_rows=2)

pipeline = lf.Pipeline("incremental-events")


@pipeline.extract
def new_events(context: lf.Context) -> pa.Table:
    return events.read(context=context)


@pipeline.load(target=lf.SqliteTable("events_copy"))
def warehouse(new_events: pa.Table) -> pa.Table:
    return new_events
