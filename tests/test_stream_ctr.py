"""Legacy AES-256-CTR: byte-exact against an independent keystream and NIST SP 800-38A.

The reference keystream is built here block by block: AES-ECB of the counter block, the
counter being the IV as one 128-bit big-endian integer, incremented with full carry.
"""

from __future__ import annotations

import os
import socket

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from noports import _compat
from noports.crypto.stream import CtrKeys, ctr_context
from noports.errors import ConfigError, ProtocolError


def ref_keystream(key: bytes, iv: bytes, n: int) -> bytes:
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    ctr = int.from_bytes(iv, "big")
    out = bytearray()
    while len(out) < n:
        out += ecb.update(ctr.to_bytes(16, "big"))
        ctr = (ctr + 1) % (1 << 128)
    return bytes(out[:n])


def xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=False))


def test_nist_sp800_38a_f55_ctr_aes256() -> None:
    key = bytes.fromhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
    iv = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")  # low byte 0xff: carries at once
    pt = bytes.fromhex(
        "6bc1bee22e409f96e93d7e117393172a"
        "ae2d8a571e03ac9c9eb76fac45af8e51"
        "30c81c46a35ce411e5fbc1191a0a52ef"
        "f69f2445df4f9b17ad2b417be66c3710"
    )
    ct = bytes.fromhex(
        "601ec313775789a5b7a7f504bbf3d228"
        "f443e3ca4d62b59aca84e990cacaf5c5"
        "2b0930daa23de94ce87017ba2d84988d"
        "dfc9c58db67aada613c2dd08457941a6"
    )
    assert ctr_context(key, iv).update(pt) == ct
    assert xor(pt, ref_keystream(key, iv, 64)) == ct


@pytest.mark.parametrize(
    "iv_hex",
    [
        "00000000000000000000000000000000",
        "000102030405060708090a0b0c0dfeff",
        "0001020304050607ffffffffffffffff",  # carry across 8 bytes into the high half
        "fffffffffffffffffffffffffffffffe",  # wraps the whole 128-bit counter
    ],
)
def test_counter_is_full_128bit_big_endian(iv_hex: str) -> None:
    key = bytes(range(32))
    iv = bytes.fromhex(iv_hex)
    pt = os.urandom(16 * 7 + 5)
    assert ctr_context(key, iv).update(pt) == xor(pt, ref_keystream(key, iv, len(pt)))


def test_chunking_independence() -> None:
    """One continuous keystream per direction, whatever the chunk boundaries."""
    key, iv = os.urandom(32), bytes.fromhex("00112233445566778899aabbccddeeff")
    pt = os.urandom(10_000)
    expect = xor(pt, ref_keystream(key, iv, len(pt)))
    for sizes in ([1] * 50 + [10_000], [15, 17, 33, 1000, 7, 9000], [4096] * 3):
        ctx = ctr_context(key, iv)
        out, pos = bytearray(), 0
        for s in sizes:
            out += ctx.update(pt[pos : pos + s])
            pos += s
            if pos >= len(pt):
                break
        assert bytes(out) == expect


def test_legacy_uses_same_key_and_iv_both_ways() -> None:
    k = CtrKeys(os.urandom(32), os.urandom(16))
    enc_c, _ = k.contexts(is_client=True)
    enc_d, _ = k.contexts(is_client=False)
    p = b"same plaintext both ways"
    # the known weakness we must reproduce for interop: identical ciphertexts
    assert enc_c.update(p) == enc_d.update(p)


def test_twin_keys_per_direction() -> None:
    k = CtrKeys.generate(twin=True)
    c_enc, c_dec = k.contexts(is_client=True)
    d_enc, d_dec = k.contexts(is_client=False)
    p = os.urandom(4096)
    c2d, d2c = c_enc.update(p), d_enc.update(p)
    assert c2d != d2c
    assert xor(c2d, d2c) != bytes(len(p))
    assert d_dec.update(c2d) == p and c_dec.update(d2c) == p
    assert c2d == xor(p, ref_keystream(k.key_c2d, k.iv_c2d, len(p)))
    assert k.key_d2c is not None and k.iv_d2c is not None
    assert d2c == xor(p, ref_keystream(k.key_d2c, k.iv_d2c, len(p)))


