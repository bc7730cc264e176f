"""A pipeline whose partitions record the Ray node they ran on, and can wait for a release file.

Each partition creates ``SIGNAL_DIR/started-PARTITION-NODE`` when it begins.
With ``block`` set, it then waits until ``SIGNAL_DIR/release`` exists, so a
test can act on a cluster while tasks are in flight.
"""

import pathlib
import time

import pyarrow as pa
import ray
from pydantic import BaseModel

import ledgerflow as lf


class SpreadParams(BaseModel):
    signal_dir: str
    partitions: int = 6
    block: bool = False
    max_wait_s: float = 120.0


def partition_keys(params: SpreadParams) -> list[int]:
    return list(range(params.partitions))


pipeline = lf.Pipeline("spread", params=SpreadParams)


@pipeline.extract(partitions=partition_keys, retry=lf.Retry(attempts=3, backoff_s=0.1))
def placed(partition: int, context: lf.Context) -> pa.Table:
    params = context.params
    node_id = ray.get_runtime_context().get_node_id()
    signals = pathlib.Path(params.signal_dir)
    (signals / f"started-{partition}-{node_id}").touch()
    deadline = time.monotonic() + params.max_wait_s
    while params.block and not (signals / "release").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"release file in {signals} did not appear within {params.max_wait_s} s")
        time.sleep(0.05)
    return pa.table({"part": [partition] * 5, "value": list(range(5)), "node_id": [node_id] * 5})


@pipeline.load(target=lf.SqliteTable("placed"))
def warehouse(placed: pa.Table) -> pa.Table:
    return placed
