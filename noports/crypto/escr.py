"""ESCR relay authentication ("Encrypted Signed Challenge-Response"), sans-IO, both roles.

Wire format (spec noports-latest 2.3-2.4, checked against the official
``srvd/relay_auth_verifiers.dart`` and ``srv/relay_authenticators.dart``):

1. the relay speaks first: ``<challenge>\\n``, the challenge being base64 of 32 random bytes;
2. the tunnel end answers one line ``<sessionId>:<authPayload64>\\n`` where
   ``authPayload64 = b64(json({"iv": b64(iv16), "e": aes_ctr_pkcs7(key, iv, envelope64)}))``,
   ``envelope64 = b64(json({"p": {"sid", "c", "side"}, "s", "ha", "sa", "sk"}))`` and ``s`` is
   RSASSA-PKCS1-v1_5/SHA-256 over the compact JSON of ``p`` (keys ``sid, c, side``) made with
   the side's PKAM private key; ``sk`` names the public half,
   ``public:_apsk.<enrollmentId|primary>.a.__e@<atSign>``;
3. the relay answers ``ok\\n`` (then relays bytes) or ``Socket auth failed\\n`` (then closes).

Every line ends with ``\\n`` alone. The verifier checks the signature over its own compact
re-encoding of the received ``p`` in the received key order, as the official verifier does.

Nothing here touches a socket or a clock: bytes go in, events (and bytes to send) come out.
:class:`EscrVerifier` is the relay role, :class:`EscrProver` the tunnel-end role. Beyond the
released relay, the verifier always binds the signer to the side (``sk``'s atSign must be
that side's atSign) and is single-use: one fresh challenge per socket, so a copied response
never verifies again.
"""

from __future__ import annotations

import enum
import json
import os
from typing import Any

from ..errors import ProtocolError, SignatureError
from ..record import Frozen, Record, set_field
from . import aes, rsa
from .encoding import b64d, b64e, canonical_bytes, canonical_json
from .envelope import b64_exact, check_pkcs1_sha256, loads_utf8, sha256_digest_info

CHALLENGE_BYTES = 32
MAX_LINE = 4096
OK_LINE = b"ok\n"
FAIL_LINE = b"Socket auth failed\n"
APSK_NAMESPACE = "a.__e"  # EnrollmentConstants.perEnrollmentApproved
HASHING = "sha256"
SIGNING = "rsa2048"


class EscrError(Exception):
    """A refusal; ``reason`` is a stable label for logs and counters."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def new_challenge() -> str:
    return b64e(os.urandom(CHALLENGE_BYTES))


def apsk_uri(atsign: str, enrollment_id: str | None = None) -> str:
    """Where a side publishes its public signing key (the official ``publicSigningKeyUri``)."""
    at = atsign if atsign.startswith("@") else "@" + atsign
    return f"public:_apsk.{enrollment_id or 'primary'}.{APSK_NAMESPACE}{at}"


def uri_atsign(uri: str) -> str:
    """The atSign a signing-key URI belongs to: the text from its last ``@``."""
    i = uri.rfind("@")
    if i < 0:
        raise EscrError("key_uri", "signing key URI has no atSign")
    return uri[i:].lower()


def valid_key_uri(uri: str) -> bool:
    """The released relay's rule: the part before the last ``@`` ends with ``a.__e``."""
    i = uri.rfind("@")
    return i > 0 and uri[:i].endswith(APSK_NAMESPACE)


# -- the tunnel end's answer ----------------------------------------------------------------


def signed_payload(session_id: str, challenge: str, side_a: bool) -> dict[str, str]:
    return {"sid": session_id, "c": challenge, "side": "a" if side_a else "b"}


def response_line(
    session_id: str,
    challenge: str,
    *,
    side_a: bool,
    aes_key_b64: str,
    signing_uri: str,
    private_key: rsa.PrivateKey,
    iv: bytes | None = None,
) -> bytes:
    """``<sid>:<authPayload64>`` (no newline) answering ``challenge`` (signed untrimmed)."""
    p = signed_payload(session_id, challenge, side_a)
    envelope = {
        "p": p,
        "s": rsa.sign(private_key, canonical_bytes(p)),
        "ha": HASHING,
        "sa": SIGNING,
        "sk": signing_uri,
    }
    envelope64 = b64e(canonical_bytes(envelope))
    iv = iv if iv is not None else aes.new_iv()
    key = b64d(aes_key_b64, what="relayAuthAesKey", length=32)
    e = b64e(aes.encrypt(key, envelope64.encode("ascii"), iv))
    outer = canonical_json({"iv": b64e(iv), "e": e})
    return f"{session_id}:{b64e(outer.encode('utf-8'))}".encode()


