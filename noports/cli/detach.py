"""Detach a tunnel into the background once it is listening (``sshnp -x``, ``npt -x``).

The tunnel runs in-process (no ``srv`` child, no keys in argv or the environment), so "print
and exit while the tunnel lives on" needs a second process. We fork *before* any event loop or
socket exists (forking a running loop shares its epoll and TLS state): the child does the whole
set-up, and once the tunnel listens it hands the parent what to print through a pipe, detaches
(``setsid``, stdio on /dev/null) and keeps serving. The parent prints that line and exits 0.
If the child fails before reporting, its error went to the shared stderr and the parent exits
with the child's exit code. No secret crosses the pipe: only the text to print.

Only the command lines (cli/npt.py, cli/sshnp.py) fork; the session loops see just the
:data:`~noports.session.background.Reporter` they are handed.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable

from ..session.background import Reporter

__all__ = ["Reporter", "run_detached"]


def run_detached(work: Callable[[Reporter], int]) -> int:
    """Run ``work(report)`` in a child; ``report(text)`` releases the parent to print ``text``."""
    from ..crypto import ephemeral

    ephemeral.settle()  # no thread inside OpenSSL at fork; the child takes the finished key
    sys.stdout.flush()
    sys.stderr.flush()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        os.setsid()
        state = {"w": w}

        def report(text: str) -> None:
            fd = state.pop("w", None)
            if fd is None:
                return
            os.write(fd, json.dumps({"stdout": text}).encode() + b"\n")
            os.close(fd)
            sys.stdout.flush()
            sys.stderr.flush()
            devnull = os.open(os.devnull, os.O_RDWR)
            for target in (0, 1, 2):
                os.dup2(devnull, target)
            os.close(devnull)

        code = 1
        try:
            code = work(report)
        finally:
            fd = state.pop("w", None)
            if fd is not None:
                os.close(fd)
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    os.close(w)
    chunks = []
    while True:
        b = os.read(r, 65536)
        if not b:
            break
        chunks.append(b)
    os.close(r)
    data = b"".join(chunks)
    if data:
        msg = json.loads(data.decode())
        print(msg["stdout"], flush=True)
        return 0
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") else 1
