"""Transfer loop, pure-Python twin (the specification of ``noports._speedups.xfer_c``).

A *pump* moves bytes one way, from a non-blocking source socket to a non-blocking
destination socket, through a transform, without allocating per chunk (DESIGN decision 5):
``recv_into`` one preallocated buffer, transform in place (CTR ``update_into``) or into a
second preallocated buffer (AEAD ``encrypt_into``/``decrypt_into``), ``send`` from it. A pump
never reads while it still holds unsent output, so it holds at most one buffer of data:
that is the backpressure, in both directions, with no extra queue.

``step()`` does as much as it can without blocking and says what it waits for:

* ``WANT_READ``  - the source is drained (a read came back short, or would block; or the
  per-step budget is used up): call again when the source is readable;
* ``WANT_WRITE`` - the destination is full: call again when it is writable;
* ``DONE``       - the source ended in order (TCP EOF; for record streams, the verified
  close record) and every byte, including our own close record, has been sent. The caller
  then half-closes the destination.

A read that comes back shorter than asked for means the socket had nothing more: the pump
sends what it has and returns ``WANT_READ`` without another read, which would only fail
with ``EAGAIN`` (one syscall and, here, one exception per small message). Readiness is
level-triggered, so anything that arrived in between wakes the loop again.

Buffers start small (``INITIAL_BUFSIZE``; an idle or interactive connection holds tens of
KiB, not MiB) and grow once to ``bufsize`` the first time a read fills the buffer, i.e.
when the flow is bulk. Growth happens only when no output is pending, so no byte moves.

Fairness (work per wake-up is bounded per connection, DESIGN decision 13): one ``step()``
reads at most ``budget`` bytes from its source (each read asks for no more than what is left
of it; an ``OpenPump`` read asks for at least one whole record) and stops reading once
``budget_ns`` nanoseconds have passed since it started. The readiness is level-triggered, so
a connection that stopped on its budget is simply called again on the next turn of the loop,
after every other ready connection had its turn: round-robin between the connections (and
directions) of a session, and of every session in the process. ``Flow`` picks the budget
for each wake-up: ``FAIR_BYTES``/``FAIR_NS`` while an interactive flow of this process (one
whose wake-up moved fewer than ``LIGHT_BYTES``, more than nothing, and that moved no batch of
``LIGHT_BYTES`` or more within ``FAIR_WINDOW_NS`` before: the short reads of a bulk flow are
the tails of its batches, and counting them would keep fair mode on by itself) woke within
the last ``FAIR_WINDOW_NS``, so an interactive message waits behind at most one small batch
per busy connection in each end; else ``SOLO_BYTES``/``SOLO_NS``: bulk flows alone or among
themselves keep large batches (fewer wake-ups and syscalls per GB), served round-robin.
Interactive flows are also served *first*: a wake-up of any other flow begins by driving
every interactive flow of the process whose source is readable (one ``poll`` of their
sockets), so a message that arrived while the loop was busy waits for no further batch.
``urgent_begin()``/``urgent_end()`` ask for the fair budget while a new connection of a
multi-mode session is being set up (``noports.tunnel.multi``): each loop turn of its set-up
then waits behind small batches, so 8 connections opened at once start milliseconds apart
instead of one every ~35 ms behind the solo batches of those already streaming.

Errors propagate: ``OSError`` from the sockets, ``IntegrityError``/``TruncationError``
from record streams. ``Flow`` drives one pump from the event loop's readiness callbacks;
``noports.tunnel.bridge`` wires two of them together.
"""

from __future__ import annotations

import select
import socket
import struct
from time import monotonic_ns
from typing import Any

from cryptography.exceptions import InvalidTag

from ..crypto.records import (
    HEADER_LEN,
    MAX_FRAME,
    MAX_PLAINTEXT,
    MAX_SEQ,
    PREAMBLE_LEN,
    TAG_LEN,
    TYPE_CLOSE,
    TYPE_DATA,
)
from ..errors import IntegrityError, TruncationError

WANT_READ = 1
WANT_WRITE = 2
DONE = 3

DEFAULT_BUFSIZE = 256 * 1024
INITIAL_BUFSIZE = 16 * 1024
MAX_ROUNDS = 16
RECORDS_PER_READ = 4

# Work per wake-up (see "Fairness" above); identical in the compiled twin.
SOLO_BYTES = 1024 * 1024
SOLO_NS = 2_000_000
FAIR_BYTES = 64 * 1024
FAIR_NS = 250_000
FAIR_WINDOW_NS = 100_000_000
LIGHT_BYTES = 16 * 1024

