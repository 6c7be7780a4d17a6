"""The data plane on cryptography releases without in-place AEAD (< 47) or exact-size CTR
``update_into`` (< 42), as Debian 12 (38) and 13 (43) ship them.

Here the fallbacks are forced on whatever cryptography is installed and checked against the
in-place path: same bytes on the wire, same failures, and the whole demo data path (relay,
both tunnel ends, both transfer loops) still checks its sha256. CI also runs the data-plane
tests on the floor release itself (.ci/run, issue 7 block).
"""

from __future__ import annotations

import os

import pytest

from noports.cli import demo
from noports.crypto import records as r
from noports.crypto import stream as s
from noports.errors import IntegrityError


@pytest.mark.parametrize("suite", [r.SUITE_AES_256_GCM, r.SUITE_CHACHA20_POLY1305])
def test_allocating_aead_writes_the_same_records(suite: int) -> None:
    secret, sid = os.urandom(r.SECRET_LEN), "sess"
    key = r.derive_key(secret, sid, r.C2D, 0, suite)
    fast = r.RecordSealer(secret, sid, r.C2D, suite=suite)
    slow = r.RecordSealer(secret, sid, r.C2D, suite=suite)
    slow.aead = r._aead(suite, key, into=False)
    assert isinstance(slow.aead, r.AllocatingAEAD)
    data = os.urandom(3 * r.MAX_PLAINTEXT + 123)
    wire = slow.seal(data) + slow.close()
    if r.AEAD_INTO:
        assert wire == fast.seal(data) + fast.close()
    opener = r.RecordOpener(secret, sid, r.C2D)
    opener.take_preamble(wire[: r.PREAMBLE_LEN])
    opener.aead = r._aead(suite, key, into=False)
    assert b"".join(opener.receive_data(wire[r.PREAMBLE_LEN :])) == data
    assert opener.closed


def test_allocating_aead_rejects_a_flipped_bit() -> None:
    secret, sid = os.urandom(r.SECRET_LEN), "sess"
    suite = r.SUITE_AES_256_GCM
    key = r.derive_key(secret, sid, r.C2D, 0, suite)
    sealer = r.RecordSealer(secret, sid, r.C2D, suite=suite)
    wire = bytearray(sealer.seal(b"attack at dawn"))
    wire[-1] ^= 1
    opener = r.RecordOpener(secret, sid, r.C2D)
    opener.take_preamble(wire[: r.PREAMBLE_LEN])
    opener.aead = r._aead(suite, key, into=False)
    frame = memoryview(wire)[r.PREAMBLE_LEN :]
    with pytest.raises(IntegrityError):
        opener.open_into(frame, bytearray(64))
    assert opener.failed


def test_allocating_ctr_is_the_same_keystream() -> None:
    key, iv = os.urandom(s.KEY_LEN), os.urandom(s.IV_LEN)
    data = os.urandom(100_001)
    ref = s.Cipher(s.algorithms.AES(key), s.modes.CTR(iv)).encryptor().update(data)
    slow = s.AllocatingCTR(s.Cipher(s.algorithms.AES(key), s.modes.CTR(iv)).encryptor())
    out = bytearray(len(data))
    pos = 0
    for n in (1, 15, 16, 4096, 65536):  # odd chunkings keep one continuous keystream
        pos += slow.update_into(memoryview(data)[pos : pos + n], memoryview(out)[pos : pos + n])
    pos += slow.update_into(memoryview(data)[pos:], memoryview(out)[pos:])
    assert pos == len(data) and bytes(out) == ref


@pytest.mark.parametrize("mode", ["aead", "twin", "legacy"])
def test_demo_on_the_allocating_paths(
    mode: str, impl: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(r, "AEAD_INTO", False)
    monkeypatch.setattr(s, "CTR_INTO", False)
    rc = demo.main(["--mode", mode, "--size", "4M", "--pings", "20", "--impl", impl])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "sha256 OK" in out.out
