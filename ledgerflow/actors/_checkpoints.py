"""Checkpoint files: Arrow IPC written once per attempt, trusted only when their SHA-256 matches."""

from __future__ import annotations

import hashlib
import os
import uuid

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.ipc as ipc

from ledgerflow.actors._errors import CheckpointCorruptError, ConfigurationError
from ledgerflow.events import Manifest


def resolve_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """Return the filesystem and path for a local path or any ``pyarrow.fs`` URI."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise ConfigurationError(f"unsupported checkpoint URI {uri!r}: {err}") from err


class CheckpointStore:
    """Checkpoint files under one root (a directory or a ``pyarrow.fs`` URI).

    Each attempt writes its own file through a temporary name and a rename,
    so a late or half-written attempt never replaces one the log trusts.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self._fs, self._base = resolve_filesystem(root)
        self._local = isinstance(self._fs, pafs.LocalFileSystem)

    def _uri(self, path: str) -> str:
        if self._local:
            return path
        prefix = self.root.split("://", 1)[0]
        return f"{prefix}://{path}"

    def write(self, table: pa.Table, *, run_id: str, node: str, partition: str, attempt: int,
              port: str = "output") -> Manifest:
        """Write ``table`` as this attempt's checkpoint and return its manifest."""
        sink = pa.BufferOutputStream()
        with ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        data = sink.getvalue()
        digest = hashlib.sha256(data).hexdigest()
        name = f"{partition or '_'}.{port}.a{attempt}.arrow"
        directory = f"{self._base}/{run_id}/{node}"
        final = f"{directory}/{name}"
        temporary = f"{directory}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
        self._fs.create_dir(directory, recursive=True)
        with self._fs.open_output_stream(temporary) as stream:
            stream.write(data)
        self._fs.move(temporary, final)
        return Manifest(uri=self._uri(final), rows=table.num_rows, sha256=digest, bytes=len(data))

    def write_bytes(self, data: bytes, *, run_id: str, name: str) -> str:
        """Write a small side file (a summary or a sample) and return its URI."""
        directory = f"{self._base}/{run_id}"
        self._fs.create_dir(directory, recursive=True)
        final = f"{directory}/{name}"
        temporary = f"{final}.{uuid.uuid4().hex[:8]}.tmp"
        with self._fs.open_output_stream(temporary) as stream:
            stream.write(data)
        self._fs.move(temporary, final)
        return self._uri(final)

    def run_directory(self, run_id: str) -> str:
        return self._uri(f"{self._base}/{run_id}")

    def read_bytes(self, *, run_id: str, name: str) -> bytes | None:
        """Return a side file written by :meth:`write_bytes`, or None when it is absent."""
        try:
            with self._fs.open_input_stream(f"{self._base}/{run_id}/{name}") as stream:
                return stream.read()
        except (FileNotFoundError, OSError):
            return None

    def run_usage(self, run_id: str) -> tuple[int, int]:
        """Return the number of files and bytes under a run's directory (0, 0 when it is absent)."""
        selector = pafs.FileSelector(f"{self._base}/{run_id}", allow_not_found=True, recursive=True)
        files = [info for info in self._fs.get_file_info(selector) if info.type == pafs.FileType.File]
        return len(files), sum(info.size or 0 for info in files)

    def remove_run(self, run_id: str) -> None:
        """Delete a run's directory and every file in it; an absent directory is not an error."""
        try:
            self._fs.delete_dir(f"{self._base}/{run_id}")
        except FileNotFoundError:
            pass


def read_checkpoint(manifest: Manifest, *, node: str = "", partition: str = "") -> pa.Table:
    """Read a checkpoint after checking its SHA-256.

    Raises:
        CheckpointCorruptError: The file is missing or its bytes changed.
    """
    data, actual = _read_bytes(manifest.uri)
    if data is None:
        raise CheckpointCorruptError(
            f"checkpoint {manifest.uri} of {node}[{partition}] is missing", uri=manifest.uri, node=node,
            partition=partition, reason="missing", actual_sha256=None,
        )
    if actual != manifest.sha256:
        raise CheckpointCorruptError(
            f"checkpoint {manifest.uri} of {node}[{partition}] has SHA-256 {actual}, expected {manifest.sha256}",
            uri=manifest.uri, node=node, partition=partition, reason="hash mismatch", actual_sha256=actual,
        )
    return ipc.open_file(pa.py_buffer(data)).read_all()


def check_checkpoint(manifest: Manifest) -> tuple[str | None, str | None]:
    """Return ``(reason, actual_sha256)``: reason is None when the file is intact."""
    data, actual = _read_bytes(manifest.uri)
    if data is None:
        return "missing", None
    if actual != manifest.sha256:
        return "hash mismatch", actual
    return None, actual


def _read_bytes(uri: str) -> tuple[bytes | None, str | None]:
    filesystem, path = resolve_filesystem(uri)
    try:
        with filesystem.open_input_stream(path) as stream:
            data = stream.read()
    except (FileNotFoundError, OSError):
        return None, None
    return data, hashlib.sha256(data).hexdigest()
