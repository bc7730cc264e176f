"""Idempotent loads into a Parquet dataset: one file per run, node and partition, renamed into place."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import structlog

from ledgerflow.actors._checkpoints import resolve_filesystem
from ledgerflow.actors._errors import ConfigurationError, SchemaMismatchError

logger = structlog.get_logger("ledgerflow.sinks")

#: The file name of a node that is not partitioned.
WHOLE_FILE = "all"


@dataclass(frozen=True)
class ParquetDataset:
    """A load target: a directory of Parquet files on any ``pyarrow.fs`` filesystem.

    Each run, node and partition writes ``run=<run id>/node=<node>/part-<partition>.parquet``
    below ``uri`` under a temporary name starting with ``_`` (which dataset
    readers skip) and renames it into place. A file already in place means
    the partition is loaded, so a retried or resumed load writes nothing.
    Read the dataset with ``pyarrow.dataset.dataset(uri, partitioning="hive")``.

    NOTE: The rename is atomic on local and HDFS filesystems. Object stores
    such as S3 emulate it with a copy, so a crash there can leave the
    temporary file behind, which readers still skip.
    """

    uri: str

    def describe(self) -> str:
        """Return the target for logs and reports."""
        return f"Parquet dataset {self.uri}"


def partition_path(base: str, run_id: str, node: str, partition: str) -> str:
    """Return the path of one partition's file below the dataset's base path."""
    return f"{base}/run={run_id}/node={node}/part-{partition or WHOLE_FILE}.parquet"


def load_into_parquet(target: ParquetDataset, data: pa.Table, *, run_id: str, node: str,
                      partition: str) -> tuple[int, bool]:
    """Write ``data`` as this run, node and partition's file unless it is already in place.

    Returns:
        The rows the partition loaded and whether an earlier attempt already had.
    """
    filesystem, base = resolve_filesystem(target.uri)
    final = partition_path(base.rstrip("/"), run_id, node, partition)
    log = logger.bind(target=target.describe(), run_id=run_id, node=node, partition=partition or None)
    if filesystem.get_file_info(final).type == pafs.FileType.File:
        rows = pq.ParquetFile(final, filesystem=filesystem).metadata.num_rows
        log.info("load skipped, file already in place", rows=rows)
        return rows, True
    check_parquet_schema(filesystem, base, target.describe(), data.schema)
    directory = final.rsplit("/", 1)[0]
    filesystem.create_dir(directory, recursive=True)
    temporary = f"{directory}/_tmp-{uuid.uuid4().hex}.parquet"
    try:
        pq.write_table(data, temporary, filesystem=filesystem)
        filesystem.move(temporary, final)
    except BaseException:
        if filesystem.get_file_info(temporary).type == pafs.FileType.File:
            filesystem.delete_file(temporary)
        raise
    log.info("load committed", rows=data.num_rows, path=final)
    return data.num_rows, False


def check_parquet_schema(filesystem: pafs.FileSystem, base: str, target: str, schema: pa.Schema) -> None:
    """Raise SchemaMismatchError if a file already in the dataset has other columns or types.

    Compares with the first data file found, in path order. Columns of null
    type fit any type.
    """
    if filesystem.get_file_info(base).type != pafs.FileType.Directory:
        return
    infos = filesystem.get_file_info(pafs.FileSelector(base, recursive=True))
    files = sorted(info.path for info in infos if info.type == pafs.FileType.File
                   and info.path.endswith(".parquet") and not info.base_name.startswith(("_", ".")))
    if not files:
        return
    try:
        existing = pq.read_schema(files[0], filesystem=filesystem)
    except (pa.ArrowInvalid, OSError) as err:
        raise ConfigurationError(f"cannot read the schema of {files[0]} in {target}: {err}: "
                                 "remove or repair that file") from err
    found = dict(zip(existing.names, existing.types))
    for field in schema:
        present = found.get(field.name)
        if present is None:
            raise SchemaMismatchError(target=target, column=field.name, expected=str(field.type), found=None)
        if pa.types.is_null(field.type) or pa.types.is_null(present):
            continue
        if present != field.type:
            raise SchemaMismatchError(target=target, column=field.name, expected=str(field.type),
                                      found=str(present))
