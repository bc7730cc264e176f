"""Secret parameters: recorded as references, readable by nodes, never written anywhere."""

from __future__ import annotations

import hashlib
import os
import pathlib

import pytest
import ray

import ledgerflow as lf


def _session_logs() -> pathlib.Path:
    node = getattr(ray._private.worker, "_global_node", None)
    if node is not None:
        return pathlib.Path(node.get_session_dir_path()) / "logs"
    return pathlib.Path("/tmp/ray/session_latest/logs")


def _files_containing(root: pathlib.Path, needle: bytes) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        try:
            if needle in path.read_bytes():
                found.append(str(path))
        except OSError:
            continue
    return found


@pytest.fixture
def secret_run(home, helpers, tmp_path):
    """Run the secrets pipeline with one environment secret and one file secret."""
    password = "file-secret-" + os.urandom(12).hex()
    password_file = tmp_path / "password.txt"
    password_file.write_text(password + "\n")
    result = lf.start_run(helpers.pipeline_locator("secrets.py"), run_id="secretive", settings=home.settings,
                          params={"token": f"env:{helpers.secret_env}", "password": f"file:{password_file}"})
    assert result.status == "completed", result.message
    return {"token": os.environ[helpers.secret_env], "password": password, "password_file": str(password_file)}


def test_secret_node_reads_values(home, secret_run):
    rows = {row[0]: row[1:] for row in home.rows("digests")}

    for name in ("token", "password"):
        value = secret_run[name]
        assert rows[name] == (hashlib.sha256(value.encode()).hexdigest(), len(value)), name


def test_secret_recorded_as_reference(home, helpers, secret_run):
    started = home.of_type("secretive", "RunStarted")[0]

    assert started.params["token"] == {"env": helpers.secret_env, "file": None}
    assert started.params["password"] == {"env": None, "file": secret_run["password_file"]}


def test_secret_absent_from_home_files(home, secret_run):
    home_dir = pathlib.Path(home.settings.home)

    assert (home_dir / "ledgerflow.db").exists()
    for name in ("token", "password"):
        assert _files_containing(home_dir, secret_run[name].encode()) == [], name


def test_secret_absent_from_ray_session_logs(secret_run):
    logs = _session_logs()

    # The node's own log line reaches the session logs, so the scan can see what nodes log.
    assert _files_containing(logs, b"secret parameters read")
    for name in ("token", "password"):
        assert _files_containing(logs, secret_run[name].encode()) == [], name
