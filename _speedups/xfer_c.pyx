# cython: language_level=3, boundscheck=False, wraparound=False
"""Transfer loop, compiled twin of ``noports/_speedups/xfer_py.py`` (read that first: it is
the specification; this module must produce identical bytes and identical errors).

What the compiled twin removes from the per-chunk path: Python socket method calls and
their ``BlockingIOError`` objects on every drained socket (we call ``recv``/``send`` on the
file descriptor directly and look at ``errno``), the record header/nonce/AAD packing
(plain C stores into the sealer's and opener's own preallocated buffers), and the Python
bookkeeping between calls. The ciphers stay in OpenSSL through ``cryptography``
(``update_into``, ``encrypt_into``, ``decrypt_into``): AES is never reimplemented here.
"""

from cpython.buffer cimport PyBuffer_FillInfo
from cpython.bytearray cimport PyByteArray_AS_STRING
from libc.errno cimport EAGAIN, EINTR, errno
from libc.string cimport memmove, memcpy
from libc.stdint cimport uint8_t, uint32_t, uint64_t

import os
from socket import SHUT_WR as _SHUT_WR

from cryptography.exceptions import InvalidTag

from noports.crypto.records import (
    HEADER_LEN as _HEADER_LEN, MAX_FRAME as _MAX_FRAME, MAX_PLAINTEXT as _MAX_PLAINTEXT,
    PREAMBLE_LEN as _PREAMBLE_LEN, TAG_LEN as _TAG_LEN, MAX_SEQ as _MAX_SEQ,
)
from noports.errors import IntegrityError, TruncationError

cdef extern from "errno.h":
    int EWOULDBLOCK

cdef extern from "time.h" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec *ts)
    int CLOCK_MONOTONIC


cdef inline long long _now_ns() noexcept:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <long long>ts.tv_sec * 1000000000 + ts.tv_nsec

cdef extern from "poll.h" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    short POLLIN
    short POLLNVAL

cdef extern from "sys/socket.h" nogil:
    ssize_t c_recv "recv" (int fd, void *buf, size_t n, int flags)
    ssize_t c_send "send" (int fd, const void *buf, size_t n, int flags)
    int MSG_NOSIGNAL

WANT_READ = 1
WANT_WRITE = 2
DONE = 3

DEFAULT_BUFSIZE = 256 * 1024
INITIAL_BUFSIZE = 16 * 1024
MAX_ROUNDS = 16
RECORDS_PER_READ = 4

# Work per wake-up (the pure twin's "Fairness"); the same values and rules.
SOLO_BYTES = 1024 * 1024
SOLO_NS = 2_000_000
FAIR_BYTES = 64 * 1024
FAIR_NS = 250_000
FAIR_WINDOW_NS = 100_000_000
LIGHT_BYTES = 16 * 1024
cdef Py_ssize_t C_SOLO_BYTES = SOLO_BYTES, C_FAIR_BYTES = FAIR_BYTES
cdef long long C_SOLO_NS = SOLO_NS, C_FAIR_NS = FAIR_NS, C_FAIR_WINDOW_NS = FAIR_WINDOW_NS
cdef long long _light_until = 0

cdef enum:
    C_WANT_READ = 1
    C_WANT_WRITE = 2
    C_DONE = 3
    HDR = 4
    TAG = 16
    PRE = 4
    MAXPT = 65536
    MAXFRAME = 65556
    RTYPE_DATA = 0
    RTYPE_CLOSE = 1

assert _HEADER_LEN == HDR and _TAG_LEN == TAG and _PREAMBLE_LEN == PRE
assert _MAX_PLAINTEXT == MAXPT and _MAX_FRAME == MAXFRAME


# The sockets are non-blocking, so ``recv``/``send`` never wait: they run with the GIL held.
# Releasing it around each call costs a lock round trip per syscall and, when another thread
# wants the GIL, can leave the loop waiting for it up to the switch interval.

cdef inline Py_ssize_t _recv(int fd, char *buf, Py_ssize_t n) except -2:
    """Bytes read, 0 on EOF, -1 when the socket would block."""
    cdef ssize_t r
    while True:
        r = c_recv(fd, buf, <size_t>n, 0)
        if r >= 0:
            return r
        if errno == EINTR:
            continue
        if errno == EAGAIN or errno == EWOULDBLOCK:
            return -1
        raise OSError(errno, os.strerror(errno))


