"""Pipelines whose first node blocks until a release file exists, so that a test can act on a run in flight.

``pipeline`` loads right after the blocking node; ``gated`` stops at an
approval gate first. The node creates ``started_file`` when it begins, and
raises TimeoutError after ``max_wait_s`` so that a forgotten run cannot hang.
"""

import pathlib
import time

import pyarrow as pa
from pydantic import BaseModel

import ledgerflow as lf


class BlockingParams(BaseModel):
    started_file: str
    release_file: str
    max_wait_s: float = 120.0


def wait_for_release(context: lf.Context) -> pa.Table:
    params = context.params
    pathlib.Path(params.started_file).touch()
    deadline = time.monotonic() + params.max_wait_s
    while not pathlib.Path(params.release_file).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"release file {params.release_file} did not appear within {params.max_wait_s} s")
        time.sleep(0.05)
    return pa.table({"value": [1, 2, 3]})


def passed_through(released: pa.Table) -> pa.Table:
    return released


pipeline = lf.Pipeline("blocking", params=BlockingParams)
pipeline.extract(wait_for_release, name="released")
pipeline.load(passed_through, name="warehouse", target=lf.SqliteTable("released"))

gated = lf.Pipeline("blocking-gated", params=BlockingParams)
gated.extract(wait_for_release, name="released")
gated.approval("review", after="released")
gated.load(passed_through, name="warehouse", after="review", target=lf.SqliteTable("released"))
