"""A pipeline that handles secrets carelessly, to show that none of them leaves a process in clear.

Each partition of ``records`` logs the planted secrets (read from the JSON
file ``planted``) in several ways, fails its first attempt with all of them in
the error message, and outputs them as data rows. The run then waits at a gate
whose sample shows those rows, and loads them once approved.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import structlog
from pydantic import BaseModel

import ledgerflow as lf


class Params(BaseModel):
    planted: str
    markers: str
    token: lf.Secret


pipeline = lf.Pipeline("leaky", params=Params)


@pipeline.extract(partitions=["a", "b"], retry=lf.Retry(attempts=3, backoff_s=0.1))
def records(partition: str, context: lf.Context) -> pa.Table:
    planted = json.loads(Path(context.params.planted).read_text(encoding="utf-8"))
    token = context.params.token.reveal()
    dsn = f"postgresql://app:{planted['password']}@127.0.0.1:5432/ledger"
    bearer = f"Bearer {planted['bearer']}"
    context.logger.info("connecting", dsn=dsn, authorization=bearer, api_token=token)
    context.logger.info(f"calling the API with {planted['github']} and {planted['slack']} as {token}")
    context.logger.info("mcp server configured", server={
        "command": "mcp-github", "env": {"GITHUB_TOKEN": planted["mcp"]}, "headers": {"Authorization": bearer}})
    # A library's logger, not the context's, still gets the attempt's ids.
    structlog.get_logger("leaky.library").info("library line", partition_value=partition)
    marker = Path(context.params.markers) / f"{partition}.failed"
    if not marker.exists():
        marker.touch()
        raise ConnectionError(
            f"cannot reach {dsn} with token {token}, key {planted['aws']}, jwt {planted['jwt']}, "
            f"GITHUB_TOKEN={planted['mcp']}, Authorization: {bearer}, {planted['github']} {planted['slack']}"
        )
    context.record(f"source_{partition}", dsn)
    notes = [dsn, bearer, planted["jwt"], planted["aws"], planted["github"], planted["slack"], token]
    return pa.table({"id": list(range(len(notes))), "partition": [partition] * len(notes), "note": notes})


pipeline.approval("review", after="records")


@pipeline.load(after="review", target=lf.SqliteTable("records"))
def stored(records: pa.Table) -> pa.Table:
    return records