cdef inline Py_ssize_t _send(int fd, const char *buf, Py_ssize_t n) except -2:
    """Bytes sent, or -1 when the socket would block."""
    cdef ssize_t r
    while True:
        r = c_send(fd, buf, <size_t>n, MSG_NOSIGNAL)
        if r >= 0:
            return r
        if errno == EINTR:
            continue
        if errno == EAGAIN or errno == EWOULDBLOCK:
            return -1
        raise OSError(errno, os.strerror(errno))


cdef inline void _put_u32(char *p, uint32_t v) noexcept:
    p[0] = <char>((v >> 24) & 0xFF)
    p[1] = <char>((v >> 16) & 0xFF)
    p[2] = <char>((v >> 8) & 0xFF)
    p[3] = <char>(v & 0xFF)


cdef inline void _put_u64(char *p, uint64_t v) noexcept:
    cdef int i
    for i in range(8):
        p[7 - i] = <char>((v >> (8 * i)) & 0xFF)


cdef inline uint32_t _get_u32(const char *p) noexcept:
    cdef const uint8_t *u = <const uint8_t *>p
    return (<uint32_t>u[0] << 24) | (<uint32_t>u[1] << 16) | (<uint32_t>u[2] << 8) | u[3]


cdef class _View:
    """A reusable window on a pump's own buffer, handed to the cipher calls.

    A memoryview slice per call would allocate (and feed the cyclic GC) on every record; this
    object is re-pointed instead. It is only exported for the duration of one synchronous
    cipher call, and the buffer it points into belongs to the pump, which outlives it.
    """

    cdef char *ptr
    cdef Py_ssize_t size

    def __getbuffer__(self, Py_buffer *view, int flags):
        PyBuffer_FillInfo(view, self, self.ptr, self.size, 0, flags)

    def __releasebuffer__(self, Py_buffer *view):
        pass

    def __len__(self):
        # cryptography < 42 (cffi backend) takes len() of what update_into is given
        return self.size


cdef inline _View _at(_View v, char *ptr, Py_ssize_t size):
    v.ptr = ptr
    v.size = size
    return v


cdef class _Base:
    cdef public object src, dst
    cdef int sfd, dfd
    cdef Py_ssize_t off, end
    cdef public bint eof
    cdef public long long transferred
    cdef public Py_ssize_t max_rounds
    cdef public Py_ssize_t budget
    cdef public long long budget_ns
    cdef object outbuf
    cdef object outmv
    cdef char *outp
    cdef _View vin, vout

    cdef int _step(self) except -1:
        raise NotImplementedError

    cdef inline bint _spent(self, Py_ssize_t rounds, Py_ssize_t moved, long long t0) noexcept:
        """After the first round: is this wake-up's budget (bytes or time) used up?"""
        return rounds > 0 and (moved >= self.budget or _now_ns() - t0 >= self.budget_ns)

    def step(self):
        """Move what can be moved now; WANT_READ, WANT_WRITE or DONE (see the pure twin)."""
        return self._step()

    cdef int _flush(self) except -2:
        """C_WANT_WRITE if output is still pending, else 0."""
        cdef Py_ssize_t n
        while self.off < self.end:
            n = _send(self.dfd, self.outp + self.off, self.end - self.off)
            if n < 0:
                return C_WANT_WRITE
            self.off += n
            if self.off < self.end:
                return C_WANT_WRITE
        return 0