def test_env_contract() -> None:
    k, iv = "A" * 43 + "=", "B" * 22 + "=="
    assert CtrKeys.from_env({}) is None
    assert not CtrKeys.from_env({"RV_AES": k, "RV_IV": iv}).twin  # type: ignore[union-attr]
    t = CtrKeys.from_env({"RV_AES_C2D": k, "RV_IV_C2D": iv, "RV_AES_D2C": k, "RV_IV_D2C": iv})
    assert t is not None and t.twin
    with pytest.raises(ConfigError, match="RV_IV"):
        CtrKeys.from_env({"RV_AES": k})
    with pytest.raises(ConfigError, match="RV_AES_D2C and RV_IV_D2C"):
        CtrKeys.from_env({"RV_AES": k, "RV_IV": iv, "RV_AES_D2C": k})
    with pytest.raises(ConfigError, match="32 bytes"):
        CtrKeys.from_env({"RV_AES": "AAAA", "RV_IV": iv})
    with pytest.raises(ProtocolError):
        ctr_context(bytes(16), bytes(16))
    assert "key" not in repr(t).lower().replace("ctrkeys", "")


def _pump_all(impl: str, data: bytes, ctx: object, bufsize: int) -> bytes:
    """Push ``data`` through a CopyPump between two socketpairs, return what came out."""
    x = _compat.speedups("xfer", impl)
    a_out, a_in = socket.socketpair()
    b_in, b_out = socket.socketpair()
    for s in (a_in, b_in):
        s.setblocking(False)
    pump = x.CopyPump(a_in, b_in, ctx, bufsize=bufsize)
    got = bytearray()
    b_out.setblocking(False)
    sent = 0
    a_out.setblocking(False)
    closed = False
    while True:
        if sent < len(data):
            try:
                sent += a_out.send(data[sent : sent + 50_000])
            except BlockingIOError:
                pass
        elif not closed:
            a_out.shutdown(socket.SHUT_WR)
            closed = True
        code = pump.step()
        try:
            while True:
                d = b_out.recv(1 << 20)
                if not d:
                    break
                got += d
        except BlockingIOError:
            pass
        if code == x.DONE:
            b_in.shutdown(socket.SHUT_WR)
            b_out.setblocking(True)
            while True:
                d = b_out.recv(1 << 20)
                if not d:
                    break
                got += d
            break
    for s in (a_out, a_in, b_in, b_out):
        s.close()
    assert pump.transferred == len(data)
    if len(data) > 1_000_000:
        assert len(pump.buf) == bufsize  # grew once the flow turned out to be bulk
    return bytes(got)


@pytest.mark.parametrize("bufsize", [1, 17, 4096, 262144])
def test_pump_ctr_matches_reference(impl: str, bufsize: int) -> None:
    key = os.urandom(32)
    iv = bytes.fromhex("0f0e0d0c0b0a09080706050403fffffe")
    data = os.urandom(300_001 if bufsize > 16 else 5_000)
    got = _pump_all(impl, data, ctr_context(key, iv), bufsize)
    assert got == xor(data, ref_keystream(key, iv, len(data)))


def test_pump_clear_is_identity(impl: str) -> None:
    data = os.urandom(200_000)
    assert _pump_all(impl, data, None, 65536) == data


def test_pump_buffers_start_small_and_grow_for_bulk(impl: str) -> None:
    """An idle or interactive connection holds 16 KiB per direction, a bulk one 256 KiB."""
    x = _compat.speedups("xfer", impl)
    a, b = socket.socketpair()
    p = x.CopyPump(a, b, None)
    assert len(p.buf) == x.INITIAL_BUFSIZE == 16 * 1024
    a.close()
    b.close()
    data = os.urandom(2_000_000)
    key, iv = os.urandom(32), os.urandom(16)
    got = _pump_all(impl, data, ctr_context(key, iv), x.DEFAULT_BUFSIZE)
    assert got == xor(data, ref_keystream(key, iv, len(data)))
