"""CsvSource and ParquetSource on messy files.

Each CSV fixture under ``fixtures/csv`` is paired here with the values the
source must produce and the rows it must quarantine, with their physical
line and reason.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pathlib
import pickle
import subprocess
import sys
import textwrap
import zipfile
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel, Field

from ledgerflow.actors._files import BadRowError, CsvSource, ParquetSource, SourceError
from ledgerflow.events import UsageError

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "csv"
NEW_YORK = "America/New_York"


def read_fixture(name: str, **options):  # type: ignore[no-untyped-def]
    return CsvSource(str(FIXTURES / name), **options).read(name)


def quarantined(validation) -> list[tuple[int, str]]:  # type: ignore[no-untyped-def]
    """Return the (line, reason) of each rejected row, in file order."""
    rows = validation.rejected.select(["line", "reason"]).to_pylist()
    return [(row["line"], row["reason"]) for row in rows]


def utc(*parts: int) -> dt.datetime:
    return dt.datetime(*parts, tzinfo=dt.timezone.utc)


# 1. Byte-order mark


def test_bom_not_in_column_name():
    result = read_fixture("bom.csv")

    assert result.valid.column_names == ["id", "name"]
    assert result.valid.column("id").to_pylist() == [1, 2]
    assert result.valid.column("name").to_pylist() == ["Ann", "Bo"]
    assert quarantined(result) == []


# 2. Line breaks inside quoted values


MULTILINE_SCHEMA = pa.schema([("id", pa.int64()), ("comment", pa.string()), ("amount", pa.int64())])


@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["lf", "crlf"])
def test_multiline_values_keep_physical_lines(tmp_path, newline):
    text = (FIXTURES / "multiline.csv").read_text(encoding="utf-8")
    path = tmp_path / "multiline.csv"
    path.write_bytes(text.replace("\n", newline).encode())

    result = CsvSource(str(path), schema=MULTILINE_SCHEMA).read("multiline.csv")

    assert result.valid.column("id").to_pylist() == [1, 2, 3, 6]
    assert result.valid.column("comment").to_pylist() == [
        f"first line{newline}second line", 'a "quoted" word', f"three{newline}line{newline}value",
        "last, with a comma",
    ]
    assert result.valid.column("amount").to_pylist() == [10, 20, 30, 60]
    assert quarantined(result) == [(8, "invalid int64 in column amount"), (9, "expected 3 fields, found 4")]
    assert result.rejected.column("file").to_pylist() == [str(path)] * 2
    assert result.rejected.column("amount").to_pylist() == ["not-a-number", None]
    assert result.rejected.column("row_text").to_pylist() == [None, "5,extra,50,unexpected"]


def test_multiline_lines_across_block_boundaries():
    # A 64-byte block ends inside quoted values, so records straddle batches.
    result = read_fixture("multiline.csv", schema=MULTILINE_SCHEMA, block_size=64)

    assert result.valid.column("id").to_pylist() == [1, 2, 3, 6]
    assert quarantined(result) == [(8, "invalid int64 in column amount"), (9, "expected 3 fields, found 4")]


# 3. Encodings


def test_cp1252_decoded_bad_byte_quarantined():
    result = read_fixture("cp1252.csv", encoding="cp1252")

    assert result.valid.column("name").to_pylist() == ["Zoë", "€uro Café", "ok"]
    assert result.valid.column("city").to_pylist() == ["Köln", "Zürich", "Liège"]
    # 0x81 has no character in cp1252.
    assert quarantined(result) == [(4, "invalid cp1252 in column name")]
    assert result.rejected.column("name").to_pylist() == ["bad\ufffdbyte"]
    assert result.report["encoding"] == "cp1252"


def test_invalid_utf8_quarantined_per_row():
    result = read_fixture("invalid_utf8.csv")

    assert result.valid.column("id").to_pylist() == [1, 4]
    assert result.valid.column("name").to_pylist() == ["Zoë", "ok"]
    assert quarantined(result) == [(3, "invalid utf-8 in column name"), (4, "expected 2 fields, found 3")]
    assert result.rejected.column("name").to_pylist() == ["caf\ufffd", None]
    # pyarrow 26 alone aborts the read on this row: too many fields and an invalid byte.
    assert result.rejected.column("row_text").to_pylist() == [None, "3,x,\ufffd"]


# 4. Header names


def test_header_names_made_unique():
    result = read_fixture("headers.csv")

    assert result.valid.column_names == ["name", "name_3", "column_3", "name_2", "amount"]
    assert result.valid.to_pylist() == [{"name": "Ann", "name_3": "Lee", "column_3": "x", "name_2": "y", "amount": 1}]
    assert result.report["columns_renamed"] == {"name_3": "name", "column_3": ""}


# 5. Integers beyond 64 bits


def test_big_integers_inferred_exactly():
    result = read_fixture("big_integers.csv")

    assert result.valid.schema.field("balance").type == pa.decimal128(38, 0)
    assert result.valid.column("balance").to_pylist() == [Decimal("9223372036854775807"),
                                                          Decimal("-9223372036854775809")]
    assert result.valid.schema.field("huge").type == pa.string()
    assert result.valid.column("huge").to_pylist()[1] == "123456789012345678901234567890123456789"
    # float64 would turn 9007199254740993 into 9007199254740992.
    assert result.valid.schema.field("mixed").type == pa.string()
    assert result.valid.column("mixed").to_pylist() == ["9007199254740993", "0.5"]
    assert result.report["types"]["balance"] == "decimal128(38, 0)"


def test_big_integer_declared_int64_quarantined():
    schema = pa.schema([("id", pa.int64()), ("balance", pa.int64())])

    result = read_fixture("big_integers.csv", schema=schema)

    assert result.valid.to_pylist() == [{"id": 1, "balance": 9223372036854775807}]
    assert quarantined(result) == [(3, "integer out of int64 range in column balance")]
    assert result.rejected.column("balance").to_pylist() == ["-9223372036854775809"]
    assert result.report["columns_ignored"] == ["huge", "mixed"]


# 6. Null-like values


def test_null_values_typed_columns_only():
    result = read_fixture("null_values.csv")

    assert result.valid.schema.field("amount").type == pa.float64()
    assert result.valid.column("amount").to_pylist() == [None, None, None, 7.5, None]
    assert result.valid.schema.field("label").type == pa.string()
    assert result.valid.column("label").to_pylist() == ["NA", "", "null", "N/A", "text"]
    assert result.valid.schema.field("day").type == pa.date32()
    assert result.valid.column("day").to_pylist() == [None, dt.date(2024, 1, 2), None, None, dt.date(2024, 1, 5)]
    assert result.report["null_values_found"] == {"amount": 4, "day": 3}


def test_null_in_required_field_quarantined():
    class Payment(BaseModel):
        id: int
        amount: float
        label: str | None = None

    result = read_fixture("null_values.csv", schema=Payment)

    assert result.valid.to_pylist() == [{"id": 4, "amount": 7.5, "label": "N/A"}]
    assert quarantined(result) == [(line, "missing value in column amount") for line in (2, 3, 4, 6)]
    assert result.valid.schema.field("amount").nullable is False


# 7. Local times across daylight-saving changes


def test_dst_gaps_and_folds_quarantined():
    result = read_fixture("dst.csv", timezone=NEW_YORK)

    assert result.valid.schema.field("local_time").type == pa.timestamp("s", NEW_YORK)
    assert result.valid.column("id").to_pylist() == [1, 3, 5]
    assert [value.astimezone(dt.timezone.utc) for value in result.valid.column("local_time").to_pylist()] == [
        utc(2024, 3, 10, 6, 59, 59), utc(2024, 3, 10, 7), utc(2024, 11, 3, 7),
    ]
    assert quarantined(result) == [
        (3, f"nonexistent local time in column local_time ({NEW_YORK})"),
        (5, f"ambiguous local time in column local_time ({NEW_YORK})"),
    ]


@pytest.mark.parametrize(("choice", "spring", "autumn"), [
    # "earliest" takes the last instant before the gap, at the column's unit (seconds).
    ("earliest", utc(2024, 3, 10, 6, 59, 59), utc(2024, 11, 3, 5, 30)),
    ("latest", utc(2024, 3, 10, 7), utc(2024, 11, 3, 6, 30)),
])
def test_dst_gaps_and_folds_resolved(choice, spring, autumn):
    result = read_fixture("dst.csv", timezone=NEW_YORK, ambiguous=choice, nonexistent=choice)

    instants = [value.astimezone(dt.timezone.utc) for value in result.valid.column("local_time").to_pylist()]
    assert instants[1] == spring
    assert instants[3] == autumn
    assert quarantined(result) == []
    assert result.report["resolved_local_times"] == {"local_time": {"nonexistent": 1, "ambiguous": 1}}


def test_offsets_and_local_times_mixed(tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_text("id,at\n1,2024-07-01T12:00:00-04:00\n2,2024-07-01 12:00:00\n3,noon\n")
    schema = pa.schema([("id", pa.int64()), ("at", pa.timestamp("s"))])

    result = CsvSource(str(path), schema=schema, timezone=NEW_YORK).read("mixed.csv")

    assert [value.astimezone(dt.timezone.utc) for value in result.valid.column("at").to_pylist()] == [
        utc(2024, 7, 1, 16), utc(2024, 7, 1, 16),
    ]
    assert quarantined(result) == [(4, f"invalid timestamp[s, tz={NEW_YORK}] in column at")]


# 8. Types independent of block boundaries


def test_types_independent_of_blocks(tmp_path):
    lines = ["id,amount,code"] + [f"{i},{i},{i}" for i in range(10_000)] + ["10000,2.5,A7"]
    path = tmp_path / "late.csv"
    path.write_text("\n".join(lines) + "\n")

    # 1 KiB blocks make about 80 batches; pyarrow's own inference reads only the first.
    result = CsvSource(str(path), block_size=1024).read("late.csv")

    assert result.valid.schema.field("amount").type == pa.float64()
    assert result.valid.schema.field("code").type == pa.string()
    assert result.valid.num_rows == 10_001
    assert result.valid.column("amount").to_pylist()[-2:] == [9999.0, 2.5]
    assert result.valid.column("code").to_pylist()[-2:] == ["9999", "A7"]


@pytest.mark.parametrize(("values", "expected"), [
    (["1", "true"], pa.string()),
    (["true", "FALSE"], pa.bool_()),
    (["0", "1"], pa.int64()),
    (["1", "1.5"], pa.float64()),
    (["2024-01-01", "2024-01-01 10:00:00"], pa.timestamp("s")),
    (["9223372036854775808", "0.5"], pa.string()),
])
def test_inferred_type_same_for_any_blocks(tmp_path, values, expected):
    # Every row, the header too, is padded to one 32-byte block, so each row is a batch of its own.
    rows = [f"{value},{'x' * (30 - len(value))}" for value in ["value", *values]]
    path = tmp_path / "values.csv"
    path.write_text("\n".join(rows) + "\n")

    one_batch = CsvSource(str(path)).infer_schema()
    one_batch_per_row = CsvSource(str(path), block_size=32).infer_schema()

    assert one_batch.field("value").type == expected
    assert one_batch_per_row.field("value").type == expected


def test_row_ranges_share_inferred_types(tmp_path):
    lines = ["id,amount"] + [f"{i},{i}" for i in range(1_000)] + ["1000,2.5"]
    path = tmp_path / "late.csv"
    path.write_text("\n".join(lines) + "\n")
    source = CsvSource(str(path), block_size=512, max_rows_per_partition=400)

    keys = source.partitions()
    results = [source.read(key) for key in keys]

    assert keys == ["late.csv#0-399", "late.csv#400-799", "late.csv#800-1000"]
    assert {result.valid.schema.field("amount").type for result in results} == {pa.float64()}
    assert [result.valid.num_rows for result in results] == [400, 400, 201]
    assert results[2].valid.column("id").to_pylist()[0] == 800


# 9. Rows with the wrong number of fields


def test_ragged_rows_quarantined_with_lines():
    result = read_fixture("ragged_rows.csv")

    assert result.valid.column("id").to_pylist() == [1, 4, 6]
    assert result.valid.column("name").to_pylist() == ["Ann", "Di, Jr.", "Ed"]
    assert quarantined(result) == [
        (3, "expected 3 fields, found 2"),
        (4, "expected 3 fields, found 4"),
        (6, "expected 3 fields, found 4"),
    ]
    assert result.rejected.column("row_text").to_pylist() == ["2,Bo", "3,Cy,30,extra", '5,"multi\nline, too",50,x']
    assert result.report["rejected_by_reason"] == {"expected 3 fields, found 2": 1, "expected 3 fields, found 4": 2}
    assert result.report["rows_in"] == 6


def test_ragged_rows_in_row_ranges():
    source = CsvSource(str(FIXTURES / "ragged_rows.csv"), max_rows_per_partition=2)

    results = [source.read(key) for key in source.partitions()]

    assert [quarantined(result) for result in results] == [
        [(3, "expected 3 fields, found 2")],
        [(4, "expected 3 fields, found 4")],
        [(6, "expected 3 fields, found 4")],
    ]
    assert [result.valid.column("id").to_pylist() for result in results] == [[1], [4], [6]]


def test_fail_on_bad_rows_names_line():
    source = CsvSource(str(FIXTURES / "ragged_rows.csv"), fail_on_bad_rows=True)

    with pytest.raises(BadRowError) as caught:
        source.read("ragged_rows.csv")

    assert caught.value.file == str(FIXTURES / "ragged_rows.csv")
    assert caught.value.line == 3
    assert caught.value.reason == "expected 3 fields, found 2"
    assert f"{FIXTURES / 'ragged_rows.csv'}, line 3: expected 3 fields, found 2" in str(caught.value)
    # Ray pickles errors raised in tasks.
    assert pickle.loads(pickle.dumps(caught.value)).line == 3


def test_fail_on_bad_rows_type_error():
    source = CsvSource(str(FIXTURES / "multiline.csv"), schema=MULTILINE_SCHEMA, fail_on_bad_rows=True)

    with pytest.raises(BadRowError) as caught:
        source.read("multiline.csv")

    assert caught.value.line == 8
    assert caught.value.reason == "invalid int64 in column amount"


# 10. Files larger than the memory allowed


BOUNDED_READ = textwrap.dedent("""
    import json, resource, sys
    import pyarrow as pa
    from ledgerflow.actors._files import CsvSource

    path, rows_per_partition, block_size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    source = CsvSource(path, max_rows_per_partition=rows_per_partition, block_size=block_size)
    keys = source.partitions()
    valid = []
    for key in (keys[0], keys[-1]):
        valid.append(source.read(key).valid.num_rows)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"keys": keys, "valid": valid, "rss_growth": (peak - baseline) * 1024,
                      "pool_peak": pa.default_memory_pool().max_memory()}))
