"""Helpers for command-line tests: the ``ledgerflow`` command in subprocesses, on the session's Ray.

Every command runs as a real subprocess with ``--home`` set to a directory of
the test's own. The session fixture ``ray_address`` sets ``RAY_ADDRESS`` in
this process's environment, and its ``ray.init`` sets ``RAY_AUTH_MODE=token``
there too (Ray 2.60 turns token authentication on for new local clusters).
The subprocesses inherit both, so each command joins the session's cluster
instead of starting a private one.

Test modules cannot import one another (or this file) under
``--import-mode=importlib``, so tests reach the helpers through fixtures.
"""

from __future__ import annotations

import json
import os
import pathlib
import select
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest

LEDGERFLOW = str(pathlib.Path(sys.executable).with_name("ledgerflow"))
PIPELINES = pathlib.Path(__file__).parent / "pipelines"
FLIGHTS_PIPELINE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "nycflights" / "pipeline.py"

#: Seconds a single command may take before the test fails. Runs of the test
#: pipelines take seconds, so only a hung command reaches this limit.
COMMAND_TIMEOUT_S = 180.0


def wait_until(condition: Callable[[], Any], *, timeout_s: float = 60.0, description: str = "condition") -> Any:
    """Poll ``condition`` every 20 ms until it returns a true value, and return that value.

    Fails the test after ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {description}")
        time.sleep(0.02)


def pipeline_path(file_name: str, attribute: str | None = None) -> str:
    """Return the locator of a pipeline in ``tests/cli/pipelines``."""
    path = str(PIPELINES / file_name)
    return f"{path}:{attribute}" if attribute else path


@dataclass
class Result:
    """A finished command: its arguments, exit status and output."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return (f"ledgerflow {' '.join(self.args)} exited {self.returncode}\n"
                f"stdout:\n{self.stdout[-3000:]}\nstderr:\n{self.stderr[-3000:]}")

    def json(self) -> dict[str, Any]:
        """Return the one JSON object that ``--json`` prints; fail if stdout contains anything else."""
        lines = [line for line in self.stdout.splitlines() if line.strip()]
        assert len(lines) == 1, f"expected one JSON line on stdout, got {len(lines)}:\n{self}"
        value = json.loads(lines[0])
        assert isinstance(value, dict), f"expected a JSON object:\n{self}"
        return value

    def json_lines(self) -> list[dict[str, Any]]:
        """Return the JSON objects of ``events --json``, one a line."""
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


class Background:
    """A command running in its own session, with stdout and stderr written to files."""

    def __init__(self, args: list[str], process: subprocess.Popen[bytes], stdout: pathlib.Path,
                 stderr: pathlib.Path) -> None:
        self.args = args
        self.process = process
        self.stdout_path = stdout
        self.stderr_path = stderr

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait(self, timeout_s: float = COMMAND_TIMEOUT_S) -> Result:
        """Wait for the command to exit and return its result."""
        returncode = self.process.wait(timeout=timeout_s)
        return Result(self.args, returncode, self.stdout_path.read_text(encoding="utf-8", errors="replace"),
                      self.stderr_path.read_text(encoding="utf-8", errors="replace"))

    def send_signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self) -> None:
        """Kill the command if it still runs (test cleanup)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


class LineReader:
    """Read lines from a pipe with a deadline, so that a silent process fails the test instead of hanging it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""
        self.closed = False

    def readline(self, timeout_s: float) -> str | None:
        """Return the next line without its newline, or None once the pipe is closed."""
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self.buffer:
            if self.closed:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no output line within {timeout_s} s; partial output: {self.buffer[-500:]!r}")
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if ready:
                chunk = os.read(self.fd, 65536)
                if chunk:
                    self.buffer += chunk
                else:
                    self.closed = True
                    if self.buffer:
                        self.buffer += b"\n"
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode("utf-8", errors="replace")


