"""The relay's per-session auth-line check and its PKCS#1 shortcut, against the full path.

``RelayLineCheck.verify`` skips the JSON parse for a line spelled exactly as the relay would
spell it, and ``check_pkcs1_sha256`` compares a recovered DigestInfo instead of calling
``verify``. Both must accept and refuse exactly what the full path (``verify_relay_auth_line``
with cryptography's ``verify``) does: every case here runs both and compares, including
hostile lines and hand-made signatures with broken padding.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from noports.crypto import envelope
from noports.crypto.atkeys import AtKeys
from noports.crypto.envelope import (
    SHA256_DIGEST_INFO,
    RelayLineCheck,
    check_pkcs1_sha256,
    relay_auth_line,
    relay_expected_bytes,
    sha256_digest_info,
    verify_relay_auth_line,
)
from noports.errors import ProtocolError, SignatureError

SID, CN, RVD = "sid-7", "client-nonce-7", "rvd-nonce-7"
_FUZZ = {"deadline": None, "suppress_health_check": [HealthCheck.function_scoped_fixture]}


@pytest.fixture
def a(keys: Callable[[str], AtKeys]) -> AtKeys:
    return keys("@linecheck_a")


def _line(a: AtKeys, sid: str = SID, cn: str = CN, rvd: str = RVD) -> bytes:
    return relay_auth_line(sid, cn, rvd, a.encrypt_private).encode()


def _outcome(fn: Callable[[], None]) -> str:
    try:
        fn()
    except SignatureError as exc:
        return "SignatureError:" + ("nonce" if "rvdNonce" in str(exc) else "sig")
    except ProtocolError:
        return "ProtocolError"
    except Exception as exc:  # noqa: BLE001 - the relay maps any other error to "malformed"
        return "other:" + type(exc).__name__
    return "ok"


def _full(line: bytes, key) -> str:
    """The reference: the full parse and cryptography's own verify."""

    def run() -> None:
        env = json.loads(line)
        if not isinstance(env, dict):
            raise ProtocolError("not an object")
        envelope.parse_envelope(env)
        if env["payload"].get("rvdNonce") != RVD:
            raise SignatureError("rvdNonce does not match this session")
        if env["hashingAlgo"] != "sha256" or env["signingAlgo"] != "rsa2048":
            raise SignatureError("algorithms")
        try:
            sig = base64.b64decode(env["signature"], validate=True)
        except ValueError as exc:
            raise SignatureError("base64") from exc
        try:
            key.verify(sig, relay_expected_bytes(SID, CN, RVD), padding.PKCS1v15(),
                       hashes.SHA256())
        except InvalidSignature as exc:
            raise SignatureError("signature does not verify") from exc

    out = _outcome(run)
    return "ProtocolError" if out.startswith("other:") else out


def _both(line: bytes, key) -> tuple[str, str, str]:
    check = RelayLineCheck(SID, CN, RVD)
    fast = _outcome(lambda: check.verify(line, key))
    slow = _outcome(lambda: verify_relay_auth_line(line, check.expected, RVD, key))
    return fast, slow, _full(line, key)


def _agree(line: bytes, key) -> str:
    fast, slow, full = _both(line, key)
    norm = {o: ("ProtocolError" if o.startswith("other:") else o) for o in (fast, slow)}
    assert norm[fast] == norm[slow] == full, (fast, slow, full, line[:120])
    return full


def test_canonical_line_takes_the_fast_path(
    a: AtKeys, keys: Callable[[str], AtKeys], monkeypatch: pytest.MonkeyPatch
) -> None:
    line = _line(a)
    check = RelayLineCheck(SID, CN, RVD)

    def no_parse(*_a: object, **_k: object) -> None:
        raise AssertionError("the canonical line must not need the full parse")

    monkeypatch.setattr(envelope, "verify_relay_auth_line", no_parse)
    check.verify(line, a.encrypt_public)  # passes without parsing
    with pytest.raises(SignatureError):  # and refuses another key without parsing either
        check.verify(line, keys("@linecheck_other").encrypt_public)