# -- the relay's checks ---------------------------------------------------------------------


class Claim(Record):  # not frozen: made per socket on the relay (plain stores are cheaper)
    """A decrypted, well-formed response whose signature is still to be checked."""

    __slots__ = ("session_id", "side", "atsign", "signing_uri", "signed", "signature")
    session_id: str
    side: str  # "a" or "b"
    atsign: str  # from ``sk``, lower-case
    signing_uri: str
    signed: bytes  # the verifier's compact re-encoding of ``p``
    signature: str

    def __init__(
        self,
        session_id: str,
        side: str,
        atsign: str,
        signing_uri: str,
        signed: bytes,
        signature: str,
    ) -> None:
        self.session_id = session_id
        self.side = side
        self.atsign = atsign
        self.signing_uri = signing_uri
        self.signed = signed
        self.signature = signature


_PRINTABLE_ASCII = bytes(range(0x20, 0x7F))


def split_response(line: bytes) -> tuple[str, str]:
    """``(sessionId, authPayload64)`` of a response line (newline already removed)."""
    if not line.translate(None, _PRINTABLE_ASCII):
        # Only printable ASCII (the usual line): strip() can only remove spaces, and what
        # is left is printable; one C pass instead of decode, strip and isprintable checks.
        text = line.decode("ascii").strip()
    else:
        try:
            text = line.decode("ascii").strip()
        except UnicodeDecodeError:
            raise EscrError("malformed", "response is not printable ASCII") from None
        if not text.isprintable():  # ASCII already: no control characters, no DEL
            raise EscrError("malformed", "response has unprintable characters")
    parts = text.split(":")
    if len(parts) != 2 or not parts[0]:
        raise EscrError("malformed", "expected <sessionId>:<payload>")
    return parts[0], parts[1]


def _obj(raw: bytes | str, what: str) -> dict[str, Any]:
    try:
        obj = loads_utf8(raw) if isinstance(raw, bytes) else json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise EscrError("malformed", f"{what} is not JSON") from None
    if not isinstance(obj, dict):
        raise EscrError("malformed", f"{what} is not a JSON object")
    return obj


def _b64(text: Any, what: str, length: int | None = None) -> bytes:
    if not isinstance(text, str):
        raise EscrError("malformed", f"{what} is missing")
    if text.isascii():
        raw = b64_exact(text.encode("ascii"))  # canonical base64: one strict C pass
        if raw is not None and (length is None or len(raw) == length):
            return raw
    try:
        return b64d(text, what=what, length=length)
    except ProtocolError:
        raise EscrError("malformed", f"{what} is not base64") from None


def open_response(session_id: str, payload64: str, aes_key: bytes, challenge: str) -> Claim:
    """Decrypt and check everything but the signature, in the official order."""
    outer = _obj(_b64(payload64, "auth payload"), "auth payload")
    iv = _b64(outer.get("iv"), "iv", 16)
    ciphertext = _b64(outer.get("e"), "encrypted envelope")
    try:
        envelope64 = aes.decrypt(aes_key, ciphertext, iv)
    except ProtocolError:
        raise EscrError("decrypt", "cannot decrypt the auth envelope") from None
    raw = b64_exact(envelope64)  # canonical base64 bytes: no decode, no regex
    if raw is None:
        raw = _b64(envelope64.decode("ascii", "replace"), "envelope")
    envelope = _obj(raw, "envelope")
    p = envelope.get("p")
    if not isinstance(p, dict):
        raise EscrError("malformed", "envelope has no signed payload")
    side = str(p.get("side") or "").lower()
    if side not in ("a", "b"):
        raise EscrError("malformed", "side must be a or b")
    if p.get("sid") != session_id:
        raise EscrError("mismatch", "signed session id differs from the line's")
    if p.get("c") != challenge:
        raise EscrError("challenge", "not an answer to this socket's challenge")
    sk = envelope.get("sk")
    if not isinstance(sk, str) or not valid_key_uri(sk):
        raise EscrError("key_uri", "signing key is not in the per-enrollment namespace")
    if envelope.get("ha") != HASHING or envelope.get("sa") != SIGNING:
        raise EscrError("malformed", "only sha256 with rsa2048 signatures are accepted")
    sig = envelope.get("s")
    if not isinstance(sig, str):
        raise EscrError("malformed", "envelope has no signature")
    try:
        signed = canonical_bytes(p)
    except ValueError:
        raise EscrError("malformed", "signed payload holds a float") from None
    return Claim(session_id, side, uri_atsign(sk), sk, signed, sig)


