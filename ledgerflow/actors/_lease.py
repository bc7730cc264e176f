"""The run lease: one executor per run, a file lock beside the SQLite log.

The OS releases an flock when its process dies, so a crashed executor never
leaves a stale lease behind.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time

from ledgerflow.actors._errors import LeaseHeldError


def lease_path(store_path: str, run_id: str) -> str:
    """Return the lease file of ``run_id`` for the log at ``store_path``."""
    return os.path.join(f"{store_path}.leases", f"{run_id}.lock")


class Lease:
    """An exclusive, non-blocking lock on one run, released on :meth:`release` or process exit."""

    def __init__(self, store_path: str, run_id: str) -> None:
        self.path = lease_path(store_path, run_id)
        self.run_id = run_id
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, *, holder: dict[str, object] | None = None, wait_s: float = 0.0) -> None:
        """Take the lease or raise LeaseHeldError naming the current holder.

        Args:
            holder: What to write into the lease file (None: write nothing, for probes).
            wait_s: Keep trying this long; covers a probe that holds the lock for a moment.
        """
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise LeaseHeldError(self.run_id, describe_holder(self.path)) from None
                time.sleep(0.05)
        if holder is not None:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Release the lease if held."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Lease:
        self.acquire(holder={"host": socket.gethostname(), "pid": os.getpid()})
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def describe_holder(path: str) -> str:
    """Return 'host HOST, pid PID' from a lease file, as far as it can be read."""
    try:
        with open(path, encoding="utf-8") as handle:
            info = json.load(handle)
        return f"host {info.get('host')}, pid {info.get('pid')}"
    except (OSError, ValueError):
        return "unknown holder"


def lease_is_free(store_path: str, run_id: str) -> bool:
    """Return True when no executor holds the run (checked by taking the lock briefly)."""
    lease = Lease(store_path, run_id)
    try:
        lease.acquire()
    except LeaseHeldError:
        return False
    lease.release()
    return True
