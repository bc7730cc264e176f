"""Start an MCP server so that the kernel kills it when the process that started it dies.

Usage: ``python _mcp_launcher.py PARENT_PID -- COMMAND [ARG]...``

The launcher sets Linux's ``PR_SET_PDEATHSIG`` to SIGKILL and then replaces
itself with the server through ``execvp``, which keeps that setting. Without
it, a server started by a Ray worker that is killed would run on as an
orphan. The script uses the standard library only and runs as a file, so it
starts without importing ledgerflow or Ray.

NOTE: the signal reaches the server process only, not processes the server
starts itself. On systems other than Linux the server starts without it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        print("usage: _mcp_launcher.py PARENT_PID -- COMMAND [ARG]...", file=sys.stderr)
        return 2
    parent = int(argv[1])
    command = argv[3:]
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            error = ctypes.get_errno()
            print(f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(error)}", file=sys.stderr)
            return 1
        # The parent may have died before prctl took effect; then no signal comes.
        if os.getppid() != parent:
            return 1
    try:
        os.execvp(command[0], command)
    except OSError as err:
        print(f"failed to start MCP server {command[0]!r}: {err.strerror}", file=sys.stderr)
        return 127
    return 0  # not reached: execvp replaces this process


if __name__ == "__main__":
    sys.exit(main(sys.argv))
