"""A log edited behind ledgerflow's back: every command that reads the chain exits with status 5."""

from __future__ import annotations

import sqlite3

import pytest


@pytest.fixture
def tampered(finished_run, make_cli):
    """A copy of the finished run's log in which one bit of the approval's payload is flipped.

    The append-only triggers are dropped first, as someone editing the file
    with sqlite3 would. The edit turns reviewer "alice" into "alicd", so the
    payload still decodes and only the hash chain can tell.
    """
    cli = make_cli("tampered")
    source = sqlite3.connect(finished_run.cli.log_path)
    target = sqlite3.connect(cli.log_path)
    with source, target:
        source.backup(target)
    source.close()

    target.execute("DROP TRIGGER events_reject_update")
    target.execute("DROP TRIGGER events_reject_delete")
    seq, payload = target.execute(
        "SELECT seq, payload FROM events WHERE stream_id = ? AND type = 'ApprovalGranted'",
        (finished_run.run_id,),
    ).fetchone()
    edited = bytearray(payload)
    edited[payload.index(b"alice") + 4] ^= 0x01
    target.execute("UPDATE events SET payload = ? WHERE stream_id = ? AND seq = ?",
                   (bytes(edited), finished_run.run_id, seq))
    target.commit()
    target.close()
    return cli, finished_run.run_id, seq


def test_verify_reports_tampered(tampered):
    cli, run_id, seq = tampered

    result = cli("verify", "--json")

    assert result.returncode == 5, str(result)
    report = result.json()
    assert report["ok"] is False
    assert report["status"] == "tampered"
    [stream] = report["streams"]
    assert stream["run_id"] == run_id
    assert stream["status"] == "tampered"
    assert stream["first_bad_seq"] == seq
    assert stream["reason"] == "hash mismatch"


def test_verify_run_reports_tampered(tampered):
    cli, run_id, seq = tampered

    result = cli("verify", run_id, "--json")

    assert result.returncode == 5, str(result)
    assert result.json()["run_id"] == run_id
    assert result.json()["streams"][0]["first_bad_seq"] == seq


def test_verify_text_names_first_bad_seq(tampered):
    cli, run_id, seq = tampered

    result = cli("verify")

    assert result.returncode == 5, str(result)
    assert f"TAMPERED  {run_id}  first bad seq {seq} (hash mismatch)" in result.stdout
    assert "error:" in result.stderr


@pytest.mark.parametrize("command", [
    pytest.param(["show"], id="show"),
    pytest.param(["events"], id="events"),
    pytest.param(["replay"], id="replay"),
    pytest.param(["resume"], id="resume"),
    pytest.param(["approve", "--reviewer", "bob"], id="approve"),
    pytest.param(["cancel"], id="cancel"),
])
def test_commands_reading_chain_exit_5(tampered, command):
    cli, run_id, seq = tampered

    result = cli(command[0], run_id, *command[1:], "--json")

    assert result.returncode == 5, str(result)
    payload = result.json()
    assert payload["error_type"] == "TamperedLogError"
    assert payload["run_id"] == run_id
    assert payload["status"] == "tampered"
    assert payload["seq"] == seq
    assert "tampered" in result.stderr


def test_audit_exits_5(tampered):
    cli, run_id, seq = tampered

    result = cli("audit", run_id, "--json")

    assert result.returncode == 5, str(result)
    account = result.json()
    assert account["run_id"] == run_id
    assert account["verification"]["ok"] is False
    assert account["verification"]["first_bad_seq"] == seq


def test_export_exits_5(tampered, tmp_path):
    cli, run_id, seq = tampered
    bundle = tmp_path / "exported.jsonl"

    result = cli("export", run_id, str(bundle), "--json")

    assert result.returncode == 5, str(result)
    assert result.json()["seq"] == seq
    assert not bundle.exists()


def test_events_text_prints_no_event(tampered):
    cli, run_id, _ = tampered

    result = cli("events", run_id)

    assert result.returncode == 5, str(result)
    assert result.stdout == ""