def verify_claim(claim: Claim, key: rsa.PublicKey) -> None:
    """``key.verify(s, signed, PKCS1v15, SHA256)``, done as ``check_pkcs1_sha256`` (the same
    signatures pass; no OpenSSL digest set-up per socket)."""
    sig = b64_exact(claim.signature.encode("ascii")) if claim.signature.isascii() else None
    try:
        if sig is None:
            sig = b64d(claim.signature, what="signature")
        check_pkcs1_sha256(key, sig, sha256_digest_info(claim.signed))
    except (ProtocolError, SignatureError):
        raise EscrError("bad_sig", "signature does not verify") from None


# -- state machines ---------------------------------------------------------------------------


class Step(enum.Enum):
    NEED_MORE = "need_more"
    LINE = "line"  # verifier: a response arrived; resolve its session, then ``claim``
    LOOKUP = "lookup"  # verifier: fetch ``uri``'s public key, then ``verify``
    SEND = "send"  # prover: write ``data``
    OK = "ok"
    FAILED = "failed"


class Event(Record):  # not frozen: made per socket on the relay (plain stores are cheaper)
    __slots__ = ("step", "reason", "data", "session_id", "uri")
    step: Step
    reason: str
    data: bytes  # SEND: bytes to write; OK: bytes that followed the final line
    session_id: str
    uri: str

    def __init__(
        self,
        step: Step,
        reason: str = "",
        data: bytes = b"",
        session_id: str = "",
        uri: str = "",
    ) -> None:
        self.step = step
        self.reason = reason
        self.data = data
        self.session_id = session_id
        self.uri = uri


NEED_MORE = Event(Step.NEED_MORE)


class _Lines:
    __slots__ = ("_buf", "_max")

    def __init__(self, max_line: int) -> None:
        self._buf = bytearray()
        self._max = max_line

    def want(self) -> int:
        return max(0, self._max - len(self._buf))

    def add(self, data: bytes) -> tuple[bytes, bytes] | None | bool:
        """``(line, rest)``, None for more, False when over the cap."""
        start = len(self._buf)
        self._buf += data
        nl = self._buf.find(b"\n", start)
        if nl < 0 or nl >= self._max:
            return False if len(self._buf) >= self._max else None
        line, rest = bytes(self._buf[:nl]), bytes(self._buf[nl + 1 :])
        self._buf = bytearray()
        return line, rest

    def clear(self) -> None:
        self._buf = bytearray()