""")


def write_large_csv(path: pathlib.Path, rows: int) -> None:
    chunk = 500_000
    schema = pa.schema([("id", pa.int64()), ("name", pa.string()), ("amount", pa.float64()),
                        ("created", pa.timestamp("s"))])
    with pacsv.CSVWriter(str(path), schema) as writer:
        for start in range(0, rows, chunk):
            ids = pa.array(np.arange(start, min(start + chunk, rows), dtype=np.int64))
            writer.write_table(pa.table({
                "id": ids,
                "name": pc.binary_join_element_wise("customer-", pc.cast(ids, pa.string()), ""),
                "amount": pc.multiply(pc.cast(ids, pa.float64()), 0.25),
                "created": pc.cast(pc.multiply(ids, 60), pa.timestamp("s")),
            }, schema=schema))


@pytest.mark.slow
def test_large_file_bounded_memory(tmp_path):
    path = tmp_path / "large.csv"
    write_large_csv(path, 8_000_000)
    size = path.stat().st_size

    # The reader's memory grows with the block size, so 256 KiB blocks keep it well below the file's size.
    command = [sys.executable, "-c", BOUNDED_READ, str(path), "250000", str(256 * 1024)]
    output = subprocess.run(command, capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    measured = json.loads(output.stdout)

    assert size > 400_000_000
    assert len(measured["keys"]) == 32
    assert measured["keys"][-1] == "large.csv#7750000-7999999"
    assert measured["valid"] == [250_000, 250_000]
    # Measured with pyarrow 26 on a 2-core Linux VM: a 13 MB pool peak and 100 to 115 MB of RSS growth.
    assert measured["pool_peak"] < size / 10, measured
    assert measured["rss_growth"] < size / 3, measured


# 11. Parquet


def write_parquet(path: pathlib.Path, start: int, rows: int) -> None:
    table = pa.table({"id": pa.array(range(start, start + rows), pa.int64()),
                      "name": [f"n{i}" for i in range(start, start + rows)],
                      "amount": pa.array([i * 0.5 for i in range(start, start + rows)])})
    pq.write_table(table, path, row_group_size=4)


@pytest.fixture
def parquet_files(tmp_path) -> pathlib.Path:
    write_parquet(tmp_path / "a.parquet", 0, 10)
    write_parquet(tmp_path / "b.parquet", 10, 3)
    (tmp_path / "notes.txt").write_text("not parquet")
    return tmp_path


def test_parquet_glob_one_partition_per_file(parquet_files):
    source = ParquetSource(str(parquet_files / "*.parquet"))

    keys = source.partitions()

    assert keys == ["a.parquet", "b.parquet"]
    assert source.read("a.parquet").column("id").to_pylist() == list(range(10))
    assert source.read("b.parquet").column("id").to_pylist() == [10, 11, 12]


def test_parquet_partition_per_row_group(parquet_files):
    source = ParquetSource(str(parquet_files / "*.parquet"), by_row_group=True, batch_rows=2)

    keys = source.partitions()

    assert keys == ["a.parquet#row_group=0", "a.parquet#row_group=1", "a.parquet#row_group=2",
                    "b.parquet#row_group=0"]
    assert source.read("a.parquet#row_group=2").column("id").to_pylist() == [8, 9]
    assert [batch.num_rows for batch in source.iter_batches("a.parquet#row_group=1")] == [2, 2]


def test_parquet_column_selection(parquet_files):
    source = ParquetSource(str(parquet_files / "a.parquet"), columns=["amount", "id"])

    table = source.read("a.parquet")

    assert table.column_names == ["amount", "id"]
    assert table.column("amount").to_pylist()[:3] == [0.0, 0.5, 1.0]


def test_parquet_missing_column_error(parquet_files):
    source = ParquetSource(str(parquet_files / "a.parquet"), columns=["id", "price"])

    with pytest.raises(SourceError, match=r"has no column 'price': its columns are \['id', 'name', 'amount'\]"):
        source.read("a.parquet")


def test_parquet_unknown_row_group_error(parquet_files):
    source = ParquetSource(str(parquet_files / "b.parquet"), by_row_group=True)

    with pytest.raises(SourceError, match="has 1 row groups"):
        source.read("b.parquet#row_group=5")


# Files, globs and keys


def test_glob_keys_encode_directories(tmp_path):
    (tmp_path / "2024" / "01").mkdir(parents=True)
    (tmp_path / "2024" / "01" / "a#1.csv").write_text("id\n1\n")
    (tmp_path / "2024" / "b.csv").write_text("id\n2\n3\n")
    (tmp_path / "2024" / "skip.txt").write_text("id\n4\n")
    source = CsvSource(str(tmp_path / "**" / "*.csv"), max_rows_per_partition=1)

    keys = source.partitions()

    assert keys == ["2024%2F01%2Fa%231.csv#0-0", "2024%2Fb.csv#0-0", "2024%2Fb.csv#1-1"]
    assert source.read(keys[0]).valid.column("id").to_pylist() == [1]
    assert source.read(keys[2]).valid.column("id").to_pylist() == [3]
    assert source.read(keys[0]).report["file"] == str(tmp_path / "2024" / "01" / "a#1.csv")


def test_infer_schema_round_trip():
    source = CsvSource(str(FIXTURES / "null_values.csv"))

    schema = source.infer_schema()
    declared = CsvSource(str(FIXTURES / "null_values.csv"), schema=schema).read("null_values.csv")

    assert schema.names == ["id", "amount", "label", "day"]
    assert declared.valid.equals(source.read("null_values.csv").valid)
    assert declared.report["types_source"] == "declared"


def test_pydantic_alias_names_column():
    class Person(BaseModel):
        identifier: int = Field(alias="id")
        name: str

    result = read_fixture("bom.csv", schema=Person)

    assert result.valid.column_names == ["id", "name"]
    assert result.valid.schema.field("id").type == pa.int64()


def test_source_survives_pickling():
    source = CsvSource(str(FIXTURES / "cp1252.csv"), encoding="cp1252", max_rows_per_partition=2)
    keys = source.partitions()

    copy = pickle.loads(pickle.dumps(source))

    assert copy.partitions() == keys
    assert copy.read(keys[0]).valid.column("name").to_pylist() == ["Zoë", "€uro Café"]


def test_gzip_file_read(tmp_path):
    path = tmp_path / "orders.csv.gz"
    with pa.CompressedOutputStream(str(path), "gzip") as stream:
        stream.write(b"id,name\n1,Ann\n")

    result = CsvSource(str(path)).read("orders.csv.gz")

    assert result.valid.to_pylist() == [{"id": 1, "name": "Ann"}]


def test_bad_rows_at_end_of_file_quarantined(tmp_path):
    path = tmp_path / "tail.csv"
    path.write_text('id,amount,day\n1,10.5,2024-01-01\n2,7.5,2024-01-02\n3,7\n4,8.0,2024-01-04,extra\n'
                    '5,"unterminated,2024-01-05\n', encoding="utf-8")

    result = CsvSource(str(path)).read("tail.csv")

    assert result.valid.column("id").to_pylist() == [1, 2]
    assert quarantined(result) == [(4, "expected 3 fields, found 2"), (5, "expected 3 fields, found 4"),
                                   (6, "expected 3 fields, found 2")]
    assert result.report["rows_in"] == 5


def test_bad_rows_at_end_fail_when_asked(tmp_path):
    path = tmp_path / "tail.csv"
    path.write_text("id,amount\n1,10.5\n3\n", encoding="utf-8")

    with pytest.raises(BadRowError, match=r"line 3"):
        CsvSource(str(path), fail_on_bad_rows=True).read("tail.csv")


def test_zip_archive_read(tmp_path):
    path = tmp_path / "orders.csv.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("orders.csv", "id,name\n1,Ann\n2,NA\n")

    result = CsvSource(str(path), max_rows_per_partition=1)
    keys = result.partitions()

    assert [row for key in keys for row in result.read(key).valid.to_pylist()] == [
        {"id": 1, "name": "Ann"}, {"id": 2, "name": "NA"}]


def test_zip_archive_of_two_files_error(tmp_path):
    path = tmp_path / "orders.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.csv", "id\n1\n")
        archive.writestr("b.csv", "id\n2\n")

    with pytest.raises(SourceError, match=r"orders\.zip contains 2 files \(a\.csv, b\.csv\).*extract the files"):
        CsvSource(str(path)).read("orders.zip")


def test_invalid_zip_archive_error(tmp_path):
    path = tmp_path / "orders.csv.zip"
    path.write_bytes(b"id,name\n1,Ann\n")

    with pytest.raises(SourceError, match=r"orders\.csv\.zip is not a valid zip archive"):
        CsvSource(str(path)).read("orders.csv.zip")


# Errors


def test_missing_file_error(tmp_path):
    source = CsvSource(str(tmp_path / "absent.csv"))

    with pytest.raises(SourceError, match=r"file not found: .*absent\.csv: check the path"):
        source.partitions()


def test_glob_matching_nothing_error(tmp_path):
    source = CsvSource(str(tmp_path / "*.csv"))

    with pytest.raises(SourceError, match=r"no files match '.*\*\.csv': check the pattern"):
        source.partitions()


def test_schema_missing_column_error():
    schema = pa.schema([("id", pa.int64()), ("price", pa.float64())])
    source = CsvSource(str(FIXTURES / "bom.csv"), schema=schema)

    with pytest.raises(SourceError, match=r"has no column 'price', which the schema declares: its columns are "
                                          r"\['id', 'name'\]"):
        source.read("bom.csv")


def test_unknown_partition_error():
    source = CsvSource(str(FIXTURES / "bom.csv"))

    with pytest.raises(SourceError, match="unknown partition 'other.csv'"):
        source.read("other.csv")


def test_empty_file_error(tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")

    with pytest.raises(SourceError, match="is empty: a CSV file needs a header row"):
        CsvSource(str(tmp_path / "empty.csv")).read("empty.csv")


@pytest.mark.parametrize(("options", "message"), [
    ({"encoding": "klingon"}, "unknown encoding 'klingon'"),
    ({"delimiter": ";;"}, "invalid delimiter ';;'"),
    ({"ambiguous": "shift"}, "invalid ambiguous='shift'"),
    ({"timezone": "Mars/Olympus"}, "unknown timezone 'Mars/Olympus'"),
    ({"max_rows_per_partition": 0}, "invalid max_rows_per_partition=0"),
    ({"null_values": "NA"}, "invalid null_values 'NA'"),
    ({"schema": pa.schema([("tags", pa.list_(pa.string()))])}, "cannot parse from text"),
])
def test_invalid_options_rejected(options, message):
    with pytest.raises(SourceError, match=message) as caught:
        CsvSource(str(FIXTURES / "bom.csv"), **options)

    assert isinstance(caught.value, UsageError)