cdef class CopyPump(_Base):
    """src -> dst, raw or through an AES-CTR context applied in place."""

    cdef public object ctx
    cdef public Py_ssize_t bufsize
    cdef public Py_ssize_t cur
    cdef public bint grow
    cdef object update_into

    def __init__(self, src, dst, ctx=None, Py_ssize_t bufsize=DEFAULT_BUFSIZE,
                 Py_ssize_t max_rounds=MAX_ROUNDS):
        self.src = src
        self.dst = dst
        self.sfd = src.fileno()
        self.dfd = dst.fileno()
        self.ctx = ctx
        self.update_into = None if ctx is None else ctx.update_into
        self.vin = _View()
        self.vout = _View()
        self.bufsize = bufsize
        self.max_rounds = max_rounds
        self.budget = C_SOLO_BYTES
        self.budget_ns = C_SOLO_NS
        self._alloc(min(bufsize, INITIAL_BUFSIZE))
        self.off = 0
        self.end = 0
        self.eof = False
        self.transferred = 0

    cdef int _alloc(self, Py_ssize_t size) except -1:
        """(Re)allocate the buffer; only ever called with nothing pending."""
        self.grow = False
        self.cur = size
        self.outbuf = bytearray(size)
        self.outmv = memoryview(self.outbuf)
        self.outp = PyByteArray_AS_STRING(self.outbuf)
        return 0

    @property
    def buf(self):
        return self.outbuf

    cdef int _step(self) except -1:
        cdef Py_ssize_t rounds = 0, n, want
        cdef long long moved = 0
        cdef long long t0 = _now_ns()
        cdef bint drained = False
        try:
            while True:
                if self._flush():
                    return C_WANT_WRITE
                if self.eof:
                    return C_DONE
                if drained or rounds >= self.max_rounds:
                    return C_WANT_READ
                if self._spent(rounds, moved, t0):
                    return C_WANT_READ
                rounds += 1
                if self.grow:
                    self._alloc(self.bufsize)
                want = self.budget - moved
                if want < 1:
                    want = 1
                if want > self.cur:
                    want = self.cur
                n = _recv(self.sfd, self.outp, want)
                if n < 0:
                    return C_WANT_READ
                if n == 0:
                    self.eof = True
                    return C_DONE
                if self.update_into is not None:
                    self.update_into(_at(self.vin, self.outp, n), _at(self.vout, self.outp, self.cur))
                self.off = 0
                self.end = n
                moved += n
                if n < want:
                    drained = True
                elif self.cur < self.bufsize:
                    self.grow = True
        finally:
            if moved:
                self.transferred += moved


cdef class SealPump(_Base):
    """Plaintext src -> record stream on dst; EOF becomes the close record."""

    cdef public object sealer
    cdef object inbuf, inmv, encrypt_into, nonce, aad
    cdef char *inp
    cdef char *noncep
    cdef char *aadp
    cdef public Py_ssize_t inlen, maxlen
    cdef public bint grow
    cdef uint64_t seq
    cdef bint started

    def __init__(self, src, dst, sealer, Py_ssize_t bufsize=RECORDS_PER_READ * MAXPT,
                 Py_ssize_t max_rounds=MAX_ROUNDS):
        self.src = src
        self.dst = dst
        self.sfd = src.fileno()
        self.dfd = dst.fileno()
        self.sealer = sealer
        self.maxlen = max(1, min(bufsize, RECORDS_PER_READ * MAXPT))
        self.max_rounds = max_rounds
        self.budget = C_SOLO_BYTES
        self.budget_ns = C_SOLO_NS
        self._alloc(min(self.maxlen, INITIAL_BUFSIZE))
        self.encrypt_into = sealer.aead.encrypt_into
        self.nonce = sealer.nonce
        self.aad = sealer.aad
        self.noncep = PyByteArray_AS_STRING(self.nonce)
        self.aadp = PyByteArray_AS_STRING(self.aad)
        self.vin = _View()
        self.vout = _View()
        self.off = 0
        self.end = 0
        self.eof = False
        self.transferred = 0

    cdef int _alloc(self, Py_ssize_t inlen) except -1:
        """Plaintext buffer of ``inlen`` and a record buffer that always fits its records."""
        cdef Py_ssize_t nrec = (inlen + MAXPT - 1) // MAXPT
        self.grow = False
        self.inlen = inlen
        self.inbuf = bytearray(inlen)
        self.inmv = memoryview(self.inbuf)
        self.inp = PyByteArray_AS_STRING(self.inbuf)
        self.outbuf = bytearray(PRE + inlen + (nrec + 1) * (HDR + TAG))
        self.outmv = memoryview(self.outbuf)
        self.outp = PyByteArray_AS_STRING(self.outbuf)
        return 0

    cdef Py_ssize_t _seal(self, Py_ssize_t ptoff, Py_ssize_t n, Py_ssize_t pos, int rtype) except -1:
        """One record (plaintext inbuf[ptoff:ptoff+n]) at outbuf[pos]; returns its length."""
        cdef uint32_t hdr = (<uint32_t>rtype << 24) | <uint32_t>(n + TAG)
        if self.seq >= <uint64_t>_MAX_SEQ:
            raise IntegrityError("record sequence space exhausted")
        _put_u32(self.outp + pos, hdr)
        _put_u32(self.aadp, hdr)
        _put_u64(self.noncep + 4, self.seq)
        self.seq += 1
        self.encrypt_into(self.nonce, _at(self.vin, self.inp + ptoff, n), self.aad,
                          _at(self.vout, self.outp + pos + HDR, n + TAG))
        return HDR + n + TAG

    cdef int _step(self) except -1:
        cdef Py_ssize_t rounds = 0, n, pos, off, chunk, want
        cdef long long moved = 0, readn = 0
        cdef long long t0 = _now_ns()
        cdef bint drained = False
        sealer = self.sealer
        self.seq = sealer.seq
        try:
            while True:
                if self._flush():
                    return C_WANT_WRITE
                if self.eof:
                    return C_DONE
                if drained or rounds >= self.max_rounds:
                    return C_WANT_READ
                if self._spent(rounds, readn, t0):
                    return C_WANT_READ
                rounds += 1
                if self.grow:
                    self._alloc(self.maxlen)
                want = self.budget - readn
                if want < 1:
                    want = 1
                if want > self.inlen:
                    want = self.inlen
                n = _recv(self.sfd, self.inp, want)
                if n < 0:
                    return C_WANT_READ
                readn += n
                if n < want:
                    drained = True
                elif self.inlen < self.maxlen:
                    self.grow = True
                pos = 0
                if not self.started and not sealer.started:
                    self.outmv[0:PRE] = sealer.preamble
                    sealer.started = True
                    pos = PRE
                self.started = True  # the sealer never un-starts
                if n == 0:
                    pos += self._seal(0, 0, pos, RTYPE_CLOSE)
                    sealer.closed = True
                    self.eof = True
                else:
                    off = 0
                    while off < n:
                        chunk = n - off
                        if chunk > MAXPT:
                            chunk = MAXPT
                        pos += self._seal(off, chunk, pos, RTYPE_DATA)
                        off += chunk
                    moved += n
                self.off = 0
                self.end = pos
        finally:
            sealer.seq = self.seq
            if moved:
                self.transferred += moved


