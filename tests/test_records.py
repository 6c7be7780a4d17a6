"""AEAD record layer: published AEAD vectors, the wire format rebuilt independently, and
the sans-IO properties of T7 (tamper, drop, duplicate, reorder, cross-session, truncation).
The compiled and pure transfer loops must produce identical bytes and identical errors."""

from __future__ import annotations

import hashlib
import os
import socket
import struct

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from noports import _compat
from noports.crypto import records as R
from noports.errors import ConfigError, IntegrityError, TruncationError

SECRET = bytes(range(32))
SID = "2d7f6a4e-0b4e-4d59-9a51-6d7d2a0c9e11"


# ---- published known-answer vectors --------------------------------------------------


def test_aes256gcm_mcgrew_viega_vectors() -> None:
    # "The Galois/Counter Mode of Operation (GCM)", test cases 13-16 (256-bit keys)
    assert (
        AESGCM(bytes(32)).encrypt(bytes(12), b"", None).hex() == "530f8afbc74536b9a963b4f1c4cb738b"
    )
    assert AESGCM(bytes(32)).encrypt(bytes(12), bytes(16), None).hex() == (
        "cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919"
    )
    k = bytes.fromhex("feffe9928665731c6d6a8f9467308308" * 2)
    iv = bytes.fromhex("cafebabefacedbaddecaf888")
    p = bytes.fromhex(
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
        "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255"
    )
    c = (
        "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
        "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad"
    )
    assert AESGCM(k).encrypt(iv, p, None).hex() == c + "b094dac5d93471bdec1a502270e3cc6c"
    aad = bytes.fromhex("feedfacedeadbeeffeedfacedeadbeefabaddad2")
    assert AESGCM(k).encrypt(iv, p[:60], aad).hex() == c[:120] + "76fc6ece0f4e1768cddf8853bb2d551b"


def test_chacha20_poly1305_rfc8439_vector() -> None:
    k = bytes(range(0x80, 0xA0))
    n = bytes.fromhex("070000004041424344454647")
    aad = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
    pt = (
        b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip "
        b"for the future, sunscreen would be it."
    )
    out = ChaCha20Poly1305(k).encrypt(n, pt, aad)
    assert out[:16].hex() == "d31a8d34648e60db7b86afbc53ef7ec2"
    assert out[-16:].hex() == "1ae10b594f09e26a7e902ecbd0600691"


# ---- our wire format, rebuilt from the documented parts -------------------------------


@pytest.mark.parametrize("suite", [R.SUITE_AES_256_GCM, R.SUITE_CHACHA20_POLY1305])
def test_wire_format_rebuilt_independently(suite: int) -> None:
    label = {1: b"aes-256-gcm", 2: b"chacha20-poly1305"}[suite]
    key = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=SID.encode(),
        info=b"noports-aead-v1 " + label + b" c2d 7",
    ).derive(SECRET)
    aead = AESGCM(key) if suite == 1 else ChaCha20Poly1305(key)
    pre = b"NP\x01" + bytes([suite])
    ctx = b"c2d" + (7).to_bytes(4, "big") + SID.encode()
    expect = bytearray(pre)
    for seq, (rtype, pt) in enumerate([(0, b"hello"), (0, b"x" * 1000), (1, b"")]):
        hdr = struct.pack(">I", (rtype << 24) | (len(pt) + 16))
        nonce = bytes(4) + seq.to_bytes(8, "big")
        expect += hdr + aead.encrypt(nonce, pt, hdr + pre + ctx)
    s = R.RecordSealer(SECRET, SID, R.C2D, 7, suite)
    wire = s.seal(b"hello") + s.seal(b"x" * 1000) + s.close()
    assert wire == bytes(expect)
    o = R.RecordOpener(SECRET, SID, R.C2D, 7)
    assert b"".join(o.receive_data(wire)) == b"hello" + b"x" * 1000
    o.receive_eof()
    assert o.suite == suite


