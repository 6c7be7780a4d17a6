# cython: language_level=3
"""Compiled byte pump: Linux ``splice(2)`` socket -> pipe -> socket, driven by the event loop.

Same contract as ``noports/_speedups/pump_py.py`` (the specification twin): same class,
arguments and attributes, same backpressure, half-close and error behaviour. The bytes
never enter user space: each direction owns one non-blocking pipe (created on first use,
so an idle pair holds no pipe, and it grows to ``pipe_size`` with F_SETPIPE_SZ, where
permitted, only once a bulk flow has filled it: interactive pairs keep the small default
and leave the per-user pipe quota, fs.pipe-user-pages-soft, to the bulk ones).

Per direction: read (splice src -> pipe) only while the pipe is empty; then drain the pipe
into dst; if dst would block, stop reading src and wait for dst to become writable. So at
most one pipe's worth of bytes is in flight in the relay per direction.

Pipes are borrowed from a small pool of empty ones while a direction has bytes in flight
and given back when it goes idle (``trim_spare_pipes`` closes the spares).

On a platform without splice the module still builds and imports, with ``SPLICE = False``;
the relay then uses the pure twin.
"""

from libc.errno cimport errno, EAGAIN, EINTR

import socket as _socket
import struct as _struct

cdef extern from *:
    """
    #include <fcntl.h>
    #include <unistd.h>
    #include <sys/socket.h>
    #include <errno.h>
    #include <sys/ioctl.h>
    #ifdef __linux__
    #define NP_HAVE_SPLICE 1
    static ssize_t np_splice(int fd_in, int fd_out, size_t len) {
        return splice(fd_in, NULL, fd_out, NULL, len, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    }
    static int np_pipe(int fds[2]) {
        if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) return -1;
        return fcntl(fds[1], F_GETPIPE_SZ);
    }
    static int np_grow(int fd, int size) {
        return fcntl(fd, F_SETPIPE_SZ, size);
    }
    static int np_pipe_empty(int fd) {
        int n = -1;
        if (ioctl(fd, FIONREAD, &n) != 0) return 0;
        return n == 0;
    }
    #else
    #define NP_HAVE_SPLICE 0
    static ssize_t np_splice(int fd_in, int fd_out, size_t len) {
        (void)fd_in; (void)fd_out; (void)len; errno = ENOSYS; return -1;
    }
    static int np_pipe(int fds[2]) { (void)fds; errno = ENOSYS; return -1; }
    static int np_grow(int fd, int size) { (void)fd; (void)size; errno = ENOSYS; return -1; }
    static int np_pipe_empty(int fd) { (void)fd; return 0; }
    #endif
    #ifndef MSG_NOSIGNAL
    #define MSG_NOSIGNAL 0
    #endif
    static ssize_t np_send(int fd, const char *buf, size_t len) {
        return send(fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    }
    """
    int NP_HAVE_SPLICE
    ssize_t np_splice(int fd_in, int fd_out, size_t len) nogil
    int np_pipe(int *fds) nogil
    int np_grow(int fd, int size) nogil
    int np_pipe_empty(int fd) nogil
    ssize_t np_send(int fd, const char *buf, size_t len) nogil

cdef extern from "unistd.h":
    int close(int fd) nogil

IMPLEMENTATION = "c"
SPLICE = bool(NP_HAVE_SPLICE)

_LINGER_RESET = _struct.pack("ii", 1, 0)
cdef enum:
    PIPE_DEFAULT = 65536
    MAX_ROUNDS = 8
    SPARE_MAX = 64
    # Fairness between pairs: a wake-up stops once it moved this many bytes (the pure twin's
    # _WAKE_BYTES); the fd stays readable, so the pair is served again on the loop's next
    # turn, after every other ready pair (round-robin).
    WAKE_BYTES = 524288

# Empty default-size pipes between uses, as (read fd, write fd, capacity). A direction
# holds a pipe only while bytes are in flight, so pipes (fds and the per-user pipe quota)
# scale with busy directions, not with pairs. Only verified-empty pipes are kept.
cdef list _spare = []
cdef long long _created = 0, _reused = 0, _grown = 0


