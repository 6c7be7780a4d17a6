"""ESCR relay authentication, sans-IO: byte formats, both roles, refusals (no sockets)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from noports.crypto import escr, rsa
from noports.crypto.atkeys import AtKeys

SID = "0f5b3a2e-8c1d-4e5f-9a6b-7c8d9e0f1a2b"
KEY = base64.b64encode(bytes(range(32))).decode()
IV = bytes(range(100, 116))


@pytest.fixture
def alice(keys: Callable[[str], AtKeys]) -> AtKeys:
    return keys("@escr_alice")


@pytest.fixture
def bob(keys: Callable[[str], AtKeys]) -> AtKeys:
    return keys("@escr_bob")


def ctr_pkcs7_independent(key: bytes, iv: bytes, plain: bytes) -> bytes:
    """AES-256-CTR by hand (ECB over big-endian counter blocks) after PKCS#7 padding."""
    pad = 16 - len(plain) % 16
    data = plain + bytes([pad]) * pad
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    ctr = int.from_bytes(iv, "big")
    out = bytearray()
    for i in range(0, len(data), 16):
        ks = ecb.update(((ctr + i // 16) % (1 << 128)).to_bytes(16, "big"))
        out += bytes(x ^ y for x, y in zip(data[i : i + 16], ks, strict=False))
    return bytes(out)


def test_response_is_byte_exact_to_the_official_layout(alice: AtKeys) -> None:
    challenge = "Q" * 43 + "="
    uri = escr.apsk_uri("@escr_alice", "e1d2")
    assert uri == "public:_apsk.e1d2.a.__e@escr_alice"
    line = escr.response_line(SID, challenge, side_a=True, aes_key_b64=KEY, signing_uri=uri,
                              private_key=alice.pkam_private, iv=IV)
    assert b"\n" not in line and b"\r" not in line
    sid, payload64 = line.decode().split(":")
    assert sid == SID
    outer = base64.b64decode(payload64)
    e64 = json.loads(outer)["e"]
    # the outer JSON, exactly: {"iv":"<b64 iv>","e":"<b64 ciphertext>"}
    assert outer == (f'{{"iv":"{base64.b64encode(IV).decode()}","e":"{e64}"}}').encode()
    envelope64 = base64.b64decode(e64)
    sig = rsa.sign(alice.pkam_private, (
        f'{{"sid":"{SID}","c":"{challenge}","side":"a"}}').encode())
    envelope = (f'{{"p":{{"sid":"{SID}","c":"{challenge}","side":"a"}},"s":"{sig}",'
                f'"ha":"sha256","sa":"rsa2048","sk":"{uri}"}}').encode()
    assert envelope64 == ctr_pkcs7_independent(bytes(range(32)), IV,
                                               base64.b64encode(envelope))


def test_default_uri_is_primary() -> None:
    assert escr.apsk_uri("alice") == "public:_apsk.primary.a.__e@alice"
    assert escr.uri_atsign("public:_apsk.x.a.__e@Alice") == "@alice"
    assert escr.valid_key_uri("public:_apsk.x.a.__e@alice")
    assert not escr.valid_key_uri("public:publickey@alice")
    assert not escr.valid_key_uri("public:dsk.x.__wa@alice")


def run_pair(prover: escr.EscrProver, verifier: escr.EscrVerifier,
             atsigns: tuple[str, str], key: rsa.PublicKey | None,
             side: str | None = None, extra: bytes = b"") -> escr.Event:
    """Drive both machines against each other in memory; the verifier's final event."""
    ev = prover.feed(verifier.greeting)
    assert ev.step is escr.Step.SEND and ev.data.endswith(b"\n") and ev.data.count(b"\n") == 1
    got = verifier.feed(ev.data + extra)
    assert got.step is escr.Step.LINE and got.session_id == prover.session_id
    got = verifier.claim(KEY, atsigns, side)
    if got.step is escr.Step.FAILED:
        return got
    assert got.step is escr.Step.LOOKUP
    assert got.uri.endswith(atsigns[0 if prover.side_a else 1])
    return verifier.verify(key)


def prover_for(keys: AtKeys, side_a: bool, sid: str = SID, aes_key: str = KEY,
               uri: str | None = None) -> escr.EscrProver:
    return escr.EscrProver(sid, aes_key, uri or escr.apsk_uri(keys.atsign), keys.pkam_private,
                           side_a)


def test_both_roles_agree_and_keep_following_bytes(alice: AtKeys, bob: AtKeys) -> None:
    for who, side_a, side in ((alice, True, "a"), (bob, False, "b")):
        p, v = prover_for(who, side_a), escr.EscrVerifier()
        assert len(v.greeting) == 45 and v.greeting.endswith(b"\n")
        ev = run_pair(p, v, (alice.atsign, bob.atsign), who.pkam_public, side, b"SSH-2.0-x\r\n")
        assert ev.step is escr.Step.OK and ev.data == b"SSH-2.0-x\r\n"
        assert v.side == side
        done = p.feed(escr.OK_LINE + b"banner")
        assert done.step is escr.Step.OK and done.data == b"banner"


def test_prover_byte_by_byte_and_refusal(alice: AtKeys) -> None:
    p = prover_for(alice, True)
    g = escr.EscrVerifier().greeting
    for b in g[:-1]:
        assert p.feed(bytes([b])).step is escr.Step.NEED_MORE
    assert p.feed(g[-1:]).step is escr.Step.SEND
    for b in escr.FAIL_LINE[:-1]:
        assert p.feed(bytes([b])).step is escr.Step.NEED_MORE
    ev = p.feed(b"\n")
    assert ev.step is escr.Step.FAILED and ev.reason == "Socket auth failed"
    assert prover_for(alice, True).eof().reason == "eof"


def test_replayed_response_is_refused_by_a_fresh_verifier(alice: AtKeys, bob: AtKeys) -> None:
    p, v1 = prover_for(alice, True), escr.EscrVerifier()
    line = p.feed(v1.greeting).data
    v1.feed(line)
    v1.claim(KEY, (alice.atsign, bob.atsign), "a")
    assert v1.verify(alice.pkam_public).step is escr.Step.OK
    v2 = escr.EscrVerifier()  # the next socket: a new challenge
    assert v2.challenge != v1.challenge
    assert v2.feed(line).step is escr.Step.LINE
    ev = v2.claim(KEY, (alice.atsign, bob.atsign), "a")
    assert ev.step is escr.Step.FAILED and ev.reason == "challenge"


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("wrong_side_port", "side"),
        ("signer_not_side", "signer"),
        ("wrong_signing_key", "bad_sig"),
        ("no_key", "no_key"),
        ("other_aes_key", "decrypt"),
        ("old_uri_namespace", "key_uri"),
    ],
)
def test_refusals(alice: AtKeys, bob: AtKeys, case: str, reason: str) -> None:
    atsigns = (alice.atsign, bob.atsign)
    side = "a"
    key: rsa.PublicKey | None = alice.pkam_public
    p = prover_for(alice, True)
    if case == "wrong_side_port":
        side = "b"
    elif case == "signer_not_side":  # bob signs, claiming side a
        p, key = prover_for(bob, True), bob.pkam_public
    elif case == "wrong_signing_key":
        key = alice.encrypt_public
    elif case == "no_key":
        key = None
    elif case == "other_aes_key":
        p = prover_for(alice, True, aes_key=base64.b64encode(bytes(32)).decode())
    elif case == "old_uri_namespace":
        p = prover_for(alice, True, uri="public:dsk.primary.__wa" + alice.atsign)
    ev = run_pair(p, escr.EscrVerifier(), atsigns, key, side)
    assert ev.step is escr.Step.FAILED and ev.reason == reason


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"no-colon-here\n", "malformed"),
        (b"a:b:c\n", "malformed"),
        (b"sid:\x01\x02\n", "malformed"),
        (b"sid:\xff\n", "malformed"),
        (b"x" * 5000, "oversize"),
    ],
)
def test_malformed_lines(line: bytes, reason: str) -> None:
    v = escr.EscrVerifier()
    ev = v.feed(line)
    assert ev.step is escr.Step.FAILED and ev.reason == reason
    assert v.want() == 0