def test_suite_detection_and_forcing(monkeypatch: pytest.MonkeyPatch) -> None:
    assert R.cpu_has_aes("processor\t: 0\nflags\t\t: fpu sse2 aes avx2\n")
    assert R.cpu_has_aes("Features\t: fp asimd aes pmull sha1\n")
    assert not R.cpu_has_aes("flags\t\t: fpu sse2 avx2\n")
    assert not R.cpu_has_aes("Features\t: fp asimd\n")
    monkeypatch.setenv("NOPORTS_AEAD_SUITE", "chacha20-poly1305")
    assert R.default_suite() == R.SUITE_CHACHA20_POLY1305
    assert R.default_suite("aes-256-gcm") == R.SUITE_AES_256_GCM
    with pytest.raises(ConfigError):
        R.default_suite("rot13")
    with pytest.raises(ConfigError):
        R.RecordSealer(b"short", SID, R.C2D)


def test_directions_never_share_a_keystream() -> None:
    p = b"\x00" * 4096 + os.urandom(4096)
    c2d = R.RecordSealer(SECRET, SID, R.C2D).seal(p)
    d2c = R.RecordSealer(SECRET, SID, R.D2C).seal(p)
    assert len(c2d) == len(d2c)
    body = slice(8, 8 + len(p))  # after preamble + header
    assert bytes(a ^ b for a, b in zip(c2d[body], d2c[body], strict=False)) != bytes(len(p))
    # and no 16-byte block of the XOR is zero (a shared keystream block would be)
    x = bytes(a ^ b for a, b in zip(c2d[body], d2c[body], strict=False))
    assert all(x[i : i + 16] != bytes(16) for i in range(0, len(x), 16))


# ---- T7 on the sans-IO opener ----------------------------------------------------------


