"""One executor per run: a second executor for a held run fails naming the holder."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import pytest
import ray

import ledgerflow as lf
from ledgerflow.actors import ExecutorConfig, RunActor
from ledgerflow.actors._runner import NAMESPACE


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def settings(request, tmp_path, ray_address):  # type: ignore[no-untyped-def]
    """Settings for a fresh home on each store backend: a file lock beside SQLite, an advisory lock in PostgreSQL."""
    store = request.getfixturevalue("postgres_store_url")() if request.param == "postgres" else None
    return lf.Settings.resolve(home=str(tmp_path / "home"), store=store, address=ray_address)


@pytest.fixture
def held_run(home, helpers, tmp_path):
    """Start the blocking pipeline in a thread and yield while its executor holds the lease.

    Yields ``(run_id, release_file, outcome, thread)``: touching the release
    file lets the run finish, and ``outcome`` receives its result or error.
    """
    started = tmp_path / "started"
    release = tmp_path / "release"
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = lf.start_run(
                helpers.pipeline_locator("blocking.py"), run_id="held", settings=home.settings,
                params={"started_file": str(started), "release_file": str(release)},
            )
        except BaseException as err:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    helpers.wait_until(lambda: started.exists() or not thread.is_alive(), description="the blocking extract to start")
    assert "error" not in outcome, outcome.get("error")
    try:
        yield "held", release, outcome, thread
    finally:
        release.touch()
        thread.join(timeout=60)


def test_lease_second_resume_names_holder(home, held_run):
    run_id, release, outcome, thread = held_run
    attached = home.of_type(run_id, "ExecutorAttached")

    with pytest.raises(lf.LeaseHeldError) as caught:
        lf.resume_run(run_id, settings=home.settings)
    assert caught.value.holder == f"host {attached[0].host}, pid {attached[0].pid}"
    assert f"pid {attached[0].pid}" in str(caught.value)

    release.touch()
    thread.join(timeout=60)
    assert outcome["result"].status == "completed"
    assert len(home.of_type(run_id, "ExecutorAttached")) == 1


def test_lease_resume_from_other_process_refused(home, held_run):
    run_id, release, outcome, thread = held_run
    attached = home.of_type(run_id, "ExecutorAttached")[0]
    script = textwrap.dedent(f"""
        import sys
        import ledgerflow as lf
        try:
            lf.resume_run({run_id!r}, settings=lf.Settings.resolve(home={home.settings.home!r},
                                                                  store={home.settings.store_url!r}))
        except lf.LeaseHeldError as err:
            print(err.holder)
            sys.exit(7)
    """)

    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                               env={**os.environ})

    assert completed.returncode == 7, completed.stderr
    assert completed.stdout.strip() == f"host {attached.host}, pid {attached.pid}"


def test_lease_second_executor_exits_naming_holder(home, held_run):
    """A second executor that got past the driver's check still fails on the lease itself."""
    run_id, release, outcome, thread = held_run
    attached = home.of_type(run_id, "ExecutorAttached")[0]
    settings = home.settings
    config = ExecutorConfig(run_id=run_id, store_url=settings.store_url, checkpoint_root=settings.checkpoints,
                            warehouse=settings.warehouse)
    second = RunActor.options(namespace=NAMESPACE, max_restarts=0).remote(config)

    try:
        with pytest.raises(ray.exceptions.RayTaskError) as caught:
            ray.get(second.run.remote(), timeout=60)
    finally:
        ray.kill(second, no_restart=True)
    cause = caught.value.cause
    assert isinstance(cause, lf.LeaseHeldError)
    assert cause.holder == f"host {attached.host}, pid {attached.pid}"

    release.touch()
    thread.join(timeout=60)
    assert outcome["result"].status == "completed"
    assert home.types(run_id).count("ExecutorAttached") == 1
    assert home.types(run_id).count("RunResumed") == 0
