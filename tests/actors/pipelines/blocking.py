"""A run whose extract waits until a file exists, so tests control when it can finish.

The extract first writes its process id to ``started_file``, so a test can
tell that the run is under way and which worker process runs the extract.
"""

from __future__ import annotations

import os
import time

import pyarrow as pa
from pydantic import BaseModel

import ledgerflow as lf


class Params(BaseModel):
    #: Written (atomically) with the worker's process id once the extract runs.
    started_file: str
    #: The extract returns once this file exists.
    release_file: str
    max_wait_s: float = 120.0


pipeline = lf.Pipeline("blocking", params=Params)


@pipeline.extract
def waiting(context: lf.Context) -> pa.Table:
    temporary = f"{context.params.started_file}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(str(os.getpid()))
    os.replace(temporary, context.params.started_file)
    deadline = time.monotonic() + context.params.max_wait_s
    while not os.path.exists(context.params.release_file):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{context.params.release_file} did not appear within {context.params.max_wait_s} s")
        time.sleep(0.05)
    return pa.table({"value": [1, 2, 3]})


@pipeline.load(target=lf.SqliteTable("released"))
def stored(waiting: pa.Table) -> pa.Table:
    return waiting
