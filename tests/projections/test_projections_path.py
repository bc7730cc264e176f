"""Where read models live: beside a SQLite log, or under the home for a PostgreSQL log."""

from __future__ import annotations

import os

from ledgerflow.projections import projections_path


def test_projections_beside_sqlite_log(tmp_path):
    log = str(tmp_path / "ledgerflow.db")

    assert projections_path(log) == str(tmp_path / "ledgerflow.projections.db")
    assert projections_path(f"sqlite:///{log}") == str(tmp_path / "ledgerflow.projections.db")


def test_projections_of_postgres_log_under_home(tmp_path):
    home = str(tmp_path / "home")

    path = projections_path("postgresql://alice:s3cret@db:5432/test?schema=audit", home)

    assert os.path.dirname(path) == os.path.join(home, "projections")
    assert path.endswith(".projections.db")
    assert "s3cret" not in path


def test_projections_of_postgres_log_keyed_by_url(tmp_path):
    home = str(tmp_path / "home")

    with_password = projections_path("postgresql://alice:s3cret@db:5432/test?schema=audit", home)
    without = projections_path("postgresql://alice@db:5432/test?schema=audit", home)
    other_schema = projections_path("postgresql://alice@db:5432/test?schema=other", home)

    assert with_password == without
    assert other_schema != without


def test_projections_home_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LEDGERFLOW_HOME", str(tmp_path / "env-home"))

    path = projections_path("postgresql://db/test")

    assert path.startswith(str(tmp_path / "env-home" / "projections"))