def trim_spare_pipes(int keep=0):
    """Close spare pipes beyond ``keep``; returns how many were closed (Relay.close: 0)."""
    cdef int closed = 0
    while len(_spare) > keep:
        r, w, _ = _spare.pop()
        close(r)
        close(w)
        closed += 1
    return closed


def spare_pipes():
    """How many empty pipes are kept for reuse (diagnostics and tests)."""
    return len(_spare)


def pipe_stats():
    """Process-wide pipe counters: created, reused from the spares, grown to pipe_size."""
    return {"created": _created, "reused": _reused, "grown": _grown, "spare": len(_spare)}


cdef class Pump:
    """Bridges ``sock_a`` and ``sock_b``; see the pure twin for the full contract."""

    cdef public object loop
    cdef public object sock_a
    cdef public object sock_b
    cdef public object on_done
    cdef public object error
    cdef public bint closed
    cdef readonly Py_ssize_t bufsize
    cdef int pipe_size
    cdef bint started
    cdef int fd[2]          # fd[d] is the source of direction d (0: A->B, 1: B->A)
    cdef int pr[2]          # pipe read end per direction, -1 until first use
    cdef int pw[2]          # pipe write end per direction
    cdef Py_ssize_t inpipe[2]
    cdef int pcap[2]        # current pipe capacity per direction
    cdef bint grown[2]      # growth to pipe_size attempted
    cdef long long count[2]
    cdef bint reading[2]    # reader registered on fd[d]
    cdef bint writing[2]    # writer registered on fd[1-d]
    cdef bint eof[2]
    cdef bint done[2]
    cdef object head0, head1  # bytes from before pairing, written first
    cdef Py_ssize_t hoff[2]
    cdef object cb_read0, cb_read1, cb_write0, cb_write1

    def __cinit__(self):
        cdef int d
        for d in range(2):
            self.pr[d] = -1
            self.pw[d] = -1
            self.inpipe[d] = 0
            self.count[d] = 0
            self.reading[d] = False
            self.writing[d] = False
            self.eof[d] = False
            self.done[d] = False
            self.hoff[d] = 0
            self.pcap[d] = 0
            self.grown[d] = False

    def __init__(self, loop, sock_a, sock_b, on_done, *, bytes head_ab=b"",
                 bytes head_ba=b"", bint eof_a=False, bint eof_b=False,
                 Py_ssize_t bufsize=262144, int pipe_size=1048576):
        if bufsize < 1:
            raise ValueError("bufsize must be positive")
        self.loop = loop
        self.sock_a = sock_a
        self.sock_b = sock_b
        self.on_done = on_done
        self.error = None
        self.closed = False
        self.started = False
        self.bufsize = bufsize
        self.pipe_size = pipe_size
        self.fd[0] = sock_a.fileno()
        self.fd[1] = sock_b.fileno()
        self.head0 = head_ab
        self.head1 = head_ba
        self.eof[0] = eof_a
        self.eof[1] = eof_b
        self.cb_read0 = self._on_readable0
        self.cb_read1 = self._on_readable1
        self.cb_write0 = self._on_writable0
        self.cb_write1 = self._on_writable1

    def __dealloc__(self):
        cdef int d
        for d in range(2):
            if self.pr[d] >= 0:
                close(self.pr[d])
                close(self.pw[d])
                self.pr[d] = -1
                self.pw[d] = -1

    @property
    def bytes_ab(self):
        return self.count[0]

    @property
    def bytes_ba(self):
        return self.count[1]

    @property
    def pipe_sizes(self):
        """Current pipe capacity per direction (A->B, B->A); 0 while a direction has none."""
        return (self.pcap[0], self.pcap[1])

    def start(self):
        if self.started:
            raise RuntimeError("pump already started")
        self.started = True
        self._start_dir(0)
        if not self.closed:
            self._start_dir(1)

    def close(self):
        """Abort from outside (relay shutdown): reset both sockets, then ``on_done``."""
        if not self.closed:
            self._abort(None)

    # -- registration -------------------------------------------------------------------

    cdef object _head(self, int d):
        return self.head0 if d == 0 else self.head1

    cdef void _start_dir(self, int d) except *:
        if len(self._head(d)) > 0:
            self._want_write(d)
        elif self.eof[d]:
            self._finish(d)
        else:
            self._want_read(d)

    cdef void _want_read(self, int d) except *:
        if self.writing[d]:
            self.loop.remove_writer(self.fd[1 - d])
            self.writing[d] = False
        if not self.reading[d]:
            self.loop.add_reader(self.fd[d], self.cb_read0 if d == 0 else self.cb_read1)
            self.reading[d] = True

    cdef void _want_write(self, int d) except *:
        if self.reading[d]:
            self.loop.remove_reader(self.fd[d])
            self.reading[d] = False
        if not self.writing[d]:
            self.loop.add_writer(self.fd[1 - d], self.cb_write0 if d == 0 else self.cb_write1)
            self.writing[d] = True

    cdef void _unregister(self, int d) except *:
        if self.reading[d]:
            self.loop.remove_reader(self.fd[d])
            self.reading[d] = False
        if self.writing[d]:
            self.loop.remove_writer(self.fd[1 - d])
            self.writing[d] = False

    cdef void _drop_pipe(self, int d) noexcept:
        if self.pr[d] >= 0:
            close(self.pr[d])
            close(self.pw[d])
            self.pr[d] = -1
            self.pw[d] = -1
        self.inpipe[d] = 0
        self.pcap[d] = 0

    # -- events -------------------------------------------------------------------------

    def _on_readable0(self):
        self._readable(0)

    def _on_readable1(self):
        self._readable(1)

    def _on_writable0(self):
        self._writable(0)

    def _on_writable1(self):
        self._writable(1)

    cdef bint _acquire_pipe(self, int d) except -1:
        global _created, _reused
        cdef int fds[2]
        cdef int cap
        if _spare:
            r, w, cap = _spare.pop()
            self.pr[d] = r
            self.pw[d] = w
            self.pcap[d] = cap
            _reused += 1
        else:
            cap = np_pipe(fds)
            if cap < 0:
                self._abort(OSError(errno, "pipe2 failed"))
                return False
            self.pr[d] = fds[0]
            self.pw[d] = fds[1]
            self.pcap[d] = cap if cap > 0 else PIPE_DEFAULT
            _created += 1
        self.inpipe[d] = 0
        self.grown[d] = False
        return True

    cdef void _release_pipe(self, int d) noexcept:
        """Give an empty pipe back to the spares (shrunk to the default size first).

        Only a pipe that is verifiably empty is kept, so no byte can ever cross into
        another pair; anything doubtful is closed.
        """
        cdef int cap
        if self.pr[d] < 0:
            return
        if self.inpipe[d] == 0 and len(_spare) < SPARE_MAX and np_pipe_empty(self.pr[d]):
            if self.pcap[d] > PIPE_DEFAULT:
                # Pipe capacity counts against fs.pipe-user-pages-soft even when empty.
                cap = np_grow(self.pw[d], PIPE_DEFAULT)
                if cap > 0:
                    self.pcap[d] = cap
            if self.pcap[d] <= PIPE_DEFAULT:
                _spare.append((self.pr[d], self.pw[d], self.pcap[d]))
                self.pr[d] = -1
                self.pw[d] = -1
                self.pcap[d] = 0
                return
        self._drop_pipe(d)

    cdef void _readable(self, int d) except *:
        global _grown
        cdef ssize_t n
        cdef Py_ssize_t moved = 0
        cdef int rounds, cap
        if self.closed:
            return
        if self.pr[d] < 0 and not self._acquire_pipe(d):
            return
        # A few rounds per wakeup (fewer trips through the event loop on a busy pair), at
        # most WAKE_BYTES (fairness between pairs).
        for rounds in range(MAX_ROUNDS):
            n = np_splice(self.fd[d], self.pw[d], <size_t>self.pcap[d])
            if n > 0:
                self.inpipe[d] = n
                moved += n
                if n >= self.pcap[d] and not self.grown[d]:
                    # A bulk flow filled the default pipe: grow it once (best effort;
                    # small pipes keep interactive pairs cheap and the pipe quota free).
                    self.grown[d] = True
                    if self.pipe_size > self.pcap[d]:
                        cap = np_grow(self.pw[d], self.pipe_size)
                        if cap > 0:
                            self.pcap[d] = cap
                            _grown += 1
                if not self._drain(d):
                    return
                if moved >= WAKE_BYTES:
                    return
            elif n == 0:
                self.eof[d] = True
                self._finish(d)
                return
            else:
                if errno != EAGAIN and errno != EINTR:
                    self._abort(OSError(errno, "splice from socket failed"))
                elif self.inpipe[d] == 0 and (self.pcap[d] <= PIPE_DEFAULT or moved < PIPE_DEFAULT):
                    # Idle until the next readable event. A grown pipe stays while its flow
                    # still moves bulk per wakeup, so a fast stream is not re-piped each time.
                    self._release_pipe(d)
                return

    cdef void _writable(self, int d) except *:
        if self.closed:
            return
        if self._drain(d) and self.inpipe[d] == 0 and self.pcap[d] <= PIPE_DEFAULT:
            self._release_pipe(d)

    cdef bint _drain(self, int d) except -1:
        """Write the head, then the pipe, to dst; switch to writer mode if dst blocks."""
        cdef ssize_t m
        cdef object head = self._head(d)
        cdef const unsigned char[:] hv
        cdef Py_ssize_t hlen = len(head)
        cdef int dst = self.fd[1 - d]
        if self.hoff[d] < hlen:
            hv = head
            while self.hoff[d] < hlen:
                m = np_send(dst, <const char*>&hv[self.hoff[d]], hlen - self.hoff[d])
                if m > 0:
                    self.hoff[d] += m
                    self.count[d] += m
                elif errno == EAGAIN or errno == EINTR:
                    self._want_write(d)
                    return False
                else:
                    self._abort(OSError(errno, "send failed"))
                    return False
            if d == 0:
                self.head0 = b""
            else:
                self.head1 = b""
        while self.inpipe[d] > 0:
            m = np_splice(self.pr[d], dst, <size_t>self.inpipe[d])
            if m > 0:
                self.inpipe[d] -= m
                self.count[d] += m
            elif m < 0 and (errno == EAGAIN or errno == EINTR):
                self._want_write(d)
                return False
            else:
                self._abort(OSError(errno, "splice to socket failed"))
                return False
        if self.eof[d]:
            self._finish(d)
            return False
        self._want_read(d)
        return not self.closed

    cdef void _finish(self, int d) except *:
        """src reached EOF and everything read has been written: half-close dst."""
        self._unregister(d)
        self._release_pipe(d)
        self.done[d] = True
        sock = self.sock_b if d == 0 else self.sock_a
        try:
            sock.shutdown(_socket.SHUT_WR)
        except OSError as exc:
            self._abort(exc)
            return
        if self.done[0] and self.done[1] and not self.closed:
            self._close(False)

    cdef void _abort(self, object exc) except *:
        if self.closed:
            return
        self.error = exc
        self._close(True)

    cdef void _close(self, bint reset) except *:
        cdef int d
        self.closed = True
        for d in range(2):
            self._unregister(d)
            self._release_pipe(d)  # closes it instead if any byte is left
        self.head0 = b""
        self.head1 = b""
        for sock in (self.sock_a, self.sock_b):
            if reset:
                try:
                    sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_LINGER, _LINGER_RESET)
                except OSError:
                    pass
            sock.close()
        cb = self.on_done
        self.on_done = None
        if cb is not None:
            cb(self)