class EscrVerifier:
    """One socket's relay side. Single-use: a fresh challenge for every socket.

    ``greeting`` (challenge + newline) is written first. ``feed``/``eof`` give NEED_MORE,
    FAILED or LINE (``session_id`` set). The adapter then calls ``claim`` with that
    session's AES key and the atSigns of its sides (and the side the socket must be, when
    the port says so), which gives FAILED or LOOKUP (``uri``); then ``verify`` with the
    key found at ``uri`` (None if none) gives OK (``data`` = bytes after the line) or
    FAILED. Write ``OK_LINE`` or ``FAIL_LINE`` accordingly.
    """

    __slots__ = ("challenge", "_lines", "_line", "_rest", "_claim", "_done", "side")

    def __init__(self, max_line: int = MAX_LINE, challenge: str | None = None) -> None:
        self.challenge = challenge or new_challenge()
        self._lines = _Lines(max_line)
        self._line: tuple[str, str] | None = None
        self._rest = b""
        self._claim: Claim | None = None
        self._done: Event | None = None
        self.side: str | None = None

    @property
    def greeting(self) -> bytes:
        return self.challenge.encode("ascii") + b"\n"

    @property
    def claimed(self) -> Claim | None:
        return self._claim

    def want(self) -> int:
        return 0 if (self._done or self._line) else self._lines.want()

    def _end(self, ev: Event) -> Event:
        self._done = ev
        self._lines.clear()
        self._line = None
        return ev

    def feed(self, data: bytes) -> Event:
        if self._done is not None:
            return self._done
        if self._line is not None:
            self._rest += data
            return NEED_MORE
        got = self._lines.add(data)
        if got is None:
            return NEED_MORE
        if got is False:
            return self._end(Event(Step.FAILED, "oversize"))
        assert isinstance(got, tuple)
        line, self._rest = got
        try:
            self._line = split_response(line)
        except EscrError as exc:
            return self._end(Event(Step.FAILED, exc.reason))
        return Event(Step.LINE, session_id=self._line[0])

    def eof(self) -> Event:
        if self._done is not None:
            return self._done
        return self._end(Event(Step.FAILED, "eof"))

    def fail(self, reason: str) -> Event:
        return self._end(Event(Step.FAILED, reason))

    def claim(
        self, aes_key_b64: str | bytes | None, atsigns: tuple[str, str], side: str | None = None
    ) -> Event:
        """Check the response against its session (``atsigns`` = (A, B), lower-case).

        ``aes_key_b64`` may be given decoded (32 bytes, e.g. once per session)."""
        if self._done is not None:
            return self._done
        if self._line is None or aes_key_b64 is None:
            return self.fail("session")
        try:
            key = (aes_key_b64 if isinstance(aes_key_b64, bytes) and len(aes_key_b64) == 32
                   else b64d(aes_key_b64, what="relayAuthAesKey", length=32))
            claim = open_response(self._line[0], self._line[1], key, self.challenge)
        except ProtocolError:
            return self.fail("session")
        except EscrError as exc:
            return self.fail(exc.reason)
        if side is not None and claim.side != side:
            return self.fail("side")
        if claim.atsign != atsigns[0 if claim.side == "a" else 1].lower():
            return self.fail("signer")
        self._claim = claim
        self.side = claim.side
        return Event(Step.LOOKUP, session_id=claim.session_id, uri=claim.signing_uri)

    def verify(self, key: rsa.PublicKey | None) -> Event:
        if self._done is not None:
            return self._done
        if self._claim is None:
            return self.fail("session")
        if key is None:
            return self.fail("no_key")
        try:
            verify_claim(self._claim, key)
        except EscrError as exc:
            return self.fail(exc.reason)
        rest, self._rest = self._rest, b""
        return self._end(Event(Step.OK, data=rest, session_id=self._claim.session_id))


class EscrProver:
    """One socket's tunnel-end side: wait for the challenge, answer it, wait for ``ok``.

    ``feed``/``eof`` give NEED_MORE, SEND (``data`` = the response line to write), OK
    (``data`` = bytes that followed ``ok\\n``: tunnel data) or FAILED (``reason`` = what the
    relay said, or ``eof``/``oversize``).
    """

    __slots__ = ("session_id", "_key", "_uri", "_priv", "side_a", "_lines", "_answered",
                 "_done")

    def __init__(
        self,
        session_id: str,
        aes_key_b64: str,
        signing_uri: str,
        private_key: rsa.PrivateKey,
        side_a: bool,
        max_line: int = MAX_LINE,
    ) -> None:
        b64d(aes_key_b64, what="relayAuthAesKey", length=32)  # fail early, not at the relay
        self.session_id = session_id
        self._key = aes_key_b64
        self._uri = signing_uri
        self._priv = private_key
        self.side_a = side_a
        self._lines = _Lines(max_line)
        self._answered = False
        self._done: Event | None = None

    def want(self) -> int:
        return 0 if self._done else self._lines.want()

    def feed(self, data: bytes) -> Event:
        if self._done is not None:
            return self._done
        got = self._lines.add(data)
        if got is None:
            return NEED_MORE
        if got is False:
            self._done = Event(Step.FAILED, "oversize")
            return self._done
        assert isinstance(got, tuple)
        line, rest = got
        if not self._answered:
            self._answered = True
            challenge = line.decode("ascii", "replace")
            out = response_line(
                self.session_id, challenge, side_a=self.side_a, aes_key_b64=self._key,
                signing_uri=self._uri, private_key=self._priv,
            )
            if rest:  # the relay says nothing more before our answer: protocol error
                self._done = Event(Step.FAILED, "unexpected data after the challenge")
                return self._done
            return Event(Step.SEND, data=out + b"\n")
        if line == b"ok":
            self._done = Event(Step.OK, data=rest)
        else:
            text = line.decode("utf-8", "replace").strip()[:200]
            self._done = Event(Step.FAILED, text or "refused")
        return self._done

    def eof(self) -> Event:
        if self._done is None:
            self._done = Event(Step.FAILED, "eof")
        return self._done