cdef class OpenPump(_Base):
    """Record stream src -> verified plaintext on dst."""

    cdef public object opener
    cdef object inbuf, inmv, decrypt_into, nonce, aad
    cdef char *inp
    cdef char *noncep
    cdef char *aadp
    cdef public Py_ssize_t inlen, outlen, maxout, istart, iend
    cdef public bint grow
    cdef uint64_t seq

    def __init__(self, src, dst, opener, Py_ssize_t bufsize=RECORDS_PER_READ * MAXPT,
                 Py_ssize_t max_rounds=MAX_ROUNDS):
        self.src = src
        self.dst = dst
        self.sfd = src.fileno()
        self.dfd = dst.fileno()
        self.opener = opener
        self.maxout = max(MAXPT, bufsize)
        self.max_rounds = max_rounds
        self.budget = C_SOLO_BYTES
        self.budget_ns = C_SOLO_NS
        # at least one whole record each side; grows to maxout when the flow is bulk
        self.outlen = MAXPT
        self.inlen = MAXFRAME + min(INITIAL_BUFSIZE, self.maxout)
        self.inbuf = bytearray(self.inlen)
        self.inmv = memoryview(self.inbuf)
        self.inp = PyByteArray_AS_STRING(self.inbuf)
        self.outbuf = bytearray(self.outlen)
        self.outmv = memoryview(self.outbuf)
        self.outp = PyByteArray_AS_STRING(self.outbuf)
        self.grow = False
        self.decrypt_into = None
        self.vin = _View()
        self.vout = _View()
        self.istart = 0
        self.iend = 0
        self.off = 0
        self.end = 0
        self.eof = False
        self.transferred = 0

    cdef int _grow(self) except -1:
        """Bulk flow: full-size buffers; unparsed input moves along (nothing is pending)."""
        cdef Py_ssize_t left = self.iend - self.istart
        inbuf = bytearray(self.maxout + MAXFRAME)
        memcpy(PyByteArray_AS_STRING(inbuf), self.inp + self.istart, left)
        self.inbuf = inbuf
        self.inmv = memoryview(inbuf)
        self.inp = PyByteArray_AS_STRING(inbuf)
        self.inlen = self.maxout + MAXFRAME
        self.istart = 0
        self.iend = left
        self.outlen = self.maxout
        self.outbuf = bytearray(self.outlen)
        self.outmv = memoryview(self.outbuf)
        self.outp = PyByteArray_AS_STRING(self.outbuf)
        self.grow = False
        return 0

    cdef int _bind(self) except -1:
        """After the preamble: take the opener's AEAD and its nonce/AAD buffers."""
        self.decrypt_into = self.opener.aead.decrypt_into
        self.nonce = self.opener.nonce
        self.aad = self.opener.aad
        self.noncep = PyByteArray_AS_STRING(self.nonce)
        self.aadp = PyByteArray_AS_STRING(self.aad)
        return 0

    cdef Py_ssize_t _decode(self) except -1:
        cdef Py_ssize_t pos = 0, avail, flen, ptlen
        cdef uint32_t hdr, ctlen
        cdef int rtype
        opener = self.opener
        while True:
            avail = self.iend - self.istart
            if self.decrypt_into is None:
                if avail < PRE:
                    return pos
                opener.take_preamble(self.inmv[self.istart:self.istart + PRE])
                self.istart += PRE
                self._bind()
                continue
            if avail < HDR:
                return pos
            # identical checks to RecordOpener.frame_length
            hdr = _get_u32(self.inp + self.istart)
            rtype = hdr >> 24
            ctlen = hdr & 0xFFFFFF
            if opener.failed:
                raise IntegrityError("record stream already failed authentication")
            if opener.closed:
                raise IntegrityError("data after the close record")
            if rtype == RTYPE_DATA:
                if not (TAG < ctlen <= MAXPT + TAG):
                    raise IntegrityError(f"record length {ctlen} out of range")
            elif rtype == RTYPE_CLOSE:
                if ctlen != TAG:
                    raise IntegrityError("close record with a body")
            else:
                raise IntegrityError(f"unknown record type {rtype}")
            flen = HDR + ctlen
            ptlen = ctlen - TAG
            if avail < flen or pos + ptlen > self.outlen:
                return pos
            memcpy(self.aadp, self.inp + self.istart, HDR)
            _put_u64(self.noncep + 4, self.seq)
            try:
                self.decrypt_into(self.nonce, _at(self.vin, self.inp + self.istart + HDR, ctlen),
                                  self.aad, _at(self.vout, self.outp + pos, ptlen))
            except InvalidTag:
                opener.failed = True
                raise IntegrityError(f"record {self.seq} failed authentication") from None
            self.seq += 1
            pos += ptlen
            self.istart += flen
            if rtype == RTYPE_CLOSE:
                opener.closed = True
                if self.istart != self.iend:
                    raise IntegrityError("data after the close record")
                self.eof = True
                return pos

    cdef int _step(self) except -1:
        cdef Py_ssize_t rounds = 0, n, left, want
        cdef long long moved = 0, readn = 0
        cdef long long t0 = _now_ns()
        cdef bint drained = False
        self.seq = self.opener.seq
        try:
            while True:
                if self._flush():
                    return C_WANT_WRITE
                if self.eof:
                    return C_DONE
                n = self._decode() if self.iend > self.istart else 0
                if n:
                    self.off = 0
                    self.end = n
                    moved += n
                    continue
                if self.eof:
                    return C_DONE
                if drained or rounds >= self.max_rounds:
                    return C_WANT_READ
                if self._spent(rounds, readn, t0):
                    return C_WANT_READ
                rounds += 1
                if self.grow:
                    self._grow()
                if self.istart == self.iend:
                    self.istart = 0
                    self.iend = 0
                elif self.inlen - self.iend < MAXFRAME:
                    left = self.iend - self.istart
                    memmove(self.inp, self.inp + self.istart, left)
                    self.istart = 0
                    self.iend = left
                want = self.budget - readn
                if want < MAXFRAME:
                    want = MAXFRAME
                if want > self.inlen - self.iend:
                    want = self.inlen - self.iend
                n = _recv(self.sfd, self.inp + self.iend, want)
                if n < 0:
                    return C_WANT_READ
                if n == 0:
                    raise TruncationError("record stream ended without a close record")
                self.iend += n
                readn += n
                if n < want:
                    drained = True
                elif self.outlen < self.maxout:
                    self.grow = True
        finally:
            self.opener.seq = self.seq
            if moved:
                self.transferred += moved


