"""A small pipeline, and a driver that starts many runs of it at once on one Ray cluster.

    python many.py --store URL --home DIR --runs 20

Each run tags its rows with its own run number, so a test can tell whether
one run's rows ended up in another's table. Prints one JSON object per run.
"""

import argparse
import json
import sys
import threading

import pyarrow as pa
from pydantic import BaseModel

import ledgerflow as lf


class ManyParams(BaseModel):
    number: int


pipeline = lf.Pipeline("many", params=ManyParams)


@pipeline.extract(partitions=[0, 1, 2])
def rows(partition: int, context: lf.Context) -> pa.Table:
    number = context.params.number
    return pa.table({"number": [number] * 4, "part": [partition] * 4, "value": list(range(4))})


@pipeline.load(target=lf.SqliteTable("rows"))
def warehouse(rows: pa.Table) -> pa.Table:
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True)
    parser.add_argument("--home", required=True)
    parser.add_argument("--checkpoints", required=True)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    settings = lf.Settings.resolve(home=args.home, store=args.store, checkpoints=args.checkpoints)
    results: dict[int, dict[str, object]] = {}

    def one(number: int) -> None:
        try:
            result = lf.run(__file__ + ":pipeline", params={"number": number}, run_id=f"many-{number}",
                            settings=settings)
            results[number] = {"run_id": result.run_id, "status": result.status, "seq": result.seq}
        except Exception as err:  # reported as the run's outcome
            results[number] = {"run_id": f"many-{number}", "status": "error", "error": f"{type(err).__name__}: {err}"}

    threads = [threading.Thread(target=one, args=(number,)) for number in range(args.runs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for number in sorted(results):
        print(json.dumps(results[number]))
    sys.exit(0 if all(item["status"] == "completed" for item in results.values()) else 1)


if __name__ == "__main__":
    main()