_HEADER = struct.Struct(">I")  # the record header, as noports.crypto.records packs it
_SEQ = struct.Struct(">Q")  # the record sequence number in the nonce


class CopyPump:
    """src -> dst, raw or through an AES-CTR context applied in place."""

    def __init__(
        self,
        src: socket.socket,
        dst: socket.socket,
        ctx: Any = None,
        bufsize: int = DEFAULT_BUFSIZE,
        max_rounds: int = MAX_ROUNDS,
    ) -> None:
        self.src = src
        self.dst = dst
        self.ctx = ctx
        self.bufsize = bufsize
        self.max_rounds = max_rounds
        self.budget = SOLO_BYTES
        self.budget_ns = SOLO_NS
        self.cur = min(bufsize, INITIAL_BUFSIZE)
        self.buf = bytearray(self.cur)
        self.mv = memoryview(self.buf)
        self.grow = False
        self.off = 0
        self.end = 0
        self.eof = False
        self.transferred = 0

    def _grow(self) -> None:
        """Bulk flow: switch to the full-size buffer (called with nothing pending)."""
        self.grow = False
        self.cur = self.bufsize
        self.buf = bytearray(self.cur)
        self.mv = memoryview(self.buf)

    def step(self) -> int:
        rounds = 0
        moved = 0
        drained = False
        mv = self.mv
        t0 = monotonic_ns()
        while True:
            if self.off < self.end:
                try:
                    n = self.dst.send(mv[self.off : self.end])
                except BlockingIOError:
                    return WANT_WRITE
                self.off += n
                if self.off < self.end:
                    return WANT_WRITE
            if self.eof:
                return DONE
            if drained or rounds >= self.max_rounds:
                return WANT_READ
            if rounds and (moved >= self.budget or monotonic_ns() - t0 >= self.budget_ns):
                return WANT_READ
            rounds += 1
            if self.grow:
                self._grow()
                mv = self.mv
            want = min(self.cur, max(self.budget - moved, 1))
            try:
                n = self.src.recv_into(mv, want)
            except BlockingIOError:
                return WANT_READ
            if n == 0:
                self.eof = True
                return DONE
            if self.ctx is not None:
                self.ctx.update_into(mv[:n], mv)
            self.off = 0
            self.end = n
            self.transferred += n
            moved += n
            if n < want:
                drained = True
            elif self.cur < self.bufsize:
                self.grow = True


class SealPump:
    """Plaintext src -> record stream on dst (``RecordSealer``); EOF becomes the close record."""

    def __init__(
        self,
        src: socket.socket,
        dst: socket.socket,
        sealer: Any,
        bufsize: int = RECORDS_PER_READ * MAX_PLAINTEXT,
        max_rounds: int = MAX_ROUNDS,
    ) -> None:
        self.src = src
        self.dst = dst
        self.sealer = sealer
        self.maxlen = max(1, min(bufsize, RECORDS_PER_READ * MAX_PLAINTEXT))
        self.max_rounds = max_rounds
        self.budget = SOLO_BYTES
        self.budget_ns = SOLO_NS
        self._alloc(min(self.maxlen, INITIAL_BUFSIZE))
        self.off = 0
        self.end = 0
        self.eof = False
        self.transferred = 0

    def _alloc(self, inlen: int) -> None:
        """Plaintext buffer of ``inlen`` and a record buffer that always fits its records."""
        self.grow = False
        self.inlen = inlen
        self.inbuf = bytearray(inlen)
        self.inmv = memoryview(self.inbuf)
        nrec = (inlen + MAX_PLAINTEXT - 1) // MAX_PLAINTEXT
        self.outbuf = bytearray(PREAMBLE_LEN + inlen + (nrec + 1) * (HEADER_LEN + TAG_LEN))
        self.outmv = memoryview(self.outbuf)

    def step(self) -> int:
        rounds = 0
        moved = 0
        drained = False
        out = self.outmv
        inp = self.inmv
        sealer = self.sealer
        t0 = monotonic_ns()
        while True:
            if self.off < self.end:
                try:
                    n = self.dst.send(out[self.off : self.end])
                except BlockingIOError:
                    return WANT_WRITE
                self.off += n
                if self.off < self.end:
                    return WANT_WRITE
            if self.eof:
                return DONE
            if drained or rounds >= self.max_rounds:
                return WANT_READ
            if rounds and (moved >= self.budget or monotonic_ns() - t0 >= self.budget_ns):
                return WANT_READ
            rounds += 1
            if self.grow:
                self._alloc(self.maxlen)
                out, inp = self.outmv, self.inmv
            want = min(self.inlen, max(self.budget - moved, 1))
            try:
                n = self.src.recv_into(inp, want)
            except BlockingIOError:
                return WANT_READ
            moved += n
            if n < want:
                drained = True
            elif self.inlen < self.maxlen:
                self.grow = True
            pos = 0 if sealer.started else sealer.start_into(out)
            if n == 0:
                pos += sealer.close_into(out[pos:])
                self.eof = True
            else:
                # RecordSealer.seal_into inlined (same checks, same bytes, same state): a
                # method call and two memoryviews less per record, much of a small
                # message's cost in this twin
                encrypt_into, nonce, aad = sealer.aead.encrypt_into, sealer.nonce, sealer.aad
                off = 0
                while off < n:
                    chunk = min(n - off, MAX_PLAINTEXT)
                    if sealer.closed:
                        raise IntegrityError("record stream already closed")
                    seq = sealer.seq
                    if seq >= MAX_SEQ:
                        raise IntegrityError("record sequence space exhausted")
                    ctlen = chunk + TAG_LEN  # data record: type 0 in the top byte
                    _HEADER.pack_into(out, pos, ctlen)
                    _HEADER.pack_into(aad, 0, ctlen)
                    _SEQ.pack_into(nonce, 4, seq)
                    sealer.seq = seq + 1
                    pos += HEADER_LEN
                    encrypt_into(nonce, inp[off : off + chunk], aad, out[pos : pos + ctlen])
                    pos += ctlen
                    off += chunk
                self.transferred += n
            self.off = 0
            self.end = pos