# Interactive flows of this process, served first (the pure twin's _light_flows).
cdef list _light_flows = []
DEF MAX_LIGHT_POLL = 64


cdef int _serve_light() except -1:
    """Drive every interactive flow whose source is readable now (one ``poll``)."""
    cdef pollfd fds[MAX_LIGHT_POLL]
    cdef Flow f
    cdef list polled = []
    cdef int n = 0, i, got
    for f in _light_flows:
        if f.reading and not f.writing and n < MAX_LIGHT_POLL:
            fds[n].fd = f.src_fd
            fds[n].events = POLLIN
            fds[n].revents = 0
            polled.append(f)
            n += 1
    if n == 0:
        return 0
    got = poll(fds, n, 0)
    if got <= 0:
        return 0
    for i in range(n):
        if fds[i].revents == 0:
            continue
        f = polled[i]
        if not (f.light and f.reading):  # an earlier one's failure stopped it
            continue
        if fds[i].revents & POLLNVAL:  # closed without stop(): forget it
            f.light = False
            _light_flows.remove(f)
        else:
            f.drive()
    return 0


# Connection set-ups in progress in this process (the pure twin's urgent_begin/_end).
cdef long _urgent = 0


def urgent_begin():
    """Fair budget for every flow of this process until the matching ``urgent_end()``."""
    global _urgent
    _urgent += 1


