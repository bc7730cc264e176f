"""A PostgreSQL table read in three key ranges and loaded into a PostgreSQL table and a Parquet dataset.

The URL is a secret that Ray workers read from their environment. The schema
and the dataset directory come from environment variables set by tests/actors/conftest.py.
"""

from __future__ import annotations

import os

import pyarrow as pa

import ledgerflow as lf

URL = lf.Secret(env="LEDGERFLOW_TEST_POSTGRES_URL")
SCHEMA = os.environ.get("LEDGERFLOW_TEST_POSTGRES_SCHEMA", "public")
DATASET = os.environ.get("LEDGERFLOW_TEST_DATASET", "items-dataset")

source = lf.SqlSource(URL, table=f"{SCHEMA}.items", name="items", key="id", partitions=3)

pipeline = lf.Pipeline("sql-targets")


@pipeline.extract(partitions=source.partitions)
def items(partition: str) -> pa.Table:
    return source.read(partition)


@pipeline.load(partitioned_like="items", target=lf.PostgresTable("items_copy", url=URL, schema=SCHEMA))
def copy_to_postgres(items: pa.Table) -> pa.Table:
    return items


@pipeline.load(partitioned_like="items", target=lf.ParquetDataset(DATASET))
def copy_to_parquet(items: pa.Table) -> pa.Table:
    return items