class EscrAuth(Frozen):
    """What a tunnel end needs to answer ESCR challenges on every relay socket it opens.

    Given as ``auth_line`` to the tunnel functions (``noports.tunnel``), it replaces the
    static payload-mode line: each socket waits for its own challenge. ``repr`` hides keys.
    """

    __slots__ = ("session_id", "aes_key_b64", "signing_uri", "private_key", "side_a")
    session_id: str
    aes_key_b64: str
    signing_uri: str
    private_key: rsa.PrivateKey
    side_a: bool

    def __init__(
        self,
        session_id: str,
        aes_key_b64: str,
        signing_uri: str,
        private_key: rsa.PrivateKey,
        side_a: bool,
    ) -> None:
        set_field(self, "session_id", session_id)
        set_field(self, "aes_key_b64", aes_key_b64)
        set_field(self, "signing_uri", signing_uri)
        set_field(self, "private_key", private_key)
        set_field(self, "side_a", side_a)

    def __repr__(self) -> str:
        return f"EscrAuth(session_id={self.session_id!r}, side={'a' if self.side_a else 'b'})"

    def prover(self) -> EscrProver:
        return EscrProver(self.session_id, self.aes_key_b64, self.signing_uri,
                          self.private_key, self.side_a)

    def env(self) -> dict[str, str]:
        """The official ``srv -a escr`` environment contract (``RelayAuthenticatorESCR``)."""
        return {
            "REMOTE_AUTH_ESCR_SESSION_ID": self.session_id,
            "REMOTE_AUTH_ESCR_AES_KEY": self.aes_key_b64,
            "REMOTE_AUTH_ESCR_PUB_KEY_URI": self.signing_uri,
            "REMOTE_AUTH_ESCR_SIGNING_PUBKEY": rsa.public_to_b64(self.private_key.public_key()),
            "REMOTE_AUTH_ESCR_SIGNING_PRIVKEY": rsa.private_to_b64(self.private_key),
            "REMOTE_AUTH_ESCR_IS_SIDE_A": "true" if self.side_a else "false",
        }

    @classmethod
    def from_env(cls, env: dict[str, str] | Any) -> EscrAuth:
        """Read the contract; a missing or empty variable raises ``ValueError`` naming it."""
        names = ("SESSION_ID", "AES_KEY", "PUB_KEY_URI", "SIGNING_PUBKEY", "SIGNING_PRIVKEY",
                 "IS_SIDE_A")
        got: dict[str, str] = {}
        for n in names:
            full = "REMOTE_AUTH_ESCR_" + n
            v = env.get(full)
            if not v:
                raise ValueError(f"No {full} in env")
            got[n] = v
        try:
            b64d(got["AES_KEY"], what="REMOTE_AUTH_ESCR_AES_KEY", length=32)
            priv = rsa.private_from_b64(got["SIGNING_PRIVKEY"])
        except ProtocolError as exc:
            raise ValueError(str(exc)) from None
        side = got["IS_SIDE_A"].strip().lower()
        if side not in ("true", "false"):
            raise ValueError('Env var REMOTE_AUTH_ESCR_IS_SIDE_A must be "true" or "false"')
        return cls(got["SESSION_ID"], got["AES_KEY"], got["PUB_KEY_URI"], priv, side == "true")