def urgent_end():
    """End one ``urgent_begin()`` (never below none)."""
    global _urgent
    if _urgent > 0:
        _urgent -= 1


def urgent_pending():
    """How many ``urgent_begin()`` are not ended yet (diagnostics and tests)."""
    return _urgent


cdef class Flow:
    """One direction of a bridge: drives a pump from the event loop's readiness callbacks.

    Per direction: read readiness on the source, or write readiness on the destination,
    never both (backpressure). The loop calls ``drive`` directly; the readiness callback is
    registered only when what the pump waits for changes, so a steady flow of small messages
    costs one callback per wakeup and no loop calls. A flow that is not interactive first
    drives every interactive flow of the process whose source is readable (one ``poll``),
    as in the pure twin. On ``DONE`` the destination is half-closed and ``on_done()`` is
    called; any exception from the pump goes to ``on_fail(exc)`` (the caller tears
    everything down).
    """

    cdef object loop, pump, dst, on_done, on_fail, pystep
    cdef _Base cpump
    cdef public int src_fd, dst_fd
    cdef public bint reading, writing, done, light
    cdef long long bulk_until

    def __init__(self, loop, pump, src, dst, on_done, on_fail):
        self.loop = loop
        self.pump = pump
        self.cpump = pump if isinstance(pump, _Base) else None
        self.pystep = pump.step
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

    def drive(self):
        global _light_until
        cdef int code
        cdef long long now, before, moved
        cdef object pump = self.pump
        if self.done:
            return
        if _light_flows and not self.light:
            _serve_light()
            if self.done:  # a served flow of the same bridge failed
                return
        now = _now_ns()
        if self.cpump is not None:
            if now < _light_until or _urgent:
                self.cpump.budget = C_FAIR_BYTES
                self.cpump.budget_ns = C_FAIR_NS
            else:
                self.cpump.budget = C_SOLO_BYTES
                self.cpump.budget_ns = C_SOLO_NS
        elif now < _light_until or _urgent:
            pump.budget = FAIR_BYTES
            pump.budget_ns = FAIR_NS
        else:
            pump.budget = SOLO_BYTES
            pump.budget_ns = SOLO_NS
        try:
            if self.cpump is not None:
                before = self.cpump.transferred
                code = self.cpump._step()
                moved = self.cpump.transferred - before
            else:
                before = pump.transferred
                code = self.pystep()
                moved = pump.transferred - before
        except BaseException as exc:  # every failure aborts the bridge
            self.on_fail(exc)
            return
        if moved >= LIGHT_BYTES:
            # a batch: bulk for a while, its short reads are not messages (the pure twin)
            self.bulk_until = now + C_FAIR_WINDOW_NS
            if self.light:
                self.light = False
                _light_flows.remove(self)
        elif moved > 0 and now >= self.bulk_until:
            _light_until = now + C_FAIR_WINDOW_NS
            if not self.light:
                self.light = True
                _light_flows.append(self)
        if code == C_WANT_READ:
            if self.reading and not self.writing:
                return
            if self.writing:
                self.loop.remove_writer(self.dst_fd)
                self.writing = False
            if not self.reading:
                self.loop.add_reader(self.src_fd, self.drive)
                self.reading = True
        elif code == C_WANT_WRITE:
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
                self.dst.shutdown(_SHUT_WR)
            except OSError:
                pass
            self.on_done()

    def stop(self):
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
