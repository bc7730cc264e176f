"""Customers per region, checked by policy rules before they are loaded.

Three pipelines share the nodes and differ in their rules: ``masking``
hashes the ``email`` column, ``blocking`` fails the run because ``ssn`` would
reach the warehouse, and ``quarantining`` keeps only customers from allowed
countries. ``gated`` masks like ``masking`` and waits at a gate before the
load. Every node attempt appends ``node[partition]`` to the ``trace`` file.
"""

from __future__ import annotations

import pyarrow as pa
from pydantic import BaseModel

import ledgerflow as lf

#: Rows per region: (customer id, email, ssn, country).
CUSTOMERS = {
    "north": [(1, "ann@example.org", "123-45-6789", "US"), (2, "bo@example.org", "987-65-4321", "CA"),
              (3, "cy@example.org", "111-22-3333", "FR")],
    "south": [(4, "di@example.org", "444-55-6666", "US"), (5, None, "777-88-9999", None),
              (6, "ed@example.org", "222-33-4444", "BR"), (7, "fi@example.org", "555-66-7777", "CA")],
}
ALLOWED_COUNTRIES = ("US", "CA")


class Params(BaseModel):
    trace: str


def record_execution(context: lf.Context) -> None:
    with open(context.params.trace, "a", encoding="utf-8") as handle:
        handle.write(f"{context.node}[{context.partition}]\n")


def build(name: str, policies: list[lf.PolicyRule], *, gated: bool = False) -> lf.Pipeline:
    pipeline = lf.Pipeline(name, params=Params, policies=policies)

    @pipeline.extract(partitions=sorted(CUSTOMERS))
    def customers(partition: str, context: lf.Context) -> pa.Table:
        record_execution(context)
        rows = CUSTOMERS[partition]
        return pa.table({
            "customer_id": [row[0] for row in rows], "email": [row[1] for row in rows],
            "ssn": [row[2] for row in rows], "country": [row[3] for row in rows],
            "region": [partition] * len(rows),
        })

    @pipeline.transform(partitioned_like="customers")
    def cleaned(customers: pa.Table, context: lf.Context) -> pa.Table:
        record_execution(context)
        return customers

    if gated:
        pipeline.approval("review", after="cleaned")

    @pipeline.load(partitioned_like="cleaned", after="review" if gated else (),
                   target=lf.SqliteTable("customers"))
    def warehouse(cleaned: pa.Table, context: lf.Context) -> pa.Table:
        record_execution(context)
        return cleaned

    return pipeline


MASK_EMAIL = lf.PolicyRule(name="hash-email", kind="personal", columns=("email",), action="mask")
BLOCK_SSN = lf.PolicyRule(name="no-ssn-in-warehouse", kind="forbidden", columns=("ssn",), action="block")
DROP_SSN = lf.PolicyRule(name="drop-ssn", kind="forbidden", columns=("ssn",), action="mask")
ALLOWED = lf.PolicyRule(name="allowed-countries", kind="allowed_values", column="country",
                        allowed=ALLOWED_COUNTRIES, action="quarantine")

masking = build("masking", [MASK_EMAIL, DROP_SSN])
blocking = build("blocking", [MASK_EMAIL, BLOCK_SSN])
quarantining = build("quarantining", [DROP_SSN, ALLOWED])
gated = build("gated-masking", [MASK_EMAIL, DROP_SSN], gated=True)
