"""A test-side NoPorts client for sshnpd tests: exactly what the spec says a client does.

It talks atProtocol with :class:`AtClient`, asks the in-process relay engine for a session (as
srvd would on a request R1), signs ``ssh_request``/``npt_request`` payloads built by
``noports.session.wire``, waits for the daemon's D5 reply on ``<sid>.<dev>.sshnp``, verifies
it and opens the client end of the tunnel with ``noports.tunnel``.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from noports import _compat
from noports.at.client import AtClient
from noports.crypto import rsa
from noports.crypto.envelope import relay_auth_line
from noports.errors import PeerTimeoutError
from noports.relay import Relay, SessionSpec
from noports.session import wire
from noports.tunnel import TunnelCrypto

_EPHEMERAL: list[rsa.PrivateKey] = []


def ephemeral_key() -> rsa.PrivateKey:
    if not _EPHEMERAL:
        _EPHEMERAL.append(rsa.generate(2048))
    return _EPHEMERAL[0]


def arun(coro: Any, timeout: float = 60.0) -> Any:
    async def guarded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return _compat.run(guarded(), loop="asyncio")


@dataclass
class Granted:
    sid: str
    client_nonce: str
    rvd_nonce: str
    port_a: int
    port_b: int
    session: Any


class NpClient:
    """``async with NpClient(np_env, me, daemon, device) as c: ...``"""

    def __init__(self, np_env: Any, me: str, daemon: str, device: str) -> None:
        self.env = np_env
        self.me = me
        self.daemon = daemon
        self.device = device
        self.at: AtClient | None = None
        self.relay: Relay | None = None

    async def __aenter__(self) -> NpClient:
        srv = self.env.server
        self.at = await AtClient.connect(
            self.me, keys=self.env.keys(self.me), root=srv.root, ca_file=srv.ca_file
        )
        self.relay = Relay(bind_host="127.0.0.1")
        await self.relay.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.relay is not None:
            await self.relay.close()
        if self.at is not None:
            await self.at.close()

    # -- control plane -----------------------------------------------------------------------
    async def ping(self, timeout: float = 10.0) -> dict[str, Any] | None:
        assert self.at
        key = f"heartbeat.{self.device}.sshnp"
        async with self.at.monitor(key.replace(".", r"\.")) as mon:
            await mon.started(10)
            await self.at.notify(
                self.daemon, f"ping.{self.device}", "ping", namespace="sshnp", ttln_ms=60_000
            )
            return await self._wait(mon, key, timeout, parse=True)

    async def _wait(self, mon: Any, key: str, timeout: float, parse: bool) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                n = await mon.next(timeout=max(0.01, deadline - loop.time()))
            except PeerTimeoutError:
                return None
            if n.from_atsign == self.daemon and n.short_key == key and n.value is not None:
                return json.loads(n.value) if parse else n.value

    async def grant(self, *, auth_b: bool = True) -> Granted:
        """What a relay request R1/R2 gives the client."""
        assert self.at and self.relay
        sid = wire.new_session_id()
        cn = wire.client_nonce()
        pka = await self.at.public_key(self.me)
        pkb = await self.at.public_key(self.daemon)
        sess = await self.relay.create_session(
            SessionSpec(
                sid,
                self.me,
                self.daemon,
                cn,
                auth_a=True,
                auth_b=auth_b,
                public_key_a=pka,
                public_key_b=pkb if auth_b else None,
            )
        )
        return Granted(sid, cn, sess.rvd_nonce, sess.port_a, sess.port_b, sess)

    async def send(
        self,
        command: str,
        payload: Any,
        sid: str,
        *,
        timeout: float = 15.0,
        raw: str | None = None,
        key_to_sign: Any = None,
    ) -> str | None:
        """Send a (signed) request; return the daemon's D5 value text or None (no reply)."""
        assert self.at
        reply_key = f"{sid}.{self.device}.sshnp"
        async with self.at.monitor(reply_key.replace(".", r"\.")) as mon:
            await mon.started(10)
            if raw is not None:
                await self.at.notify(
                    self.daemon,
                    f"{command}.{self.device}",
                    raw,
                    namespace="sshnp",
                    ttl_ms=10_000,
                    ttln_ms=60_000,
                )
            else:
                from noports.crypto.envelope import envelope_json

                text = envelope_json(payload, key_to_sign or self.at.keys.encrypt_private)
                await self.at.notify(
                    self.daemon,
                    f"{command}.{self.device}",
                    text,
                    namespace="sshnp",
                    ttl_ms=10_000,
                    ttln_ms=60_000,
                )
            return await self._wait(mon, reply_key, timeout, parse=False)

    async def verify_reply(self, text: str) -> dict[str, Any]:
        assert self.at
        return await self.at.verify_signed(text, self.daemon)

    def auth_line(self, g: Granted) -> str:
        assert self.at
        return relay_auth_line(g.sid, g.client_nonce, g.rvd_nonce, self.at.keys.encrypt_private)

    @staticmethod
    def tunnel_crypto(payload: dict[str, Any], sid: str) -> TunnelCrypto:
        keys = wire.SessionKeys.from_response(payload, ephemeral_key())
        return keys.aead(sid) or keys.ctr

    def ssh_payload(self, g: Granted, **kw: Any) -> dict[str, Any]:
        kw.setdefault("ephemeral_pk", ephemeral_key().public_key())
        return wire.ssh_request(
            session_id=g.sid,
            host="127.0.0.1",
            port=g.port_b,
            client_nonce=g.client_nonce,
            rvd_nonce=g.rvd_nonce,
            **kw,
        )

    def npt_payload(self, g: Granted, host: str, port: int, **kw: Any) -> dict[str, Any]:
        kw.setdefault("ephemeral_pk", ephemeral_key().public_key())
        return wire.npt_request(
            session_id=g.sid,
            rvd_host="127.0.0.1",
            rvd_port=g.port_b,
            requested_port=port,
            requested_host=host,
            client_nonce=g.client_nonce,
            rvd_nonce=g.rvd_nonce,
            **kw,
        )


async def run_ssh(
    sshd: Any, port: int, *cmd: str, extra: list[str] | None = None, timeout: float = 20.0
) -> tuple[int, str, str]:
    args = sshd.ssh_args(*cmd, port=port)
    if extra:
        args = args[:1] + extra + args[1:]
    p = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(p.communicate(), timeout)
    except BaseException:
        p.kill()
        await p.wait()
        raise
    return p.returncode or 0, out.decode(), err.decode()
