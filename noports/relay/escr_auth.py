"""The relay's ESCR verifier behind the ``AuthLine`` interface that ``Inbound`` drives.

``Inbound`` writes ``greeting`` (a fresh challenge) before reading, feeds bytes, and on
``Outcome.PENDING`` stops reading until ``when_done`` calls back (the signing key is being
fetched). ``ok_line``/``fail_line`` are what it writes on each verdict.

``resolve(session_id)`` finds the live session the response names (the session itself on
its own ports; the registry of the single-port listener on the 443 path). ``side`` is the
side the port implies (0/1), or None when the response's ``side`` decides (443). On success
``target``/``target_side`` say where the socket belongs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from ..crypto import escr, rsa
from .auth import NEED_MORE, Outcome, Verdict


class KeySource(Protocol):
    """Where an ESCR verifier gets the signing keys (``relay.relay.Relay`` implements it)."""

    def signing_key(self, uri: str, spec: Any) -> rsa.PublicKey | None | bool: ...

    def fetch_signing_key(
        self, uri: str, done: Callable[[rsa.PublicKey | None], None]
    ) -> None: ...


Session = Any  # a relay.session.Session: not imported here (it imports this module)

PENDING = Verdict(Outcome.PENDING)


class EscrLine:
    __slots__ = ("_v", "_relay", "_resolve", "_side", "_verdict", "_cb", "target",
                 "target_side")

    ok_line = escr.OK_LINE
    fail_line = escr.FAIL_LINE

    def __init__(
        self,
        relay: KeySource,
        resolve: Callable[[str], Session | None],
        side: int | None,
        max_line: int = escr.MAX_LINE,
    ) -> None:
        self._v = escr.EscrVerifier(max_line)
        self._relay = relay
        self._resolve = resolve
        self._side = side
        self._verdict = NEED_MORE
        self._cb: Callable[[Verdict], None] | None = None
        self.target: Session | None = None
        self.target_side = -1

    @property
    def greeting(self) -> bytes:
        return self._v.greeting

    @property
    def verdict(self) -> Verdict:
        return self._verdict

    def want(self) -> int:
        return self._v.want() if self._verdict.outcome is Outcome.NEED_MORE else 0

    def _from(self, ev: escr.Event) -> Verdict:
        if ev.step is escr.Step.NEED_MORE:
            return NEED_MORE
        if ev.step is escr.Step.OK:
            self._verdict = Verdict(Outcome.OK, "", ev.data)
        else:
            self._verdict = Verdict(Outcome.FAILED, ev.reason or "failed")
        return self._verdict

    def feed(self, data: bytes) -> Verdict:
        if self._verdict.outcome is not Outcome.NEED_MORE:
            return self._verdict
        ev = self._v.feed(data)
        if ev.step is not escr.Step.LINE:
            return self._from(ev)
        session = self._resolve(ev.session_id)
        if session is None or session.closed:
            return self._from(self._v.fail("session"))
        spec = session.spec
        want_side = None if self._side is None else "ab"[self._side]
        ev = self._v.claim(session.escr_key or spec.relay_auth_aes_key,
                           (spec.atsign_a.lower(), spec.atsign_b.lower()), want_side)
        if ev.step is not escr.Step.LOOKUP:
            return self._from(ev)
        self.target = session
        self.target_side = 0 if self._v.side == "a" else 1
        if not session._auth[self.target_side]:
            return self._from(self._v.fail("side"))  # that side was not to authenticate
        found = self._relay.signing_key(ev.uri, spec)
        if found is not False:
            return self._finish(found)  # type: ignore[arg-type]
        self._verdict = PENDING
        self._relay.fetch_signing_key(ev.uri, self._fetched)
        return PENDING

    def _finish(self, key: rsa.PublicKey | None) -> Verdict:
        return self._from(self._v.verify(key))

    def _fetched(self, key: rsa.PublicKey | None) -> None:
        if self._verdict is not PENDING:
            return
        self._verdict = NEED_MORE
        verdict = self._finish(key)
        cb, self._cb = self._cb, None
        if cb is not None:
            cb(verdict)

    def when_done(self, cb: Callable[[Verdict], None]) -> None:
        """Call ``cb`` with the final verdict once a PENDING lookup ends."""
        self._cb = cb

    def eof(self) -> Verdict:
        if self._verdict.outcome is Outcome.NEED_MORE:
            return self._from(self._v.eof())
        if self._verdict is PENDING:
            self._verdict = Verdict(Outcome.FAILED, "eof")
        return self._verdict

    def cancel(self) -> None:
        self._cb = None
