"""Shared fixtures: one Ray cluster for the whole test session, and a ledgerflow home per test."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest

# Retry backoffs are scaled down so that retry tests take milliseconds.
os.environ.setdefault("LEDGERFLOW_BACKOFF_SCALE", "0.01")


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    """Start one local Ray cluster for the session; CLI subprocesses join it through RAY_ADDRESS."""
    import ray

    previous = os.environ.pop("RAY_ADDRESS", None)
    # Without an address, ray.init (Ray 2.60) joins the cluster named in /tmp/ray/ray_current_cluster
    # when another `ray start` on this machine left one running. "local" always starts a new one.
    ray.init(address="local", include_dashboard=False, namespace="ledgerflow", logging_level=logging.ERROR,
             log_to_driver=False)
    address = ray.get_runtime_context().gcs_address
    os.environ["RAY_ADDRESS"] = address
    yield address
    ray.shutdown()
    if previous is None:
        os.environ.pop("RAY_ADDRESS", None)
    else:
        os.environ["RAY_ADDRESS"] = previous


@pytest.fixture
def settings(tmp_path, ray_address):  # type: ignore[no-untyped-def]
    """Settings for a fresh ledgerflow home in the test's tmp_path, on the session's Ray."""
    import ledgerflow as lf

    return lf.Settings.resolve(home=str(tmp_path / "home"), address=ray_address)
