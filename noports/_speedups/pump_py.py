"""Pure-Python byte pump between two connected, non-blocking sockets (the specification twin).

Driven by ``loop.add_reader``/``add_writer`` on raw file descriptors, so it behaves the same
on uvloop and asyncio and costs nothing while a pair is idle (no timers, no tasks).

Per direction (src -> dst) the rules, shared with the splice twin ``pump_c``:

* Read from src only while nothing is waiting to be written to dst: at most ``bufsize``
  bytes are held in user space per direction, so a stalled reader stops the relay from
  reading and TCP flow control pushes back to the sender (backpressure both ways).
* ``head`` (bytes that arrived before pairing) is written before anything else.
* EOF on src: everything read is written, then ``shutdown(dst, SHUT_WR)``; the other
  direction carries on (TCP half-close). The pair closes when both directions are done.
* Any socket error aborts the pair: both sockets are reset (SO_LINGER 0) and closed.

Reads go into one preallocated scratch buffer per thread; only the part that dst would not
take right away is copied out, so a busy pair does no per-chunk allocation and an idle pair
holds no buffer at all.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

IMPLEMENTATION = "py"
SPLICE = False

_LINGER_RESET = struct.pack("ii", 1, 0)
_AGAIN = (BlockingIOError, InterruptedError)
_MAX_ROUNDS = 8
# Fairness between pairs: a wake-up stops once it moved this many bytes (the same in the
# splice twin); the fd stays readable, so the pair is served again on the loop's next turn,
# after every other ready pair (round-robin).
_WAKE_BYTES = 512 * 1024


def trim_spare_pipes(keep: int = 0) -> int:
    """Parity with the splice twin, which keeps spare pipes; this twin has none."""
    return 0


def spare_pipes() -> int:
    return 0


def pipe_stats() -> dict[str, int]:
    return {"created": 0, "reused": 0, "grown": 0, "spare": 0}


class _Scratch(threading.local):
    def __init__(self) -> None:
        self.size = 0
        self.buf = bytearray()
        self.view = memoryview(self.buf)

    def get(self, size: int) -> tuple[bytearray, memoryview]:
        if self.size < size:
            self.view.release()
            self.buf = bytearray(size)
            self.view = memoryview(self.buf)
            self.size = size
        return self.buf, self.view


_scratch = _Scratch()


class _Direction:
    __slots__ = ("pump", "src", "dst", "src_fd", "dst_fd", "pending", "reading", "writing",
                 "eof", "done", "count")

    def __init__(self, pump: Pump, src: socket.socket, dst: socket.socket, head: bytes,
                 eof: bool) -> None:
        self.pump = pump
        self.src = src
        self.dst = dst
        self.src_fd = src.fileno()
        self.dst_fd = dst.fileno()
        self.pending: memoryview | None = memoryview(head) if head else None
        self.reading = False
        self.writing = False
        self.eof = eof
        self.done = False
        self.count = 0

    # -- registration -------------------------------------------------------------------

    def start(self) -> None:
        if self.pending is not None:
            self._want_write()
        elif self.eof:
            self._finish()
        else:
            self._want_read()

    def _want_read(self) -> None:
        if self.writing:
            self.pump.loop.remove_writer(self.dst_fd)
            self.writing = False
        if not self.reading:
            self.pump.loop.add_reader(self.src_fd, self.on_readable)
            self.reading = True

    def _want_write(self) -> None:
        if self.reading:
            self.pump.loop.remove_reader(self.src_fd)
            self.reading = False
        if not self.writing:
            self.pump.loop.add_writer(self.dst_fd, self.on_writable)
            self.writing = True

    def unregister(self) -> None:
        if self.reading:
            self.pump.loop.remove_reader(self.src_fd)
            self.reading = False
        if self.writing:
            self.pump.loop.remove_writer(self.dst_fd)
            self.writing = False

    # -- events -------------------------------------------------------------------------

    def on_readable(self) -> None:
        pump = self.pump
        size = pump.bufsize
        buf, view = _scratch.get(size)
        src, dst = self.src, self.dst
        # A few rounds per wakeup (fewer trips through the event loop on a busy pair), at
        # most _WAKE_BYTES (fairness between pairs).
        moved = 0
        for _ in range(_MAX_ROUNDS):
            try:
                n = src.recv_into(buf, size)
            except _AGAIN:
                return
            except OSError as exc:
                pump._abort(exc)
                return
            if n == 0:
                self.eof = True
                self._finish()
                return
            try:
                sent = dst.send(view[:n])
            except _AGAIN:
                sent = 0
            except OSError as exc:
                pump._abort(exc)
                return
            self.count += sent
            if sent < n:
                self.pending = memoryview(bytes(view[sent:n]))
                self._want_write()
                return
            if n < size:  # the socket is probably drained: let the loop poll it
                return
            moved += n
            if moved >= _WAKE_BYTES:
                return

    def on_writable(self) -> None:
        pending = self.pending
        if pending is None:  # defensive: nothing to write means we should be reading
            self._want_read()
            return
        try:
            sent = self.dst.send(pending)
        except _AGAIN:
            return
        except OSError as exc:
            self.pump._abort(exc)
            return
        self.count += sent
        if sent < len(pending):
            self.pending = pending[sent:]
            return
        self.pending = None
        if self.eof:
            self._finish()
        else:
            self._want_read()

    def _finish(self) -> None:
        """src reached EOF and everything read has been written: half-close dst."""
        self.unregister()
        self.done = True
        try:
            self.dst.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self.pump._abort(exc)
            return
        self.pump._direction_done()


class Pump:
    """Bridges ``sock_a`` and ``sock_b`` until both directions end or an error occurs.

    The pump owns both sockets from ``start()`` on and closes them itself. ``on_done(pump)``
    is called exactly once, after the sockets are closed. ``head_ab`` is data from A that
    arrived before pairing (to be written to B first); ``eof_a`` says A already half-closed.
    ``pipe_size`` is accepted for signature parity with the splice twin and ignored.
    """

    __slots__ = ("loop", "sock_a", "sock_b", "on_done", "bufsize", "_ab", "_ba", "closed",
                 "error", "_started")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock_a: socket.socket,
        sock_b: socket.socket,
        on_done: Callable[[Pump], Any],
        *,
        head_ab: bytes = b"",
        head_ba: bytes = b"",
        eof_a: bool = False,
        eof_b: bool = False,
        bufsize: int = 256 * 1024,
        pipe_size: int = 0,
    ) -> None:
        if bufsize < 1:
            raise ValueError("bufsize must be positive")
        self.loop = loop
        self.sock_a = sock_a
        self.sock_b = sock_b
        self.on_done = on_done
        self.bufsize = bufsize
        self._ab = _Direction(self, sock_a, sock_b, head_ab, eof_a)
        self._ba = _Direction(self, sock_b, sock_a, head_ba, eof_b)
        self.closed = False
        self.error: BaseException | None = None
        self._started = False

    @property
    def bytes_ab(self) -> int:
        return self._ab.count

    @property
    def bytes_ba(self) -> int:
        return self._ba.count

    def start(self) -> None:
        if self._started:
            raise RuntimeError("pump already started")
        self._started = True
        self._ab.start()
        if not self.closed:
            self._ba.start()

    def close(self) -> None:
        """Abort from outside (relay shutdown): reset both sockets, then ``on_done``."""
        if not self.closed:
            self._abort(None)

    def _direction_done(self) -> None:
        if self._ab.done and self._ba.done and not self.closed:
            self._close(reset=False)

    def _abort(self, exc: BaseException | None) -> None:
        if self.closed:
            return
        self.error = exc
        self._close(reset=True)

    def _close(self, reset: bool) -> None:
        self.closed = True
        self._ab.unregister()
        self._ba.unregister()
        self._ab.pending = None
        self._ba.pending = None
        for sock in (self.sock_a, self.sock_b):
            if reset:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                except OSError:
                    pass
            sock.close()
        cb = self.on_done
        self.on_done = _noop
        cb(self)


def _noop(pump: Pump) -> None:
    return None
