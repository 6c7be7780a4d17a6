"""``sshnp --stdio``: the tunnel on stdin/stdout, for ssh's ``ProxyCommand`` (operators 1c).

Only tunnel bytes go to stdout; progress and logs go to stderr; nothing is ever read from the
terminal. stdin and stdout are usually pipes, so two threads move bytes between them and one
end of a socketpair whose other end is bridged to the relay by the tunnel library (same
crypto as the listening modes). stdin EOF is passed on as a half-close; once the far side has
finished too (or 5 s later) we exit, which tears the relay side down.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import threading

from ..tunnel import bridge, connect_relay
from .run import open_session

log = logging.getLogger("noports.sshnp.stdio")
EOF_GRACE = 5.0
CHUNK = 256 * 1024


def _stdin_to_sock(sock: socket.socket, on_eof) -> None:
    try:
        while True:
            data = os.read(0, CHUNK)
            if not data:
                break
            sock.sendall(data)
    except OSError as exc:
        log.debug("stdin pump ended: %s", exc)
    finally:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        on_eof()


def _sock_to_stdout(sock: socket.socket) -> None:
    try:
        while True:
            data = sock.recv(CHUNK)
            if not data:
                break
            view = memoryview(data)
            while view:
                n = os.write(1, view)
                view = view[n:]
    except OSError as exc:
        log.debug("stdout pump ended: %s", exc)
    finally:
        with contextlib.suppress(OSError):
            os.close(1)


async def run_stdio(args: argparse.Namespace) -> int:
    client, est = await open_session(args)
    await client.close()
    relay = await connect_relay(est.relay_host, est.relay_port, est.auth_line)
    ours, theirs = socket.socketpair()
    loop = asyncio.get_running_loop()
    stdin_done = asyncio.Event()
    threading.Thread(
        target=_stdin_to_sock,
        daemon=True,
        args=(ours, lambda: loop.call_soon_threadsafe(stdin_done.set)),
    ).start()
    out_thread = threading.Thread(target=_sock_to_stdout, args=(ours,), daemon=True)
    out_thread.start()
    log.info("stdio tunnel up (%s), session %s", est.mode, est.session_id)
    task = asyncio.ensure_future(bridge(theirs, relay, est.crypto, is_client=True))
    eof_wait = asyncio.ensure_future(stdin_done.wait())
    await asyncio.wait({task, eof_wait}, return_when=asyncio.FIRST_COMPLETED)
    if not task.done():
        done, _ = await asyncio.wait({task}, timeout=EOF_GRACE)
        if not done:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    eof_wait.cancel()
    if task.done() and not task.cancelled() and task.exception() is not None:
        log.info("tunnel ended: %s", task.exception())
    await asyncio.get_running_loop().run_in_executor(None, out_thread.join, 2.0)
    return 0
