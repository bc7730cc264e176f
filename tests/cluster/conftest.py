"""A private multi-node Ray cluster on this machine (``ray.cluster_utils``), and commands that join it.

The cluster has a head node and two worker nodes with one CPU each, all on
this machine. It is separate from the session's shared cluster because these
tests kill nodes. The test process never connects to it as a driver: each
``ledgerflow`` command joins it through ``RAY_ADDRESS``.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

LEDGERFLOW = str(pathlib.Path(sys.executable).with_name("ledgerflow"))
PIPELINES = pathlib.Path(__file__).parent / "pipelines"
COMMAND_TIMEOUT_S = 240.0


@dataclass
class LocalCluster:
    """The cluster under test and its worker nodes."""

    cluster: Any
    workers: list[Any] = field(default_factory=list)

    @property
    def address(self) -> str:
        return self.cluster.address

    def add_worker(self, **resources: float) -> Any:
        """Start a worker node with one CPU and the given custom resources."""
        node = self.cluster.add_node(num_cpus=1, resources=resources)
        self.workers.append(node)
        return node

    def kill(self, node: Any) -> None:
        """Kill a node's processes at once, as a lost machine would stop."""
        self.cluster.remove_node(node, allow_graceful=False)
        self.workers = [worker for worker in self.workers if worker is not node]

    def node_by_id(self, node_id: str) -> Any | None:
        for node in [self.cluster.head_node, *self.workers]:
            if node.node_id == node_id:
                return node
        return None


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[LocalCluster]:
    """A head and two workers for the module; tests that kill a worker add a fresh one first."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 1, "include_dashboard": False})
    local = LocalCluster(cluster)
    for _ in range(2):
        local.add_worker()
    cluster.wait_for_nodes()
    yield local
    cluster.shutdown()


@dataclass
class Command:
    """The ``ledgerflow`` command on one home, joined to the local cluster."""

    home: pathlib.Path
    address: str
    extra_env: dict[str, str] = field(default_factory=dict)
    store: str | None = None
    #: The --checkpoints value; None leaves the option out (checkpoints in the home directory).
    checkpoints: str | None = None

    def __post_init__(self) -> None:
        if self.checkpoints is None:
            self.checkpoints = str(self.home / "shared-checkpoints")

    def argv(self, *args: str) -> list[str]:
        store = ["--store", self.store] if self.store else []
        checkpoints = ["--checkpoints", self.checkpoints] if self.checkpoints else []
        return [LEDGERFLOW, *args, "--home", str(self.home), *checkpoints, *store]

    def env(self) -> dict[str, str]:
        return {**os.environ, "RAY_ADDRESS": self.address, **self.extra_env}

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args), env=self.env(), stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=COMMAND_TIMEOUT_S)

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv(*args), env=self.env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.fixture
def command(tmp_path: pathlib.Path, local_cluster: LocalCluster) -> Command:
    home = tmp_path / "home"
    home.mkdir()
    return Command(home, local_cluster.address)


def wait_until(condition: Callable[[], Any], *, timeout_s: float = 120.0, description: str = "condition") -> Any:
    """Poll ``condition`` every 50 ms until it returns a true value; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {description}")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def poll() -> Callable[..., Any]:
    return wait_until


@pytest.fixture(scope="session")
def spread_pipeline() -> str:
    return str(PIPELINES / "spread.py")


@pytest.fixture(scope="session")
def many_driver() -> str:
    return str(PIPELINES / "many.py")