class Cli:
    """The ``ledgerflow`` command bound to one home directory."""

    def __init__(self, home: pathlib.Path) -> None:
        self.home = home
        self.home.mkdir(parents=True, exist_ok=True)
        self._background: list[Background] = []

    @property
    def log_path(self) -> pathlib.Path:
        return self.home / "ledgerflow.db"

    @property
    def warehouse_path(self) -> pathlib.Path:
        return self.home / "warehouse.db"

    def command(self, *args: str) -> list[str]:
        return [LEDGERFLOW, *args, "--home", str(self.home)]

    def __call__(self, *args: str, timeout_s: float = COMMAND_TIMEOUT_S) -> Result:
        """Run a command to its end with no terminal (stdin is /dev/null)."""
        completed = subprocess.run(self.command(*args), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                   timeout=timeout_s)
        return Result(list(args), completed.returncode, completed.stdout, completed.stderr)

    def start(self, *args: str) -> Background:
        """Start a command in its own session, so that a signal sent to its pid reaches only it."""
        index = len(self._background)
        stdout = self.home.parent / f"background-{index}.stdout"
        stderr = self.home.parent / f"background-{index}.stderr"
        with open(stdout, "wb") as out, open(stderr, "wb") as err:
            process = subprocess.Popen(self.command(*args), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                       start_new_session=True)
        background = Background(list(args), process, stdout, stderr)
        self._background.append(background)
        return background

    def stop_all(self) -> None:
        for background in self._background:
            background.stop()

    def events(self, run_id: str) -> list[dict[str, Any]]:
        """Return the run's events as ``events RUN --json`` prints them."""
        result = self("events", run_id, "--json")
        assert result.returncode == 0, str(result)
        return result.json_lines()

    def logged(self, run_id: str) -> list[tuple[int, str, dict[str, Any]]]:
        """Read (seq, type, payload) of the run's events straight from the SQLite log, without the CLI.

        Cheap enough to poll every few milliseconds; the chain is not verified.
        An absent log or run gives an empty list.
        """
        if not self.log_path.exists():
            return []
        try:
            with sqlite3.connect(f"file:{self.log_path}?mode=ro", uri=True, timeout=10) as conn:
                rows = conn.execute("SELECT seq, type, payload FROM events WHERE stream_id = ? ORDER BY seq",
                                    (run_id,)).fetchall()
        except sqlite3.OperationalError:
            # The log is being created: its tables do not exist yet.
            return []
        return [(seq, kind, msgpack.unpackb(payload, raw=False, strict_map_key=False))
                for seq, kind, payload in rows]

    def rows(self, table: str, order_by: str = "1") -> list[tuple[Any, ...]]:
        """Return every row of a warehouse table, ordered; an absent warehouse or table has no rows."""
        if not self.warehouse_path.exists():
            return []
        with sqlite3.connect(self.warehouse_path) as conn:
            exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                  (table,)).fetchone()
            if exists is None:
                return []
            return conn.execute(f'SELECT * FROM "{table}" ORDER BY {order_by}').fetchall()


@dataclass(frozen=True)
class BlockingFiles:
    """The files that signal the start of the blocking node of ``pipelines/blocking.py`` and release it."""

    started: pathlib.Path
    release: pathlib.Path

    def params(self) -> list[str]:
        return ["--param", f"started_file={self.started}", "--param", f"release_file={self.release}"]

    def wait_started(self, running: Background, timeout_s: float = 120.0) -> None:
        """Wait until the node runs; fail with the command's output if ``running`` exits first or times out."""
        deadline = time.monotonic() + timeout_s
        while not self.started.exists():
            if running.process.poll() is not None:
                pytest.fail(f"the run exited before its blocking node started:\n{running.wait()}")
            if time.monotonic() > deadline:
                output = running.stderr_path.read_text(encoding="utf-8", errors="replace")
                pytest.fail(f"the blocking node did not start within {timeout_s} s; stderr so far:\n{output}")
            time.sleep(0.02)

    def release_node(self) -> None:
        self.release.touch()


class Helpers:
    """The module-level helpers of this file, for test modules (which cannot import it)."""

    wait_until = staticmethod(wait_until)
    pipeline_path = staticmethod(pipeline_path)
    LineReader = LineReader
    LEDGERFLOW = LEDGERFLOW
    FLIGHTS_PIPELINE = FLIGHTS_PIPELINE


@pytest.fixture(scope="session")
def helpers() -> type[Helpers]:
    return Helpers


@pytest.fixture
def cli(tmp_path: pathlib.Path, ray_address: str) -> Iterator[Cli]:
    """The ``ledgerflow`` command on a fresh home; background commands still running at the end are killed."""
    command = Cli(tmp_path / "home")
    yield command
    command.stop_all()


@pytest.fixture
def make_cli(tmp_path: pathlib.Path, ray_address: str) -> Iterator[Callable[[str], Cli]]:
    """Return a factory of the ``ledgerflow`` command on further fresh homes inside the test's tmp_path."""
    commands: list[Cli] = []

    def make(name: str) -> Cli:
        command = Cli(tmp_path / name / "home")
        commands.append(command)
        return command

    yield make
    for command in commands:
        command.stop_all()


@pytest.fixture
def blocking(tmp_path: pathlib.Path) -> Iterator[BlockingFiles]:
    """Files for the blocking pipeline; the node is released at the end so that no task keeps waiting."""
    files = BlockingFiles(started=tmp_path / "node-started", release=tmp_path / "node-release")
    yield files
    files.release_node()


@dataclass(frozen=True)
class FinishedRun:
    """A completed run of ``pipelines/gated.py``, approved by alice, shared by tests that only read it."""

    cli: Cli
    run_id: str
    event_count: int


@pytest.fixture(scope="session")
def shared_cli(tmp_path_factory: pytest.TempPathFactory, ray_address: str) -> Callable[[str], Cli]:
    """Return a factory of the ``ledgerflow`` command on homes that module and session fixtures share."""

    def make(name: str) -> Cli:
        return Cli(tmp_path_factory.mktemp(name) / "home")

    return make


@pytest.fixture(scope="session")
def finished_run(shared_cli: Callable[[str], Cli]) -> FinishedRun:
    command = shared_cli("finished")
    run_id = "numbers-finished"
    started = command("run", pipeline_path("gated.py"), "--run-id", run_id, "--json")
    assert started.returncode == 3, str(started)
    approved = command("approve", run_id, "--reviewer", "alice", "--comment", "counts match", "--json")
    assert approved.returncode == 0, str(approved)
    return FinishedRun(command, run_id, len(command.logged(run_id)))