class OpenPump:
    """Record stream src -> verified plaintext on dst (``RecordOpener``).

    A record's plaintext reaches ``dst`` only after its tag verified. EOF before the close
    record raises ``TruncationError``; bytes after it raise ``IntegrityError``.
    """

    def __init__(
        self,
        src: socket.socket,
        dst: socket.socket,
        opener: Any,
        bufsize: int = RECORDS_PER_READ * MAX_PLAINTEXT,
        max_rounds: int = MAX_ROUNDS,
    ) -> None:
        self.src = src
        self.dst = dst
        self.opener = opener
        self.maxout = max(MAX_PLAINTEXT, bufsize)
        self.max_rounds = max_rounds
        self.budget = SOLO_BYTES
        self.budget_ns = SOLO_NS
        # at least one whole record each side; grows to maxout when the flow is bulk
        self.outlen = MAX_PLAINTEXT
        self.inlen = MAX_FRAME + min(INITIAL_BUFSIZE, self.maxout)
        self.inbuf = bytearray(self.inlen)
        self.inmv = memoryview(self.inbuf)
        self.outbuf = bytearray(self.outlen)
        self.outmv = memoryview(self.outbuf)
        self.grow = False
        self.istart = 0
        self.iend = 0
        self.off = 0
        self.end = 0
        self.eof = False
        self.transferred = 0

    def _grow(self) -> None:
        """Bulk flow: full-size buffers; unparsed input moves along (nothing is pending)."""
        self.grow = False
        left = self.iend - self.istart
        inbuf = bytearray(self.maxout + MAX_FRAME)
        inbuf[:left] = self.inmv[self.istart : self.iend]
        self.inbuf, self.inmv, self.inlen = inbuf, memoryview(inbuf), len(inbuf)
        self.istart, self.iend = 0, left
        self.outlen = self.maxout
        self.outbuf = bytearray(self.outlen)
        self.outmv = memoryview(self.outbuf)

    def _decode(self) -> int:
        """Open every whole record that fits the output buffer; returns plaintext bytes.

        The checks, nonce and AAD are ``RecordOpener.frame_length`` and ``open_frame_into``
        inlined (same errors, same state): a method call and four memoryviews less per
        record, much of a small message's cost in this twin.
        """
        opener = self.opener
        inp = self.inmv
        out = self.outmv
        pos = 0
        while True:
            avail = self.iend - self.istart
            if not opener.started:
                if avail < PREAMBLE_LEN:
                    return pos
                opener.take_preamble(inp[self.istart : self.istart + PREAMBLE_LEN])
                self.istart += PREAMBLE_LEN
                continue
            if avail < HEADER_LEN:
                return pos
            start = self.istart
            hdr = _HEADER.unpack_from(inp, start)[0]
            rtype, ctlen = hdr >> 24, hdr & 0xFFFFFF
            if opener.failed:
                raise IntegrityError("record stream already failed authentication")
            if opener.closed:
                raise IntegrityError("data after the close record")
            if rtype == TYPE_DATA:
                if not TAG_LEN < ctlen <= MAX_PLAINTEXT + TAG_LEN:
                    raise IntegrityError(f"record length {ctlen} out of range")
            elif rtype == TYPE_CLOSE:
                if ctlen != TAG_LEN:
                    raise IntegrityError("close record with a body")
            else:
                raise IntegrityError(f"unknown record type {rtype}")
            flen = HEADER_LEN + ctlen
            ptlen = ctlen - TAG_LEN
            if avail < flen or pos + ptlen > self.outlen:
                return pos
            aad, nonce, seq = opener.aad, opener.nonce, opener.seq
            aad[0:HEADER_LEN] = inp[start : start + HEADER_LEN]
            _SEQ.pack_into(nonce, 4, seq)
            try:
                opener.aead.decrypt_into(
                    nonce, inp[start + HEADER_LEN : start + flen], aad, out[pos : pos + ptlen]
                )
            except InvalidTag:
                opener.failed = True  # poison: no later record is accepted either
                raise IntegrityError(f"record {seq} failed authentication") from None
            opener.seq = seq + 1
            pos += ptlen
            self.istart = start + flen
            if rtype == TYPE_CLOSE:
                opener.closed = True
                if self.istart != self.iend:
                    raise IntegrityError("data after the close record")
                self.eof = True
                return pos

    def step(self) -> int:
        rounds = 0
        moved = 0
        drained = False
        out = self.outmv
        t0 = monotonic_ns()
        while True:
            if self.off < self.end:
                try:
                    n = self.dst.send(out[self.off : self.end])
                except BlockingIOError:
                    return WANT_WRITE
                self.off += n
                if self.off < self.end:
                    return WANT_WRITE
            if self.eof:
                return DONE
            n = self._decode() if self.iend > self.istart else 0
            if n:
                self.off = 0
                self.end = n
                self.transferred += n
                continue
            if self.eof:
                return DONE
            if drained or rounds >= self.max_rounds:
                return WANT_READ
            if rounds and (moved >= self.budget or monotonic_ns() - t0 >= self.budget_ns):
                return WANT_READ
            rounds += 1
            if self.grow:
                self._grow()
                out = self.outmv
            if self.istart == self.iend:
                self.istart = self.iend = 0
            elif self.inlen - self.iend < MAX_FRAME:
                left = self.iend - self.istart
                self.inmv[0:left] = self.inmv[self.istart : self.iend]
                self.istart, self.iend = 0, left
            free = self.inlen - self.iend
            want = min(free, max(self.budget - moved, MAX_FRAME))
            try:
                n = self.src.recv_into(self.inmv[self.iend :], want)
            except BlockingIOError:
                return WANT_READ
            if n == 0:
                raise TruncationError("record stream ended without a close record")
            self.iend += n
            moved += n
            if n < want:
                drained = True
            elif self.outlen < self.maxout:
                self.grow = True


