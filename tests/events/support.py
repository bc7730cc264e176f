"""Event types, helpers and subprocess entry points shared by the event log tests.

Run as a script, it appends to, races on or reads a log in its own process:

    python support.py append LOG STREAM --count 500 --batch 50
    python support.py race LOG STREAM --expected 3      # appends after a line on stdin
    python support.py read LOG --stop-file PATH         # checks the log until PATH exists

Each command prints one JSON object per line on stdout. The tests get this
module from the ``support`` fixture (conftest.py loads it by path), so the
test process and its subprocesses register the same event types.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import sqlite3
import subprocess
import sys
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any


def _load_events_without_runtime() -> None:
    # ``import ledgerflow`` starts with the Ray runtime (about a second), and
    # a worker needs only the event layer, which never imports Ray.
    if "ledgerflow" in sys.modules:
        return
    spec = importlib.util.find_spec("ledgerflow")
    assert spec is not None and spec.submodule_search_locations is not None
    package = types.ModuleType("ledgerflow")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["ledgerflow"] = package


if __name__ == "__main__":
    _load_events_without_runtime()

from ledgerflow.events import ConcurrencyError, Event, NewEvent, open_store  # noqa: E402


class WorkerNoted(Event):
    """A test event: which writer wrote it, its index in that writer's sequence and optional padding."""

    writer: str
    index: int
    blob: bytes = b""


SCRIPT_PATH = Path(__file__)

#: Lines that a subprocess runs first, so that it imports the event layer without the Ray runtime.
EVENTS_ONLY_PRELUDE = """\
import importlib.util, sys, types
_spec = importlib.util.find_spec("ledgerflow")
_package = types.ModuleType("ledgerflow")
_package.__path__ = list(_spec.submodule_search_locations)
sys.modules["ledgerflow"] = _package
"""


# Helpers for the tests


def run_python(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter that imports only the event layer, and fail on a non-zero exit."""
    completed = subprocess.run(
        [sys.executable, "-c", EVENTS_ONLY_PRELUDE + code, *args],
        capture_output=True, text=True, timeout=timeout,
    )
    assert completed.returncode == 0, f"subprocess failed with status {completed.returncode}:\n{completed.stderr}"
    return completed


def query(path: str, sql: str, parameters: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one SQL statement on the SQLite file at ``path`` with the standard library and return its rows."""
    connection = sqlite3.connect(path)
    try:
        rows = connection.execute(sql, parameters).fetchall()
        connection.commit()
        return rows
    finally:
        connection.close()


def command(*args: str) -> list[str]:
    """Return the argv that runs this file as a script with ``args``."""
    return [sys.executable, str(SCRIPT_PATH), *args]


def json_lines(text: str) -> list[dict[str, Any]]:
    """Parse one JSON object per non-empty line."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def collect(iterator: AsyncIterator[Any], count: int, *, timeout: float) -> list[Any]:
    """Take ``count`` items from an async iterator, or raise AssertionError after ``timeout`` seconds."""
    items: list[Any] = []

    async def take() -> None:
        async for item in iterator:
            items.append(item)
            if len(items) == count:
                return

    try:
        await asyncio.wait_for(take(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"timed out after {timeout} s with {len(items)} of {count} items") from None
    return items


# Subprocess entry points


def _key(text: str | None) -> bytes | None:
    return bytes.fromhex(text) if text else None


def _emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def append(log: str, stream: str, *, count: int, batch: int, blob_size: int, key: bytes | None) -> None:
    """Append ``count`` events in batches after the stream's current head, reporting each batch."""
    store = await open_store(log, key=key)
    try:
        head = await store.head(stream)
        version = head.head_seq if head else 0
        _emit(start=version)
        blob = os.urandom(blob_size)
        for number, start in enumerate(range(0, count, batch)):
            events = [
                WorkerNoted(writer=stream, index=version + offset + 1, blob=blob)
                for offset in range(min(batch, count - start))
            ]
            _emit(appending=number, first_index=version + 1)
            result = await store.append(stream, events, expected_version=version)
            version = result.last_seq
            _emit(committed=number, last_seq=version)
    finally:
        await store.close()


async def race(log: str, stream: str, *, expected: int, key: bytes | None) -> None:
    """Append one batch with ``expected`` as the version once stdin delivers a line."""
    store = await open_store(log, key=key)
    try:
        _emit(ready=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        events = [NewEvent(WorkerNoted(writer=f"racer-{os.getpid()}", index=index)) for index in range(3)]
        try:
            result = await store.append(stream, events, expected_version=expected)
        except ConcurrencyError as err:
            _emit(result="conflict", expected=err.expected_version, actual=err.actual_version)
        else:
            _emit(result="won", first_seq=result.first_seq, last_seq=result.last_seq)
    finally:
        await store.close()


async def read(log: str, *, stop_file: str, key: bytes | None) -> None:
    """Verify the log and read it whole, over and over, until ``stop_file`` exists.

    Exits with status 1 at the first failed check, printing what failed.
    """
    store = await open_store(log, key=key, create=False)
    passes = 0
    try:
        while True:
            stopping = os.path.exists(stop_file)
            report = await store.verify()
            bad = [stream for stream in report.streams if not stream.ok]
            if bad:
                _emit(failure="verify", streams=[(item.stream_id, item.first_bad_seq, item.reason) for item in bad])
                sys.exit(1)
            previous = 0
            seen: dict[str, int] = {}
            async for event in store.read_all():
                if event.global_position <= previous:
                    _emit(failure="order", position=event.global_position, previous=previous)
                    sys.exit(1)
                if event.seq != seen.get(event.stream_id, 0) + 1:
                    _emit(failure="gap", stream=event.stream_id, seq=event.seq)
                    sys.exit(1)
                previous = event.global_position
                seen[event.stream_id] = event.seq
            passes += 1
            if stopping:
                break
    finally:
        await store.close()
    _emit(passes=passes, events=sum(seen.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    appending = commands.add_parser("append", help="append events in batches")
    appending.add_argument("log")
    appending.add_argument("stream")
    appending.add_argument("--count", type=int, required=True, help="events to append")
    appending.add_argument("--batch", type=int, required=True, help="events per append")
    appending.add_argument("--blob-size", type=int, default=0, help="bytes of padding in each payload")
    racing = commands.add_parser("race", help="append one batch when stdin delivers a line")
    racing.add_argument("log")
    racing.add_argument("stream")
    racing.add_argument("--expected", type=int, required=True, help="expected_version of the append")
    reading = commands.add_parser("read", help="verify and read the log until the stop file exists")
    reading.add_argument("log")
    reading.add_argument("--stop-file", required=True)
    for command in (appending, racing, reading):
        command.add_argument("--key", help="log key as hex")
    options = parser.parse_args()

    key = _key(options.key)
    if options.command == "append":
        asyncio.run(append(options.log, options.stream, count=options.count, batch=options.batch,
                           blob_size=options.blob_size, key=key))
    elif options.command == "race":
        asyncio.run(race(options.log, options.stream, expected=options.expected, key=key))
    else:
        asyncio.run(read(options.log, stop_file=options.stop_file, key=key))


if __name__ == "__main__":
    main()