def test_garbage_payloads_fail_in_claim(alice: AtKeys) -> None:
    for payload in (b"!!!", base64.b64encode(b"[1]"), base64.b64encode(b"{" * 3000),
                    base64.b64encode(b'{"iv":"AAAA","e":"AAAA"}')):
        v = escr.EscrVerifier()
        assert v.feed(SID.encode() + b":" + payload + b"\n").step is escr.Step.LINE
        ev = v.claim(KEY, (alice.atsign, "@x"), None)
        assert ev.step is escr.Step.FAILED and ev.reason in ("malformed", "decrypt")
    v = escr.EscrVerifier()
    v.feed(SID.encode() + b":AAAA\n")
    assert v.claim(None, (alice.atsign, "@x")).reason == "session"


def test_verifier_never_reads_past_its_cap() -> None:
    v = escr.EscrVerifier(max_line=100)
    assert v.want() == 100
    v.feed(b"x" * 60)
    assert v.want() == 40
    assert v.feed(b"x" * 40).reason == "oversize"
    assert escr.EscrVerifier().eof().reason == "eof"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzz_any_bytes_give_a_declared_event(data: bytes) -> None:
    v = escr.EscrVerifier(max_line=512)
    ev = v.feed(data)
    if ev.step is escr.Step.LINE:
        ev = v.claim(KEY, ("@a", "@b"))
    assert ev.step in (escr.Step.NEED_MORE, escr.Step.FAILED)
