"""The record pumps with their record keys (as ``tunnel.bridge.make_pumps`` builds them).

Given the key, the compiled twin seals and opens through one keyed OpenSSL context per
direction instead of calling ``cryptography`` per record. The wire bytes, the plaintext and
every error must be the same as the pure twin's and as the library path's, for both suites.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest

from noports import _compat
from noports.crypto import records as R
from noports.errors import IntegrityError

SECRET = bytes(range(32))
SID = "direct-sid"
CONN = 7
SUITES = (R.SUITE_AES_256_GCM, R.SUITE_CHACHA20_POLY1305)
CHUNKS = [b"a", os.urandom(64), os.urandom(1024), os.urandom(70_000), b"z" * 65536]


def _key(direction: str, suite: int) -> bytes:
    return R.derive_key(SECRET, SID, direction, CONN, suite)


def _pump(pump: Any, src: socket.socket, dst: socket.socket, x: Any) -> None:
    """Step until the pump wants to read (it never has to wait to write here)."""
    while True:
        code = pump.step()
        assert code != x.WANT_WRITE
        if code in (x.WANT_READ, x.DONE):
            return


def _seal_all(impl: str, suite: int, with_key: bool) -> tuple[bytes, bool]:
    """Every chunk through a SealPump, one step per chunk, then EOF; the record stream."""
    x = _compat.speedups("xfer", impl)
    w, src = socket.socketpair()
    dst, r = socket.socketpair()
    with w, src, dst, r:
        for s in (w, src, dst, r):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 21)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        src.setblocking(False)
        dst.setblocking(False)
        sealer = R.RecordSealer(SECRET, SID, R.C2D, CONN, suite)
        key = _key(R.C2D, suite) if with_key else None
        p = x.SealPump(src, dst, sealer, key=key)
        for chunk in CHUNKS:
            w.sendall(chunk)
            _pump(p, src, dst, x)
        w.shutdown(socket.SHUT_WR)
        _pump(p, src, dst, x)
        assert p.eof
        dst.shutdown(socket.SHUT_WR)
        r.settimeout(5)
        out = bytearray()
        while chunk := r.recv(1 << 20):
            out += chunk
        return bytes(out), p.direct


def _open_all(impl: str, wire: bytes, with_key: bool) -> tuple[bytes, BaseException | None, bool]:
    x = _compat.speedups("xfer", impl)
    w, src = socket.socketpair()
    dst, r = socket.socketpair()
    with w, src, dst, r:
        for s in (w, src, dst, r):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 21)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        src.setblocking(False)
        dst.setblocking(False)
        opener = R.RecordOpener(SECRET, SID, R.C2D, CONN)
        key_for = (lambda s: _key(R.C2D, s)) if with_key else None
        p = x.OpenPump(src, dst, opener, key_for=key_for)
        w.sendall(wire)
        w.shutdown(socket.SHUT_WR)
        err: BaseException | None = None
        try:
            while p.step() != x.DONE:
                pass
        except (IntegrityError, R.TruncationError) as exc:
            err = exc
        dst.shutdown(socket.SHUT_WR)
        r.settimeout(5)
        out = bytearray()
        while chunk := r.recv(1 << 20):
            out += chunk
        return bytes(out), err, p.direct


def _reference_open(wire: bytes) -> bytes:
    """The plaintext of a whole record stream, by the sans-IO opener (closed in order)."""
    opener = R.RecordOpener(SECRET, SID, R.C2D, CONN)
    out = b"".join(opener.receive_data(wire))
    opener.receive_eof()
    return out


@pytest.mark.parametrize("suite", SUITES)
def test_sealed_bytes_are_the_same_with_and_without_the_key(impl: str, suite: int) -> None:
    with_key, direct = _seal_all(impl, suite, True)
    without, direct_without = _seal_all(impl, suite, False)
    assert not direct_without
    assert direct == (impl == "c" and _compat.speedups("xfer", "c").use_evp(True))
    assert with_key == without
    assert _reference_open(with_key) == b"".join(CHUNKS)


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("seal_impl", _compat.IMPLS)
def test_opened_plaintext_is_the_same_with_and_without_the_key(
    impl: str, seal_impl: str, suite: int
) -> None:
    wire, _ = _seal_all(seal_impl, suite, True)
    for with_key in (True, False):
        got, err, direct = _open_all(impl, wire, with_key)
        assert err is None
        assert got == b"".join(CHUNKS)
        assert direct == (with_key and impl == "c")


@pytest.mark.parametrize("where", [10, 70, -5])
def test_a_flipped_bit_fails_alike_with_and_without_the_key(impl: str, where: int) -> None:
    wire = bytearray(_seal_all("py", R.SUITE_AES_256_GCM, False)[0])
    wire[where] ^= 0x01
    results = [_open_all(impl, bytes(wire), k) for k in (True, False)]
    (got1, err1, _), (got2, err2, _) = results
    assert isinstance(err1, IntegrityError) and isinstance(err2, IntegrityError)
    assert str(err1) == str(err2)
    assert got1 == got2  # records before the damaged one only, never the damaged one
    assert len(got1) < sum(map(len, CHUNKS))


def test_a_wrong_key_only_fails_authentication() -> None:
    """A key that does not match the stream is caught by the tag, never passed through."""
    x = _compat.speedups("xfer", "c")
    if not x.use_evp(True):
        pytest.skip("no libcrypto to drive directly")
    wire, _ = _seal_all("c", R.SUITE_AES_256_GCM, True)
    w, src = socket.socketpair()
    dst, r = socket.socketpair()
    with w, src, dst, r:
        src.setblocking(False)
        opener = R.RecordOpener(SECRET, SID, R.C2D, CONN)
        p = x.OpenPump(src, dst, opener, key_for=lambda s: bytes(32))
        w.sendall(wire[:200])
        with pytest.raises(IntegrityError, match="record 0 failed authentication"):
            p.step()
        assert opener.failed


def test_use_evp_off_falls_back_to_cryptography() -> None:
    x = _compat.speedups("xfer", "c")
    try:
        assert x.use_evp(False) is False
        wire, direct = _seal_all("c", R.SUITE_AES_256_GCM, True)
        assert not direct
        assert wire == _seal_all("py", R.SUITE_AES_256_GCM, True)[0]
        assert _open_all("c", wire, True)[1:] == (None, False)
    finally:
        x.use_evp(True)