# Until when the fair budget applies: an interactive (light) flow of this process woke
# within FAIR_WINDOW_NS before this moment, or ``urgent()`` asked for it.
_light_until = 0


# Interactive flows of this process, served first (see ``Flow.drive``): a flow joins when a
# wake-up of it moved a small message (0 < bytes < LIGHT_BYTES) and leaves when one moved
# LIGHT_BYTES or more, or when it stops.
_light_flows: list[Flow] = []


_poller: Any = None
_poller_fds: tuple[int, ...] = ()


def _serve_light() -> None:
    """Drive every interactive flow whose source is readable now (one ``poll``)."""
    global _poller, _poller_fds
    fds = {f.src_fd: f for f in _light_flows if f.reading and not f.writing}
    if not fds:
        return
    key = tuple(fds)
    if key != _poller_fds:  # the poll object is kept while the set of sockets is the same
        _poller = select.poll()
        for fd in key:
            _poller.register(fd, select.POLLIN)
        _poller_fds = key
    for fd, ev in _poller.poll(0):
        f = fds[fd]
        if not (f.light and f.reading):  # an earlier one's failure stopped it
            continue
        if ev & select.POLLNVAL:  # closed without stop(): forget it
            f.light = False
            _light_flows.remove(f)
        else:
            f.drive()


