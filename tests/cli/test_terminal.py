"""``run`` in a terminal: it prompts for the decision at the gate, unless --json is given.

The terminal is a pseudo-terminal from ``os.openpty``; the test types the
answers into its master side.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import time
from pathlib import Path

import pytest

ANSI_ESCAPE = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal:
    """A command whose stdin, stdout and stderr are one pseudo-terminal."""

    def __init__(self, command: list[str]) -> None:
        self.master, replica = os.openpty()
        environment = dict(os.environ, TERM="xterm", COLUMNS="120", LINES="40")
        self.process = subprocess.Popen(command, stdin=replica, stdout=replica, stderr=replica, env=environment,
                                        start_new_session=True)
        os.close(replica)
        self.output = b""

    @property
    def text(self) -> str:
        """Everything the command printed so far, without colour and cursor codes."""
        return ANSI_ESCAPE.sub(b"", self.output).decode("utf-8", errors="replace")

    def _read(self, timeout_s: float) -> str:
        """Read what is there within ``timeout_s``; return "data", "timeout" or "closed"."""
        ready, _, _ = select.select([self.master], [], [], timeout_s)
        if not ready:
            return "timeout"
        try:
            chunk = os.read(self.master, 65536)
        except OSError:
            # Linux reports EIO on the master once the command closed the terminal.
            return "closed"
        self.output += chunk
        return "data" if chunk else "closed"

    def expect(self, prompt: str, timeout_s: float = 60.0) -> None:
        """Read until ``prompt`` has been printed; fail the test after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while prompt not in self.text:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no {prompt!r} within {timeout_s} s; output ends with:\n{self.text[-2000:]}")
            if self._read(min(remaining, 1.0)) == "closed":
                pytest.fail(f"the command closed the terminal before printing {prompt!r}:\n{self.text[-2000:]}")

    def type_line(self, text: str) -> None:
        os.write(self.master, text.encode() + b"\r")

    def wait(self, timeout_s: float = 120.0) -> int:
        """Read until the command exits and return its exit status."""
        deadline = time.monotonic() + timeout_s
        while True:
            outcome = self._read(0.2)
            if outcome == "closed" or (outcome == "timeout" and self.process.poll() is not None):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"the command did not exit within {timeout_s} s:\n{self.text[-2000:]}")
        return self.process.wait(timeout=max(1.0, deadline - time.monotonic()))

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        os.close(self.master)


@pytest.fixture
def terminal():
    opened: list[Terminal] = []

    def open_terminal(command: list[str]) -> Terminal:
        opened.append(Terminal(command))
        return opened[-1]

    yield open_terminal
    for item in opened:
        item.close()


@pytest.mark.slow
def test_run_asks_for_decision(cli, helpers, terminal):
    session = terminal(cli.command("run", helpers.pipeline_path("gated.py"), "--run-id", "asked"))

    session.expect("decision [approve/reject/later] (approve):")
    assert "checked (validate): 35 rows" in session.text
    assert "multiple of 8: 5" in session.text
    session.type_line("approve")
    session.expect("reviewer (")
    session.type_line("carol")
    session.expect("comment")
    session.type_line("looks right")

    assert session.wait() == 0, session.text
    assert "gate 'review' of run asked approved by carol" in session.text
    assert "run asked completed" in session.text
    summary = cli("show", "asked", "--json").json()
    assert summary["status"] == "completed"
    assert summary["gates"]["review"]["reviewer"] == "carol"
    assert summary["gates"]["review"]["comment"] == "looks right"
    assert len(cli.rows("numbers")) == 35


def test_json_in_terminal_never_prompts(cli, helpers, terminal):
    session = terminal(cli.command("run", helpers.pipeline_path("gated.py"), "--run-id", "quiet", "--json"))

    assert session.wait() == 3, session.text
    assert "decision" not in session.text
    assert '"status": "waiting_for_approval"' in session.text


@pytest.mark.slow
def test_gate_shows_policy_findings(cli, terminal, tmp_path):
    pipeline = f"{Path(__file__).resolve().parents[1] / 'actors' / 'pipelines' / 'policed.py'}:gated"
    session = terminal(cli.command("run", pipeline, "--param", f"trace={tmp_path / 'trace.txt'}",
                                   "--run-id", "policed", "--log-level", "info"))

    session.expect("decision [approve/reject/later] (approve):")
    assert "policy findings (4):" in session.text
    assert "hash-email (mask) at cleaned[north]: hashed column email of output with SHA-256 (3 rows)" in session.text
    session.type_line("approve")
    session.expect("reviewer (")
    session.type_line("carol")
    session.expect("comment")
    session.type_line("")

    assert session.wait() == 0, session.text
    # In a terminal, ledgerflow's log lines are readable lines, not JSON objects.
    decision_lines = [line for line in session.text.splitlines() if "decision recorded" in line]
    assert decision_lines
    assert not any(line.lstrip().startswith("{") for line in decision_lines)
    assert "reviewer=carol" in decision_lines[0]
