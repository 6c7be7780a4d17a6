"""The sans-IO auth line state machine and the pre-auth gate, without sockets."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from noports.crypto.atkeys import AtKeys
from noports.crypto.envelope import relay_auth_line
from noports.errors import ConfigError
from noports.relay import AuthLine, Outcome, PreAuthGate, RelayLimits, new_rvd_nonce

SID, CN, RVD = "sid-1", "client-nonce", "rvd-nonce-1"


@pytest.fixture
def a(keys: Callable[[str], AtKeys]) -> AtKeys:
    return keys("@relay_a")


def good(a: AtKeys, sid: str = SID, cn: str = CN, rvd: str = RVD) -> bytes:
    return relay_auth_line(sid, cn, rvd, a.encrypt_private).encode() + b"\n"


def machine(a: AtKeys, max_line: int = 4096) -> AuthLine:
    return AuthLine(SID, CN, RVD, a.encrypt_public, max_line)


def test_valid_line_in_one_piece_keeps_following_bytes(a: AtKeys) -> None:
    m = machine(a)
    v = m.feed(good(a) + b"SSH-2.0-banner\r\n")
    assert v.outcome is Outcome.OK
    assert v.rest == b"SSH-2.0-banner\r\n"
    assert m.want() == 0
    assert m.feed(b"more").outcome is Outcome.OK  # final: later feeds change nothing


def test_valid_line_byte_by_byte(a: AtKeys) -> None:
    m = machine(a)
    data = good(a)
    for i, byte in enumerate(data[:-1]):
        assert m.feed(bytes([byte])).outcome is Outcome.NEED_MORE
        assert m.want() == 4096 - (i + 1)
    v = m.feed(data[-1:])
    assert v.outcome is Outcome.OK and v.rest == b""


@pytest.mark.parametrize(
    ("variant", "reason"),
    [
        ("wrong_key", "bad_sig"),
        ("other_session", "nonce"),
        ("other_session_same_nonce", "bad_sig"),
        ("other_client_nonce", "bad_sig"),
        ("garbage", "malformed"),
        ("not_object", "malformed"),
        ("deep_nesting", "malformed"),
        ("bad_algo", "malformed"),
        ("bad_base64", "bad_sig"),
        ("invalid_utf8", "malformed"),
    ],
)
def test_refusals(a: AtKeys, keys: Callable[[str], AtKeys], variant: str, reason: str) -> None:
    other = keys("@relay_b")
    lines = {
        "wrong_key": good(other),
        "other_session": good(a, sid="sid-2", rvd="rvd-nonce-2"),
        "other_session_same_nonce": good(a, sid="sid-2"),
        "other_client_nonce": good(a, cn="another"),
        "garbage": b"\x00\xffnot json at all\n",
        "not_object": b'["payload"]\n',
        "deep_nesting": b"[" * 3000 + b"\n",
        "bad_algo": good(a).replace(b'"signingAlgo":"rsa2048"', b'"signingAlgo":"rot13"'),
        "bad_base64": good(a).replace(b'"signature":"', b'"signature":"!!'),
        "invalid_utf8": b'{"payload":{"rvdNonce":"\xff"}}\n',
    }
    v = machine(a).feed(lines[variant])
    assert v.outcome is Outcome.FAILED
    assert v.reason == reason


def test_oversize_is_cut_at_the_cap_including_newline(a: AtKeys) -> None:
    m = machine(a, max_line=100)
    assert m.feed(b"x" * 99).outcome is Outcome.NEED_MORE
    assert m.want() == 1
    assert m.feed(b"x").reason == "oversize"  # 100 bytes and still no newline
    m2 = machine(a, max_line=100)
    v = m2.feed(b"x" * 99 + b"\n")  # exactly at the cap with the newline: parsed, not cut
    assert v.outcome is Outcome.FAILED and v.reason == "malformed"


def test_real_line_longer_than_cap_is_refused(a: AtKeys) -> None:
    line = good(a)
    m = machine(a, max_line=len(line) - 1)
    v = m.feed(line)
    assert v.outcome is Outcome.FAILED and v.reason == "oversize"


def test_eof_before_newline(a: AtKeys) -> None:
    m = machine(a)
    m.feed(good(a)[:50])
    assert m.eof().reason == "eof"
    done = machine(a)
    done.feed(good(a))
    assert done.eof().outcome is Outcome.OK  # a decided verdict is final


def test_rvd_nonce_is_random_and_url_safe() -> None:
    nonces = {new_rvd_nonce() for _ in range(100)}
    assert len(nonces) == 100
    for n in nonces:
        assert len(n) >= 22  # >= 128 bits of base64 text
        assert n.replace("-", "").replace("_", "").isalnum()


class _Holder:
    """A pre-auth socket stand-in: ``shed`` releases its slot, as Inbound does."""

    def __init__(self, gate: PreAuthGate, ip: str) -> None:
        self.gate, self.ip, self.was_shed = gate, ip, False
        gate.admit(ip, self)

    def shed(self) -> None:
        self.was_shed = True
        self.gate.release(self.ip, self)


def test_gate_sheds_older_sockets_never_the_newcomer() -> None:
    gate = PreAuthGate(max_total=3, max_per_ip=2)
    a1, a2 = _Holder(gate, "10.0.0.1"), _Holder(gate, "10.0.0.1")
    a3 = _Holder(gate, "10.0.0.1")  # per-IP cap: that address's oldest goes
    assert a1.was_shed and not a2.was_shed and gate.count("10.0.0.1") == 2
    b1 = _Holder(gate, "10.0.0.2")
    c1 = _Holder(gate, "10.0.0.3")  # global cap: the biggest source loses one
    assert not b1.was_shed and not c1.was_shed
    assert a2.was_shed != a3.was_shed and gate.total == 3 and gate.shed == 2
    for h in (a2, a3, b1, c1):
        if not h.was_shed:
            gate.release(h.ip, h)
    assert gate.total == 0 and gate.count("10.0.0.1") == 0
    with pytest.raises(RuntimeError):
        gate.release("10.0.0.1", b1)


def test_limits_validate() -> None:
    with pytest.raises(ConfigError):
        RelayLimits(auth_timeout=0)
    with pytest.raises(ConfigError):
        RelayLimits(max_pending_per_side=0)


def test_verified_lines_are_remembered_per_side(a: AtKeys, keys: Callable[[str], AtKeys]) -> None:
    """A repeated identical line skips RSA (multi mode reuses it); anything else is checked."""
    seen: set[bytes] = set()
    line = good(a)
    assert AuthLine(SID, CN, RVD, a.encrypt_public, verified=seen).feed(line).outcome is Outcome.OK
    assert len(seen) == 1
    # Same set, deliberately wrong key: only a remembered line can pass without RSA.
    wrong = keys("@relay_b").encrypt_public
    assert AuthLine(SID, CN, RVD, wrong, verified=seen).feed(line).outcome is Outcome.OK
    respaced = line.replace(b'{"payload":', b'{ "payload":')
    v = AuthLine(SID, CN, RVD, wrong, verified=seen).feed(respaced)
    assert v.outcome is Outcome.FAILED and v.reason == "bad_sig"
    bad = AuthLine(SID, CN, RVD, a.encrypt_public, verified=seen).feed(good(keys("@relay_b")))
    assert bad.outcome is Outcome.FAILED and len(seen) == 1  # failures are never stored


_FUZZ = {"deadline": None, "suppress_health_check": [HealthCheck.function_scoped_fixture]}


@settings(max_examples=150, **_FUZZ)
@given(cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=8),
       tail=st.binary(max_size=300))
def test_any_split_of_a_valid_line_verifies_and_keeps_the_tail(
    a: AtKeys, cuts: list[int], tail: bytes
) -> None:
    line = good(a)
    data = line + tail
    m = machine(a)
    start = 0
    for cut in sorted({c % (len(data) + 1) for c in cuts} | {len(data)}):
        if cut <= start:
            continue
        v = m.feed(data[start:cut])
        start = cut
        if v.outcome is not Outcome.NEED_MORE:
            break
    # The verdict comes with the chunk holding the newline; the rest of that chunk is data.
    assert v.outcome is Outcome.OK
    assert v.rest == data[len(line):start]


@settings(max_examples=300, **_FUZZ)
@given(junk=st.binary(max_size=6000))
def test_arbitrary_bytes_never_raise_or_pass(a: AtKeys, junk: bytes) -> None:
    m = machine(a)
    v = m.feed(junk)
    assert v.outcome is not Outcome.OK
    if v.outcome is Outcome.NEED_MORE:
        assert b"\n" not in junk and len(junk) < 4096
        assert m.eof().outcome is Outcome.FAILED
