"""npt/sshnp against a daemon that speaks only the official snapshot protocol.

Our sshnpd always accepts the AEAD offer, so a legacy peer is written here: a small daemon in
the test process (real atProtocol client on the embedded server, real relay auth, real multi
tunnel end via ``noports.tunnel.DaemonMulti``) that answers pings with the official 5.6.3
feature JSON and session requests in the legacy form (one AES-CTR key and IV both ways; it
ignores ``twinKeys`` and ``noportsAead`` as official daemons do). With it:

* ``npt`` falls back to legacy CTR and carries ssh end to end (real srvd, real sshd);
* ``--require-aead`` is refused at the feature check (exit 3) before any session request;
* a daemon that *claims* the feature but answers in the legacy form is refused after the
  response (downgrade, exit 3), and nothing listens.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from noports import _compat
from noports.at.client import AtClient
from noports.crypto.envelope import relay_auth_line
from noports.session import wire
from noports.tunnel import DaemonMulti
from tests.test_sshnp_rig import CHECK, Rig, module_rig


@pytest.fixture(scope="module")
def rig(at_server, tmp_path_factory) -> Iterator[Rig]:
    yield from module_rig(at_server, tmp_path_factory)


pytestmark = pytest.mark.timeout(120)


def official_ping(device: str, port: int, claim_aead: bool) -> str:
    features: dict[str, Any] = {
        "srAuth": True,
        "srE2ee": True,
        "acceptsPublicKeys": False,
        "supportsPortChoice": True,
        "adjustableTimeout": True,
    }
    if claim_aead:
        features["noportsAead"] = True
    return json.dumps(
        {
            "devicename": device,
            "deviceGroupName": "__none__",
            "version": "5.6.3",
            "corePackageVersion": "6.2.0",
            "supportedFeatures": features,
            "allowedServices": [f"localhost:{port}"],
        },
        separators=(",", ":"),
    )


class LegacyDaemon:
    """Runs in its own thread and event loop until ``stop()``."""

    def __init__(self, rig: Rig, device: str, *, claim_aead: bool = False) -> None:
        self.rig, self.device, self.claim_aead = rig, device, claim_aead
        self.requests: list[dict[str, Any]] = []
        self.ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        assert self.ready.wait(30), self.error

    def _main(self) -> None:
        try:
            _compat.run(self._run(), loop="asyncio")
        except BaseException as exc:  # noqa: BLE001 - surfaced by the test
            self.error = exc
            self.ready.set()

    async def _run(self) -> None:
        env = self.rig.env
        me = self.rig.device_atsign
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        at = await AtClient.connect(
            me, keys=env.keys(me), root=env.server.root, ca_file=env.server.ca_file
        )
        tasks: set[asyncio.Task[Any]] = set()
        try:
            async with at.monitor(rf"\.{self.device}\.sshnp") as mon:
                await mon.started(10)
                self.ready.set()
                while not self._stop.is_set():
                    nxt = asyncio.ensure_future(mon.next())
                    stop = asyncio.ensure_future(self._stop.wait())
                    await asyncio.wait({nxt, stop}, return_when=asyncio.FIRST_COMPLETED)
                    stop.cancel()
                    if not nxt.done():
                        nxt.cancel()
                        break
                    n = nxt.result()
                    cmd = n.short_key.split(".", 1)[0]
                    if n.from_atsign != self.rig.client or n.value is None:
                        continue
                    if cmd == "ping":
                        await at.notify(
                            n.from_atsign,
                            f"heartbeat.{self.device}",
                            official_ping(self.device, self.rig.sshd.port, self.claim_aead),
                            namespace="sshnp",
                            ttl_ms=10_000,
                        )
                    elif cmd == "npt_request":
                        t = asyncio.ensure_future(self._npt(at, n.from_atsign, n.value))
                        tasks.add(t)
                        t.add_done_callback(tasks.discard)
        finally:
            for t in list(tasks):
                t.cancel()
            await at.close()

    async def _npt(self, at: AtClient, client: str, value: str) -> None:
        payload = await at.verify_signed(value, client)
        self.requests.append(payload)
        req = wire.parse_request("npt", payload)
        keys = wire.SessionKeys.generate(encrypt=req.encrypt, twin=False, aead=False)
        auth = (
            relay_auth_line(
                req.session_id, req.client_nonce or "", req.rvd_nonce or "", at.keys.encrypt_private
            )
            if req.auth_to_rvd
            else None
        )
        dm = DaemonMulti(
            req.relay_host,
            req.relay_port,
            auth_line=auth,
            crypto=keys.ctr,
            local_host=req.target_host or "localhost",
            local_port=req.target_port or 22,
            timeout=10,
        )
        await dm.connect()
        reply = wire.success_response(
            req.session_id, keys if req.encrypt else None, req.ephemeral_pk, ssh=False
        )
        await at.send_signed(client, f"{req.session_id}.{self.device}", reply, namespace="sshnp")
        await dm.run()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)


def test_legacy_daemon_fallback_and_require_aead(rig: Rig) -> None:
    d = LegacyDaemon(rig, "legacy1")
    try:
        r = rig.npt("legacy1", "-p", str(rig.sshd.port), "-x", "--require-aead")
        assert r.returncode == 3, r.stderr
        assert "This device daemon does not support the noports AEAD encryption mode" in r.stderr
        assert d.requests == []  # refused before any session request
        r = rig.npt("legacy1", "-p", str(rig.sshd.port), "-x", "--output", "json")
        assert r.returncode == 0, r.stderr
        ev = json.loads(r.stdout)
        assert ev["mode"] == "legacy"
        assert d.requests[-1]["noportsAead"] == 1 and d.requests[-1]["twinKeys"] is True
        out = rig.run_cmd([*rig.sshd.ssh_args(*CHECK, port=ev["port"])])
        assert out.returncode == 0 and "TEST PASSED" in out.stdout, out.stderr
    finally:
        d.stop()


def test_downgrade_after_claimed_feature_is_refused(rig: Rig) -> None:
    d = LegacyDaemon(rig, "liar1", claim_aead=True)
    try:
        r = rig.npt("liar1", "-p", str(rig.sshd.port), "-x", "--require-aead")
        assert r.returncode == 3, r.stderr
        assert "did not accept the AEAD mode" in r.stderr and "--require-aead" in r.stderr
        assert len(d.requests) == 1
        # the feature check said "ours": an X25519 key, no RSA-2048 key (test_kex_x25519)
        assert d.requests[0]["noportsKex"] == "x25519"
        assert d.requests[0]["clientEphemeralPK"] is None
        assert r.stdout.strip() == ""
    finally:
        d.stop()
