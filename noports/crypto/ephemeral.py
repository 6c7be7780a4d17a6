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
from typing import TYPE_CHECKING, Any

# only the RSA module of cryptography (~9 ms to import), not ``noports.crypto.rsa``, which
# imports serialization (~35 ms with its ssh module); and no concurrent.futures (logging,
# ~8 ms) until the key is taken: the key starts that much sooner
from cryptography.hazmat.primitives.asymmetric import rsa

if TYPE_CHECKING:
    from concurrent.futures import Future

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


class _Early:
    """One prestarted generation: its thread, its outcome, and the future it resolves."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.outcome: tuple[bool, Any] | None = None  # (ok, key or exception)
        self.future: Future[rsa.RSAPrivateKey] | None = None
        self.thread = threading.Thread(target=self._work, name="ephemeral-rsa-early")

    def _work(self) -> None:
        try:
            # the same key as noports.crypto.rsa.generate()
            outcome: tuple[bool, Any] = (
                True,
                rsa.generate_private_key(public_exponent=65537, key_size=2048),
            )
        except BaseException as exc:  # noqa: BLE001 - handed to whoever takes the key
            outcome = (False, exc)
        with self.lock:
            self.outcome, fut = outcome, self.future
        if fut is not None:
            _resolve(fut, outcome)


def _resolve(fut: Future[rsa.RSAPrivateKey], outcome: tuple[bool, Any]) -> None:
    if outcome[0]:
        fut.set_result(outcome[1])
    else:
        fut.set_exception(outcome[1])


_early: _Early | None = None


def prestart(argv: Sequence[str] = ()) -> None:
    """Start generating the key in a thread (skipped when ``argv`` says it is not needed;
    a wrong guess only costs or saves CPU, never changes behaviour)."""
    global _early
    if _NOT_NEEDED.intersection(argv):
        return
    e = _Early()
    # not a daemon thread: at exit the interpreter waits for it. A daemon thread still inside
    # OpenSSL at exit is unwound by pthread_exit through Rust frames, and the process aborts
    # ("FATAL: exception not rethrown"). So a usage error waits for the key (<= 250 ms).
    try:
        e.thread.start()
    except RuntimeError:  # no thread to spare: the session makes its key later, as before
        return
    _early = e


def take() -> Future[rsa.RSAPrivateKey] | None:
    """The prestarted key's future, once; None when there is none (or it was taken)."""
    global _early
    e, _early = _early, None
    if e is None:
        return None
    from concurrent.futures import Future

    fut: Future[rsa.RSAPrivateKey] = Future()
    fut.set_running_or_notify_cancel()
    with e.lock:
        outcome = e.outcome
        if outcome is None:
            e.future = fut  # the thread resolves it
    if outcome is not None:
        _resolve(fut, outcome)
    return fut


def settle(timeout: float = 10.0) -> None:
    """Wait until a prestarted generation has finished (call before ``os.fork``)."""
    e = _early
    if e is not None:
        e.thread.join(timeout)
