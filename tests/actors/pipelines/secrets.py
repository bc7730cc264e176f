"""A node that reads two secrets, from the environment and from a file, and outputs only their digests."""

from __future__ import annotations

import hashlib

import pyarrow as pa
from pydantic import BaseModel

import ledgerflow as lf


class Params(BaseModel):
    token: lf.Secret
    password: lf.Secret


pipeline = lf.Pipeline("secrets", params=Params)


@pipeline.extract
def digests(context: lf.Context) -> pa.Table:
    # Logging the parameters shows the references, never the values.
    context.logger.info("secret parameters read", token=str(context.params.token),
                        sources=[str(context.params.token), str(context.params.password)])
    values = [context.params.token.reveal(), context.params.password.reveal()]
    return pa.table({
        "parameter": ["token", "password"],
        "sha256": [hashlib.sha256(value.encode()).hexdigest() for value in values],
        "length": [len(value) for value in values],
    })


@pipeline.load(target=lf.SqliteTable("digests"))
def stored(digests: pa.Table) -> pa.Table:
    return digests
