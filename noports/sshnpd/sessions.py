"""Session requests (``ssh_request`` D3, ``npt_request`` D4): check, tunnel, reply (spec 3.1-3.3).

Pipeline for one request from an authorised sender:

1. The value must be a signed envelope; the signature is checked against the sender's
   ``public:publickey`` by re-encoding the received payload (unknown fields kept). A bad
   ssh request is dropped (official); a bad npt request gets ``Signature not verified: <e>``.
2. :func:`noports.session.wire.parse_request` validates it; the session id must be a UUID v4
   and not seen before (a replay is refused). Malformed requests are refused with a one-line
   reason when there is a session id to answer to, else only logged.
3. Policy of this daemon: ``--require-aead`` refuses requests without the strong-mode offer.
4. permit-open (spec 6.4): ``localhost:<--local-sshd-port>`` for ssh, ``requestedHost:
   requestedPort`` for npt, against the daemon list then the client's list, with the official
   refusal wording; npt targets are then resolved once (``resolve_checked``) and the tunnel
   connects to that address only.
5. Keys: :class:`SessionKeys` for encryption (legacy CTR, twin keys on ``twinKeys``, the AEAD
   secret on ``noportsAead``); the relay auth line signed with the daemon key when
   ``authenticateToRvd``; an ephemeral ssh key pair only for the v4 form (no encryption).
6. The daemon end of the tunnel starts in-process; once it is connected (ssh: local sshd and
   relay; npt: control channel) the signed D5 success reply goes out. A failure before that
   is the official ``Failed to start up the daemon side of the srv socket tunnel : <e>``.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..crypto import rsa
from ..crypto.encoding import loads_object
from ..crypto.envelope import parse_envelope, relay_auth_line, verify_envelope
from ..crypto.escr import EscrAuth
from ..errors import AuthRefusedError, NoPortsError, ProtocolError, SignatureError
from ..log import escape
from ..names import InvalidNameError, validate_session_id
from ..session.permitopen import PermitOpen, check_request, resolve_checked
from ..session.relayauth import request_mode
from ..session.wire import SessionKeys, SessionRequest, parse_request, success_response
from ..tunnel import DaemonMulti, TunnelCrypto, mode_name, run_daemon_single
from .ephemeral import EphemeralKeys

log = logging.getLogger("noports.sshnpd.session")

START_TIMEOUT = 10.0
NPT_DEFAULT_TIMEOUT_MS = 60_000
NEVER_S = 365 * 86400.0
SEEN_SESSIONS = 4096
TUNNEL_FAILED = "Failed to start up the daemon side of the srv socket tunnel : "
AEAD_REQUIRED = "This device daemon requires the noports AEAD mode (--require-aead)"
#: relay auth modes this daemon's tunnel ends can use (spec-latest 2.6)
RELAY_AUTH_MODES = frozenset({"payload", "escr"})  # our tunnel ends answer ESCR


def _all_loopback(port: int) -> bool:
    """True iff every address ``localhost`` resolves to is a loopback address."""
    try:
        infos = socket.getaddrinfo("localhost", port, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(infos) and all(
        ipaddress.ip_address(str(i[4][0]).split("%", 1)[0]).is_loopback
        for i in infos
        if i[0] in (socket.AF_INET, socket.AF_INET6)
    )


class Refusal(Exception):
    """A request refused with a reply text (``session_id`` None: nobody to answer)."""

    def __init__(self, text: str, session_id: str | None) -> None:
        super().__init__(text)
        self.text = text
        self.session_id = session_id


@dataclass
class SessionSettings:
    device: str
    daemon_permit: PermitOpen
    local_sshd_port: int
    require_aead: bool
    private_key: rsa.PrivateKey
    ephemeral: EphemeralKeys
    # ESCR relay auth: our PKAM key and where its public half is published
    signing_key: rsa.PrivateKey | None = None
    signing_uri: str | None = None


PublicKeyOf = Callable[[str, bool], Awaitable[rsa.PublicKey]]


class SessionHandler:
    """Turns verified requests into running tunnels; owns the tunnel tasks."""

    def __init__(
        self, settings: SessionSettings, public_key: PublicKeyOf, max_sessions: int = 128
    ) -> None:
        self.s = settings
        self._public_key = public_key
        self.max_sessions = max_sessions
        self.tunnels: set[asyncio.Task[Any]] = set()
        #: called with (session id, task) when a tunnel task ends (sshnpd --metrics records)
        self.on_end: Callable[[str, asyncio.Task[Any]], None] | None = None
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()

    # -- step 1-2: envelope and request ----------------------------------------------------
    async def verify(self, kind: str, sender: str, value: str | None) -> SessionRequest:
        """Verified, validated request, or raise Refusal (session_id None = drop silently)."""
        try:
            env = parse_envelope(loads_object(value or "", what=f"{kind}_request"))
        except ProtocolError as exc:
            raise Refusal(f"{kind}_request is not a signed envelope: {exc}", None) from None
        sid_raw = env["payload"].get("sessionId")
        try:
            sid = validate_session_id(sid_raw) if isinstance(sid_raw, str) else None
        except InvalidNameError:
            sid = None
        try:
            payload = await self._verify_sig(env, sender)
        except (SignatureError, ProtocolError) as exc:
            # official: npt replies, ssh drops silently
            raise Refusal(
                f"Signature not verified: {exc}", sid if kind == "npt" else None
            ) from None
        if sid is None:
            raise Refusal(f"{kind}_request has no valid sessionId (a UUID v4)", None)
        try:
            req = parse_request(kind, payload)
        except ProtocolError as exc:
            raise Refusal(str(exc), sid) from None
        if sid in self._seen:
            raise Refusal(f"session {sid} was already requested (replay refused)", None)
        self._seen[sid] = None
        while len(self._seen) > SEEN_SESSIONS:
            self._seen.popitem(last=False)
        return req

    async def _verify_sig(self, env: dict[str, Any], sender: str) -> dict[str, Any]:
        key = await self._public_key(sender, False)
        try:
            return verify_envelope(env, key)
        except SignatureError:
            fresh = await self._public_key(sender, True)  # the sender may have re-onboarded
            if rsa.public_to_b64(fresh) == rsa.public_to_b64(key):
                raise
            return verify_envelope(env, fresh)

    # -- step 3-6 ----------------------------------------------------------------------------
    def _policy(self, req: SessionRequest) -> None:
        sid = req.session_id
        if self.s.require_aead and not (req.aead and req.encrypt):
            raise Refusal(AEAD_REQUIRED, sid)
        if req.auth_to_rvd and req.relay_auth_mode not in RELAY_AUTH_MODES:
            raise Refusal(
                TUNNEL_FAILED + f"relay auth mode {req.relay_auth_mode} is not supported", sid
            )
        if req.kind == "ssh" and not req.direct:
            raise Refusal("ssh_request with direct:false (reverse ssh) is not supported", sid)
        if req.auth_to_rvd and (not req.client_nonce or not req.rvd_nonce):
            raise Refusal(
                f"{req.kind}_request asks for relay authentication but has no clientNonce/rvdNonce",
                sid,
            )
        if len(self.tunnels) >= self.max_sessions:
            raise Refusal(TUNNEL_FAILED + f"too many sessions ({self.max_sessions})", sid)

    async def _target(self, req: SessionRequest, client_permit: PermitOpen) -> tuple[str, int]:
        if req.kind == "ssh":
            host, port = "localhost", self.s.local_sshd_port
        else:
            host, port = req.target_host or "", req.target_port or 0
        decision = check_request(self.s.daemon_permit, client_permit, host, port)
        if not decision.allowed:
            raise Refusal(decision.message or "not permitted", req.session_id)
        loop = asyncio.get_running_loop()
        try:
            addr, port = await loop.run_in_executor(
                None, resolve_checked, host, port, self.s.daemon_permit, client_permit
            )
        except AuthRefusedError as exc:
            raise Refusal(str(exc), req.session_id) from None
        except NoPortsError as exc:
            raise Refusal(TUNNEL_FAILED + str(exc), req.session_id) from None
        if host.lower() == "localhost" and await loop.run_in_executor(None, _all_loopback, port):
            # the service may listen on 127.0.0.1 or ::1 only: try each loopback address
            return "localhost", port
        return addr, port

    async def start(
        self, req: SessionRequest, sender: str, client_permit: PermitOpen
    ) -> dict[str, Any]:
        """Run steps 3-6; returns the success payload once the tunnel end is up."""
        self._policy(req)
        host, port = await self._target(req, client_permit)
        sid = req.session_id
        keys = SessionKeys.generate(encrypt=req.encrypt, twin=req.twin_keys, aead=req.aead)
        crypto: TunnelCrypto = keys.aead(sid) or keys.ctr
        auth: str | EscrAuth | None = None
        try:
            ram, ram_key = request_mode(req.raw)
        except ProtocolError as exc:
            raise Refusal(str(exc), sid) from None
        if req.auth_to_rvd and ram == "escr":
            if self.s.signing_key is None or self.s.signing_uri is None or ram_key is None:
                raise Refusal("this daemon cannot do escr relay authentication", sid)
            auth = EscrAuth(sid, ram_key, self.s.signing_uri, self.s.signing_key, False)
        elif req.auth_to_rvd:
            auth = relay_auth_line(
                sid, req.client_nonce or "", req.rvd_nonce or "", self.s.private_key
            )
        private_pem = None
        if req.kind == "ssh" and not req.encrypt:
            try:
                private_pem = await self.s.ephemeral.issue(sid)
            except (NoPortsError, OSError, ValueError) as exc:
                raise Refusal(TUNNEL_FAILED + f"ephemeral key: {exc}", sid) from None
        log.warning(
            "session %s for %s: %s tunnel to %s:%d via relay %s:%d (%s, relay auth %s)",
            sid,
            escape(sender, 80),
            req.kind,
            host,
            port,
            escape(req.relay_host, 100),
            req.relay_port,
            mode_name(crypto),
            ("escr" if isinstance(auth, EscrAuth) else "payload") if auth else "off",
        )
        try:
            if req.kind == "ssh":
                await self._start_single(req, auth, crypto, host, port)
            else:
                await self._start_multi(req, auth, crypto, host, port)
        except Refusal:
            if private_pem is not None:
                await self.s.ephemeral.remove(sid)
            raise
        return success_response(
            sid,
            keys if req.encrypt else None,
            req.ephemeral_pk,
            ephemeral_private_key_pem=private_pem,
            ssh=req.kind == "ssh",
            kex_pk=req.kex_pk if req.encrypt else None,
        )

    def _track(self, task: asyncio.Task[Any], sid: str) -> None:
        self.tunnels.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self.tunnels.discard(t)
            if self.on_end is not None:
                self.on_end(sid, t)
            if t.cancelled():
                log.info("session %s: tunnel cancelled", sid)
                return
            exc = t.exception()
            if exc is not None:
                log.warning("session %s: tunnel ended with an error: %s", sid, exc)
            else:
                log.info("session %s: tunnel ended (%s)", sid, t.result())

        task.add_done_callback(done)

    async def _start_single(
        self,
        req: SessionRequest,
        auth: str | EscrAuth | None,
        crypto: TunnelCrypto,
        host: str,
        port: int,
    ) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def on_ready() -> None:
            if not ready.done():
                ready.set_result(None)

        task = loop.create_task(
            run_daemon_single(
                req.relay_host,
                req.relay_port,
                auth_line=auth,
                crypto=crypto,
                local_host=host,
                local_port=port,
                timeout=START_TIMEOUT,
                on_ready=on_ready,
            )
        )
        self._track(task, req.session_id)
        waiters: list[asyncio.Future[Any]] = [ready, task]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            exc = task.exception() if not task.cancelled() else None
            raise Refusal(
                TUNNEL_FAILED + (str(exc) or type(exc).__name__ if exc else "cancelled"),
                req.session_id,
            )

    async def _start_multi(
        self,
        req: SessionRequest,
        auth: str | EscrAuth | None,
        crypto: TunnelCrypto,
        host: str,
        port: int,
    ) -> None:
        ms = req.timeout_ms if req.timeout_ms is not None else NPT_DEFAULT_TIMEOUT_MS
        dm = DaemonMulti(
            req.relay_host,
            req.relay_port,
            auth_line=auth,
            crypto=crypto,
            local_host=host,
            local_port=port,
            timeout=ms / 1000.0 if ms > 0 else NEVER_S,
            relay_timeout=START_TIMEOUT,
        )
        try:
            await dm.connect()
        except (NoPortsError, OSError) as exc:
            raise Refusal(
                TUNNEL_FAILED + (str(exc) or type(exc).__name__), req.session_id
            ) from None
        self._track(asyncio.get_running_loop().create_task(dm.run()), req.session_id)

    async def close(self) -> None:
        for t in list(self.tunnels):
            t.cancel()
        if self.tunnels:
            await asyncio.gather(*list(self.tunnels), return_exceptions=True)
