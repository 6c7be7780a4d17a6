"""The session's ephemeral RSA-2048 key, started at program start (DESIGN section 4, set-up).

Generating the key takes 50-250 ms of CPU, and OpenSSL runs it without the GIL. ``npt`` and
``sshnp`` call :func:`prestart` first thing in ``main``, before importing the rest of the
program (asyncio, the atProtocol client, the tunnel: about 100 ms of imports), so the key is
made on the second core while the interpreter imports, parses flags and connects.

:func:`take` hands the key over once (a key serves one session only); later sessions
(``npt -K``) make their own. :func:`settle` waits for a running generation: call it before
``fork`` (``-x``), so no thread is inside OpenSSL when the process forks; the child then
takes the finished key and the parent never uses it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future

from . import rsa

# arguments that mean no session key will be needed (no encryption, or no session at all)
_NOT_NEEDED = frozenset(
    {
        "--no-et",
        "--no-encrypt-rvd-traffic",
        "--help",
        "--version",
        "ssh-config",
        "--list-devices",
        "--ls",
    }
)

_early: Future[rsa.PrivateKey] | None = None
_thread: threading.Thread | None = None


def prestart(argv: Sequence[str] = ()) -> None:
    """Start generating the key in a thread (skipped when ``argv`` says it is not
    needed; a wrong guess only costs or saves CPU, never changes behaviour)."""
    global _early, _thread
    if _NOT_NEEDED.intersection(argv):
        return
    fut: Future[rsa.PrivateKey] = Future()

    def work() -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            fut.set_result(rsa.generate())
        except BaseException as exc:  # noqa: BLE001 - handed to whoever takes the key
            fut.set_exception(exc)

    # not a daemon thread: at exit the interpreter waits for it. A daemon thread still inside
    # OpenSSL at exit is unwound by pthread_exit through Rust frames, and the process aborts
    # ("FATAL: exception not rethrown"). So a usage error waits for the key (<= 250 ms).
    t = threading.Thread(target=work, name="ephemeral-rsa-early")
    t.start()
    _early, _thread = fut, t


def take() -> Future[rsa.PrivateKey] | None:
    """The prestarted key's future, once; None when there is none (or it was taken)."""
    global _early, _thread
    fut, _early, _thread = _early, None, None
    return fut


def settle(timeout: float = 10.0) -> None:
    """Wait until a prestarted generation has finished (call before ``os.fork``)."""
    t = _thread
    if t is not None:
        t.join(timeout)