@pytest.mark.parametrize(
    "variant",
    ["good", "spaced", "reordered", "escaped_sig", "extra_field", "dup_payload", "nonce",
     "bad_b64", "noncanonical_b64", "short_sig", "empty_sig", "sha512", "unicode_escape",
     "trailing_space", "not_json", "truncated", "head_only", "payload_reordered"],
)
def test_variants_agree_with_the_full_path(a: AtKeys, variant: str) -> None:
    line = _line(a)
    env = json.loads(line)
    sig = env["signature"]
    lines = {
        "good": line,
        "spaced": json.dumps(env).encode(),
        "reordered": json.dumps({k: env[k] for k in reversed(list(env))},
                                separators=(",", ":")).encode(),
        "escaped_sig": line.replace(b'"signature":"' + sig[:1].encode(),
                                    b'"signature":"\\u%04x' % ord(sig[0])),
        "extra_field": line[:-1] + b',"x":1}',
        "dup_payload": line[:-1] + b',"payload":{"rvdNonce":"evil"}}',
        "nonce": _line(a, rvd="another"),
        "bad_b64": line.replace(b'"signature":"', b'"signature":"!!'),
        "noncanonical_b64": line.replace(sig.encode(), sig.encode()[:-1]),  # padding cut
        "short_sig": line.replace(sig.encode(), base64.b64encode(base64.b64decode(sig)[1:])),
        "empty_sig": line.replace(sig.encode(), b""),
        "sha512": line.replace(b'"hashingAlgo":"sha256"', b'"hashingAlgo":"sha512"'),
        "unicode_escape": line.replace(b'"sessionId":"sid', b'"sessionId":"\\u0073id'),
        "trailing_space": line + b" ",
        "not_json": line[:-1],
        "truncated": line[: len(line) // 2],
        "head_only": line[: line.index(b'"signature":"') + 13]
        + b'","hashingAlgo":"sha256","signingAlgo":"rsa2048"}',
        "payload_reordered": line.replace(
            b'{"sessionId":"%s","clientNonce":"%s"' % (SID.encode(), CN.encode()),
            b'{"clientNonce":"%s","sessionId":"%s"' % (CN.encode(), SID.encode())),
    }
    got = _agree(lines[variant], a.encrypt_public)
    # the signature covers the relay's own encoding: any spelling of the same payload passes
    passing = {"good", "spaced", "reordered", "escaped_sig", "extra_field", "unicode_escape",
               "trailing_space", "payload_reordered"}
    assert (got == "ok") == (variant in passing), (variant, got)


@settings(max_examples=400, **_FUZZ)
@given(pos=st.integers(min_value=0, max_value=10_000), byte=st.integers(0, 255),
       op=st.sampled_from(["set", "insert", "delete"]))
def test_mutated_lines_agree_with_the_full_path(a: AtKeys, pos: int, byte: int, op: str) -> None:
    line = bytearray(_line(a))
    i = pos % len(line)
    if op == "set":
        line[i] = byte
    elif op == "insert":
        line.insert(i, byte)
    else:
        del line[i]
    _agree(bytes(line), a.encrypt_public)


@settings(max_examples=100, **_FUZZ)
@given(sid=st.text(max_size=30), cn=st.text(max_size=30), rvd=st.text(min_size=1, max_size=30))
def test_any_session_strings_round_trip(a: AtKeys, sid: str, cn: str, rvd: str) -> None:
    """Quotes, backslashes, control and non-ASCII characters in the session's own strings."""
    try:
        check = RelayLineCheck(sid, cn, rvd)
    except UnicodeEncodeError:  # lone surrogates: no session is ever made from those
        return
    line = relay_auth_line(sid, cn, rvd, a.encrypt_private).encode()
    check.verify(line, a.encrypt_public)
    verify_relay_auth_line(line, check.expected, rvd, a.encrypt_public)


# -- the PKCS#1 shortcut --------------------------------------------------------------------


def _raw_sign(key, em: bytes) -> bytes:
    """A signature whose public operation gives exactly ``em`` (test tooling only)."""
    nums = key.private_numbers()
    n = nums.public_numbers.n
    size = (n.bit_length() + 7) // 8
    s = pow(int.from_bytes(em, "big"), nums.d, n)
    return s.to_bytes(size, "big")


def _em(body: bytes, size: int = 256, *, lead: bytes = b"\x00\x01", fill: int = 0xFF,
        sep: bytes = b"\x00") -> bytes:
    ps = bytes([fill]) * (size - len(lead) - len(sep) - len(body))
    return lead + ps + sep + body


def _verify_ok(key, sig: bytes, data: bytes) -> bool:
    try:
        key.verify(sig, data, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def _shortcut_ok(key, sig: bytes, data: bytes) -> bool:
    try:
        check_pkcs1_sha256(key, sig, sha256_digest_info(data))
    except SignatureError:
        return False
    return True


def test_pkcs1_shortcut_matches_verify_on_crafted_signatures(a: AtKeys) -> None:
    priv, pub = a.encrypt_private, a.encrypt_public
    data = b"the relay's own bytes"
    digest = hashlib.sha256(data).digest()
    info = SHA256_DIGEST_INFO + digest
    no_null = bytes.fromhex("302f300b0609608648016503040201" "0420") + digest
    n = pub.public_numbers().n
    good = _raw_sign(priv, _em(info))
    cases = {
        "good": good,
        "real": priv.sign(data, padding.PKCS1v15(), hashes.SHA256()),
        "digest_info_without_null": _raw_sign(priv, _em(no_null)),
        "type_2_padding": _raw_sign(priv, _em(info, lead=b"\x00\x02")),
        "short_ff_run": _raw_sign(priv, b"\x00\x01" + b"\xff" * 7 + b"\x00" + info
                                  + b"\x00" * (256 - 10 - len(info) - 7)),
        "no_separator": _raw_sign(priv, _em(info, sep=b"\xff")),
        "fill_not_ff": _raw_sign(priv, _em(info, fill=0xFE)),
        "trailing_garbage": _raw_sign(priv, _em(info + b"\x00")),
        "bare_digest": _raw_sign(priv, _em(digest)),
        "sha512_info": _raw_sign(priv, _em(bytes.fromhex("3051300d060960864801650304020305000440")
                                           + hashlib.sha512(data).digest())),
        "zero": bytes(256),
        "modulus": n.to_bytes(256, "big"),
        "above_modulus": (n + 1).to_bytes(256, "big"),
        "all_ff": b"\xff" * 256,
        "one_longer": b"\x00" + good,
        "one_shorter": good[1:],
        "empty": b"",
        "flipped": bytes([good[0] ^ 1]) + good[1:],
    }
    for name, sig in cases.items():
        assert _shortcut_ok(pub, sig, data) == _verify_ok(pub, sig, data), name
    assert _shortcut_ok(pub, good, data) and _shortcut_ok(pub, cases["real"], data)
    assert not _shortcut_ok(pub, cases["digest_info_without_null"], data)


def test_pkcs1_shortcut_refuses_a_signature_stripped_of_its_leading_zero(a: AtKeys) -> None:
    """The recover call alone would accept a signature one byte short (its leading zero byte
    dropped); verify refuses it, and so must the shortcut."""
    priv, pub = a.encrypt_private, a.encrypt_public
    for i in range(5000):
        data = b"message %d" % i
        sig = priv.sign(data, padding.PKCS1v15(), hashes.SHA256())
        if sig[0] == 0:
            break
    else:  # pragma: no cover - about 1 in 250 signatures starts with a zero byte
        pytest.skip("no signature with a leading zero byte found")
    assert _shortcut_ok(pub, sig, data) and _verify_ok(pub, sig, data)
    assert not _shortcut_ok(pub, sig[1:], data)
    assert not _verify_ok(pub, sig[1:], data)


@settings(max_examples=60, **_FUZZ)
@given(sig=st.binary(min_size=250, max_size=260))
def test_pkcs1_shortcut_matches_verify_on_random_bytes(a: AtKeys, sig: bytes) -> None:
    data = b"x"
    assert _shortcut_ok(a.encrypt_public, sig, data) == _verify_ok(a.encrypt_public, sig, data)


# -- ESCR: the cheaper steps give the answers of the plain ones ----------------------------


def _plain_split(line: bytes) -> object:
    try:
        text = line.decode("ascii").strip()
    except UnicodeDecodeError:
        return "malformed"
    if not text.isprintable():
        return "malformed"
    parts = text.split(":")
    if len(parts) != 2 or not parts[0]:
        return "malformed"
    return parts[0], parts[1]


def _escr_outcome(fn: Callable[[], object]) -> object:
    from noports.crypto.escr import EscrError

    try:
        return fn()
    except EscrError as exc:
        return exc.reason


@settings(max_examples=400, deadline=None)
@given(line=st.one_of(
    st.binary(max_size=60),
    st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=60).map(str.encode),
    st.from_regex(rb"\s{0,2}[ -~]{1,20}:[ -~]{0,20}\s{0,2}", fullmatch=True),
))
def test_escr_split_response_matches_the_plain_checks(line: bytes) -> None:
    from noports.crypto.escr import split_response

    assert _escr_outcome(lambda: split_response(line)) == _plain_split(line)


@settings(max_examples=400, deadline=None)
@given(text=st.one_of(
    st.text(alphabet="ABCxyz019+/= \n\u00e9", max_size=14),
    st.binary(max_size=12).map(lambda b: base64.b64encode(b).decode()),
), length=st.sampled_from([None, 4, 16]))
def test_escr_base64_matches_b64d(text: str, length: int | None) -> None:
    from noports.crypto.encoding import b64d
    from noports.crypto.escr import _b64

    def plain() -> object:
        try:
            return b64d(text, what="x", length=length)
        except ProtocolError:
            return "malformed"

    assert _escr_outcome(lambda: _b64(text, "x", length)) == plain()


@settings(max_examples=300, deadline=None)
@given(raw=st.one_of(
    st.binary(max_size=20),
    st.binary(max_size=20).map(lambda b: b"{" + b),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3).map(
        lambda d: json.dumps(d, ensure_ascii=False).encode("utf-8")),
    st.sampled_from([b"{\x00", b"{\x00\x00\x00", b'{"a":"\xed\xa0\x80"}', b"\xef\xbb\xbf{}",
                     b'{"a":1}\x00']),
))
def test_escr_json_objects_match_json_loads(raw: bytes) -> None:
    from noports.crypto.escr import _obj

    def plain() -> object:
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError):
            return "malformed"
        return obj if isinstance(obj, dict) else "malformed"

    assert _escr_outcome(lambda: _obj(raw, "x")) == plain()


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(obj=_JSON)
def test_canonical_json_is_json_dumps_compact(obj: object) -> None:
    """The shared encoder gives what the per-call ``json.dumps`` gave."""
    from noports.crypto.encoding import canonical_json

    assert canonical_json(obj) == json.dumps(obj, separators=(",", ":"), ensure_ascii=False,
                                             allow_nan=False)
