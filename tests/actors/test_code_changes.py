"""Resuming a run whose pipeline code changed since it started."""

from __future__ import annotations

import shutil

import pytest

import ledgerflow as lf
from ledgerflow.actors import ExecutorDiedError


@pytest.fixture
def interrupted_copy(etl_reference, home, helpers, tmp_path):
    """Start a copy of the etl pipeline, crash it after orders, and return (run_id, pipeline file)."""
    source = tmp_path / "etl_copy.py"
    shutil.copy(helpers.pipeline_locator("etl.py").rsplit(":", 1)[0], source)
    crash_seq = next(logged.seq for logged in etl_reference.events
                     if logged.type == "NodeCompleted" and logged.event.node == "orders")
    with pytest.raises(ExecutorDiedError):
        lf.start_run(f"{source}:pipeline", run_id="changed", params={"trace": str(tmp_path / "trace.txt")},
                     settings=home.settings, max_in_flight=1, fault_exit_after_seq=crash_seq, max_restarts=0)
    home.wait_lease_free("changed")
    text = source.read_text()
    edited = text.replace('pc.multiply(joined["quantity"], joined["unit_price"])',
                          'pc.multiply(pc.multiply(joined["quantity"], joined["unit_price"]), 10)')
    assert edited != text
    source.write_text(edited)
    return "changed", source


def test_code_change_refused_naming_node(home, interrupted_copy):
    run_id, _ = interrupted_copy
    seq = home.state(run_id).seq

    with pytest.raises(lf.CodeChangedError) as caught:
        lf.resume_run(run_id, settings=home.settings)

    assert caught.value.changed_nodes == ("priced",)
    assert "priced" in str(caught.value)
    assert "--allow-changed-code" in str(caught.value)
    assert home.state(run_id).seq == seq


def test_code_change_allowed_is_recorded(etl_reference, home, interrupted_copy):
    run_id, _ = interrupted_copy
    started = home.of_type(run_id, "RunStarted")[0]

    result = lf.resume_run(run_id, settings=home.settings, allow_changed_code=True, accepted_by="carol")

    assert result.status == "completed", result.message
    accepted = home.of_type(run_id, "CodeChangeAccepted")
    assert len(accepted) == 1
    assert accepted[0].changed_nodes == ("priced",)
    assert accepted[0].accepted_by == "carol"
    assert accepted[0].old_fingerprint == started.fingerprint
    assert accepted[0].new_fingerprint != started.fingerprint
    assert home.state(run_id).fingerprint == accepted[0].new_fingerprint
    expected = [(order_id, month, amount * 10) for order_id, month, amount in etl_reference.rows]
    assert home.rows("amounts", order_by="order_id") == expected


def test_code_change_accepted_once_then_unchanged(home, interrupted_copy, tmp_path):
    """After accepting a change, a later resume with the same code is not a change again."""
    run_id, _ = interrupted_copy
    with pytest.raises(ExecutorDiedError):
        lf.resume_run(run_id, settings=home.settings, allow_changed_code=True, max_in_flight=1,
                      fault_exit_after_seq=home.state(run_id).seq + 3, max_restarts=0)
    home.wait_lease_free(run_id)

    result = lf.resume_run(run_id, settings=home.settings)

    assert result.status == "completed", result.message
    assert len(home.of_type(run_id, "CodeChangeAccepted")) == 1