# Connection set-ups in progress in this process (``urgent_begin``/``urgent_end``).
_urgent = 0


def urgent_begin() -> None:
    """Give every flow of this process the fair budget until the matching ``urgent_end()``.

    For work that needs a few quick turns of the event loop while bulk flows run, such
    as setting up another connection of a session (accept, relay connect, auth line,
    control message, local connect): each turn then waits behind at most one fair batch
    per busy flow instead of a solo one, so a new connection does not start tens of
    milliseconds late behind the ones already streaming.
    """
    global _urgent
    _urgent += 1


def urgent_end() -> None:
    """End one ``urgent_begin()`` (never below none)."""
    global _urgent
    if _urgent > 0:
        _urgent -= 1


def urgent_pending() -> int:
    """How many ``urgent_begin()`` are not ended yet (diagnostics and tests)."""
    return _urgent


class Flow:
    """One direction of a bridge: drives a pump from the event loop's readiness callbacks.

    Per direction: read readiness on the source, or write readiness on the destination,
    never both (backpressure). The loop calls ``drive`` directly; the readiness callback is
    registered only when what the pump waits for changes, so a steady flow of small messages
    costs one callback per wakeup and no loop calls. Before each step it sets the pump's
    budget for this wake-up (solo or fair, see the module docstring). A flow that is not
    interactive first drives every interactive flow of the process whose source is readable
    (one ``poll`` of their sockets), so a small message that arrived while the loop was busy
    never waits behind the bulk batches of that loop turn. On ``DONE`` the destination is
    half-closed and ``on_done()`` is called; any exception from the pump goes to
    ``on_fail(exc)`` (the caller tears everything down).
    """

    def __init__(
        self,
        loop: Any,
        pump: Any,
        src: socket.socket,
        dst: socket.socket,
        on_done: Any,
        on_fail: Any,
    ) -> None:
        self.loop = loop
        self.pump = pump
        self.step = pump.step
        self.dst = dst
        self.src_fd = src.fileno()
        self.dst_fd = dst.fileno()
        self.on_done = on_done
        self.on_fail = on_fail
        self.reading = False
        self.writing = False
        self.done = False
        self.light = False
        self.bulk_until = 0

    def drive(self) -> None:
        global _light_until
        if self.done:
            return
        if _light_flows and not self.light:
            _serve_light()
            if self.done:  # a served flow of the same bridge failed
                return
        now = monotonic_ns()
        pump = self.pump
        if now < _light_until or _urgent:
            pump.budget = FAIR_BYTES
            pump.budget_ns = FAIR_NS
        else:
            pump.budget = SOLO_BYTES
            pump.budget_ns = SOLO_NS
        before = pump.transferred
        try:
            code = self.step()
        except BaseException as exc:  # noqa: BLE001 - every failure aborts the bridge
            self.on_fail(exc)
            return
        moved = pump.transferred - before
        if moved >= LIGHT_BYTES:
            # a batch: this flow is bulk for a while, and its short reads meanwhile are
            # the ends of its batches, not interactive messages (else fair mode would feed
            # itself: small batches drain sources, and drained reads look interactive)
            self.bulk_until = now + FAIR_WINDOW_NS
            if self.light:
                self.light = False
                _light_flows.remove(self)
        elif moved and now >= self.bulk_until:
            _light_until = now + FAIR_WINDOW_NS
            if not self.light:
                self.light = True
                _light_flows.append(self)
        if code == WANT_READ:
            if self.reading and not self.writing:
                return
            if self.writing:
                self.loop.remove_writer(self.dst_fd)
                self.writing = False
            if not self.reading:
                self.loop.add_reader(self.src_fd, self.drive)
                self.reading = True
        elif code == WANT_WRITE:
            if self.reading:
                self.loop.remove_reader(self.src_fd)
                self.reading = False
            if not self.writing:
                self.loop.add_writer(self.dst_fd, self.drive)
                self.writing = True
        else:
            self.stop()
            self.done = True
            try:
                self.dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self.on_done()

    def stop(self) -> None:
        """Unregister from the loop (idempotent)."""
        if self.light:
            self.light = False
            _light_flows.remove(self)
        if self.reading:
            self.loop.remove_reader(self.src_fd)
            self.reading = False
        if self.writing:
            self.loop.remove_writer(self.dst_fd)
            self.writing = False