def _stream(n_records: int = 5, size: int = 3000) -> tuple[list[bytes], bytes, list[int]]:
    s = R.RecordSealer(SECRET, SID, R.D2C, 3)
    chunks = [hashlib.sha256(bytes([i])).digest() * (size // 32) for i in range(n_records)]
    parts = [s.seal(c) for c in chunks] + [s.close()]
    bounds = [0]
    for p in parts:
        bounds.append(bounds[-1] + len(p))
    return chunks, b"".join(parts), bounds


def _feed(wire: bytes, *, step: int = 1000, conn_id: int = 3, sid: str = SID) -> bytes:
    o = R.RecordOpener(SECRET, sid, R.D2C, conn_id)
    out = bytearray()
    for i in range(0, len(wire), step):
        for c in o.receive_data(wire[i : i + step]):
            out += c
    o.receive_eof()
    return bytes(out)


def test_roundtrip_any_chunking() -> None:
    chunks, wire, _ = _stream()
    for step in (1, 7, 1000, len(wire)):
        assert _feed(wire, step=step) == b"".join(chunks)


def test_every_single_bit_flip_is_detected_with_zero_bad_bytes() -> None:
    chunks, wire, bounds = _stream(3, 200)
    good = b"".join(chunks)
    for pos in range(len(wire)):
        for bit in (0, 7):
            bad = bytearray(wire)
            bad[pos] ^= 1 << bit
            delivered = bytearray()
            o = R.RecordOpener(SECRET, SID, R.D2C, 3)
            with pytest.raises(IntegrityError):
                for c in o.receive_data(bytes(bad)):
                    delivered += c
                o.receive_eof()
            assert good.startswith(bytes(delivered))


def test_drop_duplicate_reorder_truncate_cross_session() -> None:
    chunks, wire, b = _stream()
    rec = [wire[b[i] : b[i + 1]] for i in range(len(b) - 1)]  # rec[0] includes the preamble
    pre, first = rec[0][:4], rec[0][4:]
    body = [first] + rec[1:]
    variants = {
        "drop": pre + b"".join(body[:2] + body[3:]),
        "duplicate": pre + b"".join(body[:3] + [body[2]] + body[3:]),
        "reorder": pre + b"".join([body[1], body[0]] + body[2:]),
        "drop-close-then-data": pre + b"".join(body[:-1] + [body[2]]),
        "after-close": wire + body[1],
    }
    for name, w in variants.items():
        with pytest.raises(IntegrityError):
            _feed(w)
        assert name
    with pytest.raises(TruncationError):
        _feed(pre + b"".join(body[:-1]))  # cut before the close record
    with pytest.raises(TruncationError):
        _feed(wire[:-5])  # cut inside the close record
    with pytest.raises(IntegrityError):
        _feed(wire, sid="another-session")
    with pytest.raises(IntegrityError):
        _feed(wire, conn_id=4)
    with pytest.raises(IntegrityError):
        _feed(b"SSH-2.0-OpenSSH\r\n")


# ---- the transfer loops: identical bytes, identical failures ----------------------------


def _pump_through(
    impl: str, kind: str, data: bytes, obj: object
) -> tuple[bytes, BaseException | None]:
    x = _compat.speedups("xfer", impl)
    src_w, src_r = socket.socketpair()
    dst_w, dst_r = socket.socketpair()
    for s in (src_w, src_r, dst_w, dst_r):
        s.setblocking(False)
    pump = getattr(x, kind)(src_r, dst_w, obj)
    got = bytearray()
    sent = 0
    err: BaseException | None = None
    shut = False
    for _ in range(100_000):
        if sent < len(data):
            try:
                sent += src_w.send(data[sent : sent + 70_000])
            except BlockingIOError:
                pass
        elif not shut:
            src_w.shutdown(socket.SHUT_WR)
            shut = True
        try:
            code = pump.step()
        except (IntegrityError, OSError) as exc:
            err = exc
            break
        try:
            while True:
                d = dst_r.recv(1 << 20)
                if not d:
                    break
                got += d
        except BlockingIOError:
            pass
        if code == x.DONE:
            break
    dst_w.close()
    dst_r.setblocking(True)
    while True:
        d = dst_r.recv(1 << 20)
        if not d:
            break
        got += d
    for s in (src_w, src_r, dst_r):
        s.close()
    return bytes(got), err


def test_seal_pump_matches_sans_io_sealer(impl: str) -> None:
    data = os.urandom(R.MAX_PLAINTEXT * 5 + 123)
    wire, err = _pump_through(impl, "SealPump", data, R.RecordSealer(SECRET, SID, R.C2D, 0, 1))
    assert err is None
    o = R.RecordOpener(SECRET, SID, R.C2D, 0)
    assert b"".join(o.receive_data(wire)) == data
    o.receive_eof()


def test_open_pump_roundtrip_and_tamper(impl: str) -> None:
    s = R.RecordSealer(SECRET, SID, R.C2D, 0, 2)
    data = os.urandom(300_000)
    wire = s.seal(data[:100_000]) + s.seal(data[100_000:]) + s.close()
    got, err = _pump_through(impl, "OpenPump", wire, R.RecordOpener(SECRET, SID, R.C2D, 0))
    assert err is None and got == data
    for pos in (0, 3, 5, 9, 5000, 100_030, len(wire) - 1):
        bad = bytearray(wire)
        bad[pos] ^= 0x10
        got, err = _pump_through(
            impl, "OpenPump", bytes(bad), R.RecordOpener(SECRET, SID, R.C2D, 0)
        )
        assert isinstance(err, IntegrityError), pos
        assert data.startswith(got)
        # zero bytes of the bad record: only whole records before it were released
        assert len(got) in (0, 65536, 100_000, 165_536, 231_072, 296_608), len(got)
    got, err = _pump_through(impl, "OpenPump", wire[:-20], R.RecordOpener(SECRET, SID, R.C2D, 0))
    assert isinstance(err, TruncationError) and got == data
