"""The ``npa`` program: a real process on the embedded server, with our AtClient as the daemon.

Covers spec 8: ack then success with the policy's permitOpen, denial, nack for malformed
requests / reqId mismatch / a sender asking about another daemon, ``--daemon-atsigns``
(others get no reply), hot reload of the policy file (and a broken edit keeping the last
good policy), the JSON-lines audit log and the P3 self notification.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from noports.at.client import AtClient
from noports.crypto import aes
from noports.crypto.encoding import b64d
from noports.npa.policy import PolicyStore
from noports.npa.service import MONITOR_REGEX, handle_request

pytestmark = pytest.mark.timeout(90)

RESP = r"auth_checks\.__rpcs\.sshnp@"


def policy_text(client: str, targets: str) -> str:
    return f'[users."{client}"]\ndevice_names = {{ "pi" = [{targets}] }}\n'


def write_policy(path: Path, text: str) -> None:
    # a new inode each time, as editors do; the mtime alone may not change within a tick
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Daemon:
    """A daemon's side of the auth-check RPC, over a real AtClient."""

    def __init__(self, client: AtClient, npa: str) -> None:
        self.client = client
        self.npa = npa
        self.mon = client.monitor(RESP)
        self.got: dict[int, list[dict[str, Any]]] = {}

    async def start(self) -> None:
        await self.mon.started(15)

    async def send(self, req_id: int, value: str) -> None:
        await self.client.notify(
            self.npa,
            f"request.{req_id}.auth_checks.__rpcs",
            value,
            namespace="sshnp",
            ttln_ms=30_000,
        )

    def request(
        self, req_id: int, client: str, device: str = "pi", daemon: str | None = None
    ) -> str:
        return json.dumps(
            {
                "reqId": req_id,
                "payload": {
                    "daemonAtsign": daemon or self.client.atsign,
                    "daemonDeviceName": device,
                    "daemonDeviceGroupName": "__none__",
                    "clientAtsign": client,
                },
            }
        )

    async def replies(self, req_id: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Responses to ``req_id`` up to the final one (success/nack/error)."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.got.get(req_id, [])
            if seen and seen[-1]["respType"] in ("success", "nack", "error"):
                return seen
            left = deadline - time.monotonic()
            if left <= 0:
                return seen
            try:
                n = await self.mon.next(timeout=left)
            except Exception:  # noqa: BLE001 - timeout: return what we have
                return self.got.get(req_id, [])
            assert n.from_atsign == self.npa
            resp_type, rid = n.short_key.split(".")[:2]
            value = json.loads(n.value or "")
            assert value["respType"] == resp_type and value["reqId"] == int(rid)
            self.got.setdefault(int(rid), []).append(value)

    async def ask(self, req_id: int, value: str) -> list[dict[str, Any]]:
        await self.send(req_id, value)
        return await self.replies(req_id)


def connect(np_env, atsign: str) -> Any:
    return AtClient.connect(
        atsign, keys=np_env.keys(atsign), root=np_env.server.root, ca_file=np_env.server.ca_file
    )


def test_npa_end_to_end(np_env, tmp_path: Path) -> None:
    npa, dev, other_dev, outsider = (np_env.atsign(n) for n in ("npa", "dev", "dev2", "outsider"))
    alice, bob = "@alice_" + np_env.tag, "@bob_" + np_env.tag
    pol = tmp_path / "policy.toml"
    write_policy(pol, policy_text(alice, '"localhost:22", "localhost:8080"'))
    audit_path = tmp_path / "audit.jsonl"
    proc = np_env.spawn(
        "npa",
        "-a",
        npa,
        "--policy",
        str(pol),
        "--audit-log",
        str(audit_path),
        "--daemon-atsigns",
        f"{dev},{other_dev}",
        ready=r"npa: @\S+ monitor started",
    )
    assert "monitor started" in proc.stderr

    async def scenario() -> None:
        async with (
            await connect(np_env, dev) as dc,
            await connect(np_env, outsider) as oc,
            await connect(np_env, npa) as me,
        ):
            d, o = Daemon(dc, npa), Daemon(oc, npa)
            await d.start()
            await o.start()
            base = int(time.time() * 1_000_000)

            got = await d.ask(base + 1, d.request(base + 1, alice))
            assert [r["respType"] for r in got] == ["ack", "success"]
            assert got[1]["payload"] == {
                "authorized": True,
                "message": None,
                "permitOpen": ["localhost:22", "localhost:8080"],
            }

            got = await d.ask(base + 2, d.request(base + 2, bob))
            assert [r["respType"] for r in got] == ["ack", "success"]
            assert got[1]["payload"]["authorized"] is False
            assert got[1]["payload"]["permitOpen"] == []
            assert bob in got[1]["payload"]["message"]

            # malformed JSON, a reqId that differs from the key's, a payload not an object,
            # an invalid client atSign, and a daemon asking about another daemon: nack only
            for rid, value in (
                (base + 3, "{not json"),
                (base + 4, d.request(base + 99, alice)),
                (base + 5, json.dumps({"reqId": base + 5, "payload": "x"})),
                (base + 6, d.request(base + 6, "alice no at")),
                (base + 7, d.request(base + 7, alice, daemon=other_dev)),
            ):
                got = await d.ask(rid, value)
                assert [r["respType"] for r in got] == ["nack"], (rid, got)
                assert got[0]["reqId"] == rid

            # not in --daemon-atsigns: no reply at all
            await o.send(base + 8, o.request(base + 8, alice))
            assert await o.replies(base + 8, timeout=2.0) == []

            # the policy file changes on disk: the next decision follows, without a restart
            write_policy(pol, policy_text(bob, '"localhost:3389"'))
            got = await d.ask(base + 9, d.request(base + 9, bob))
            assert got[-1]["payload"] == {
                "authorized": True,
                "message": None,
                "permitOpen": ["localhost:3389"],
            }
            got = await d.ask(base + 10, d.request(base + 10, alice))
            assert got[-1]["payload"]["authorized"] is False

            # a broken edit keeps the last good policy
            write_policy(pol, '[users."@bob"\nbroken = ')
            got = await d.ask(base + 11, d.request(base + 11, bob))
            assert got[-1]["payload"]["permitOpen"] == ["localhost:3389"]

            # P3: the audit trail as self notifications, encrypted with the self key
            mon = me.monitor(r"logs\.policy\.sshnp", since=0, self_notifications=True)
            seen: list[dict[str, Any]] = []
            deadline = time.monotonic() + 10
            async with mon:
                while len(seen) < 4 and time.monotonic() < deadline:
                    n = await mon.next(timeout=max(0.1, deadline - time.monotonic()))
                    assert n.from_atsign == npa and n.is_encrypted
                    iv = b64d(n.metadata.iv_nonce, what="iv", length=16)
                    plain = aes.decrypt_b64(np_env.keys(npa).self_encryption_key, n.value, iv)
                    seen.append(json.loads(plain))
            assert seen and all(s["daemon"] == dev for s in seen)
            first = next(s for s in seen if s["payload"]["request"]["reqId"] == base + 1)
            assert first["payload"]["response"]["payload"]["authorized"] is True

    asyncio.run(asyncio.wait_for(scenario(), 60))

    records = [json.loads(line) for line in audit_path.read_text().splitlines()]
    by_id = {r["reqId"]: r for r in records}
    assert by_id[base_id(records, 1)]["authorized"] is True
    assert by_id[base_id(records, 2)]["authorized"] is False
    assert {r["event"] for r in records} >= {"npa_decision", "npa_nack", "npa_ignored"}
    ignored = [r for r in records if r["event"] == "npa_ignored"]
    assert len(ignored) == 1 and ignored[0]["sender"] == outsider
    assert oct(audit_path.stat().st_mode & 0o777) == "0o600"
    assert "keeping the last good policy" in proc.stderr
    proc.stop()
    assert proc.popen.returncode == 0


def base_id(records: list[dict[str, Any]], offset: int) -> int:
    base = min(r["reqId"] for r in records) - 1
    return base + offset


def test_npa_default_answers_any_daemon_and_bad_policy_fails_fast(np_env, tmp_path: Path) -> None:
    npa, dev = np_env.atsign("npa"), np_env.atsign("dev")
    bad = tmp_path / "bad.toml"
    bad.write_text("[groups.x]\nmembers = []\n")
    r = np_env.run("npa", "-a", npa, "--policy", str(bad), timeout=30)
    assert r.returncode == 2 and "unknown key 'members'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1

    pol = tmp_path / "p.toml"
    write_policy(pol, policy_text("@carol", '"*:*"'))
    np_env.spawn("npa", "-a", npa, "--policy", str(pol), "--no-self-audit", ready="monitor started")

    async def scenario() -> None:
        async with await connect(np_env, dev) as dc:
            d = Daemon(dc, npa)
            await d.start()
            rid = int(time.time() * 1_000_000)
            got = await d.ask(rid, d.request(rid, "@carol"))
            assert got[-1]["payload"] == {
                "authorized": True,
                "message": None,
                "permitOpen": ["*:*"],
            }

    asyncio.run(asyncio.wait_for(scenario(), 40))


def test_handle_request_sans_io(tmp_path: Path) -> None:
    pol = tmp_path / "p.toml"
    pol.write_text(policy_text("@carol", '"localhost:22"'))
    store = PolicyStore(str(pol), clock=lambda: 1000.0)
    key = "request.17.auth_checks.__rpcs.sshnp"
    ok = json.dumps(
        {
            "reqId": 17,
            "payload": {"daemonAtsign": "@Dev", "daemonDeviceName": "PI", "clientAtsign": "@carol"},
        }
    )
    out = handle_request(store, "@dev", key, ok)
    assert out is not None
    assert [r.text() for r in out.replies] == [
        '{"reqId":17,"respType":"ack","payload":{}}',
        '{"reqId":17,"respType":"success","payload":'
        '{"authorized":true,"message":null,"permitOpen":["localhost:22"]}}',
    ]
    assert out.replies[1].key == "success.17.auth_checks.__rpcs"
    assert out.audit["reqId"] == 17 and out.audit["ts"] == 1000.0
    assert handle_request(store, "@dev", "ping.pi.sshnp", ok) is None
    assert handle_request(store, "@dev", key, None).replies[0].resp_type == "nack"
    big = json.dumps({"reqId": 17, "payload": {"x": "y" * 20000}})
    assert handle_request(store, "@dev", key, big).replies[0].resp_type == "nack"
    flag = json.dumps({"reqId": True, "payload": {}})
    assert (
        handle_request(store, "@dev", "request.1.auth_checks.__rpcs.sshnp", flag)
        .replies[0]
        .resp_type
        == "nack"
    )
    dropped = handle_request(store, "@dev", key, ok, daemon_atsigns=frozenset({"@other"}))
    assert dropped is not None and dropped.dropped and dropped.audit["event"] == "npa_ignored"
    import re

    assert re.search(MONITOR_REGEX, "@npa:request.12.auth_checks.__rpcs.sshnp@dev")
    assert re.search(MONITOR_REGEX, "@npa:my_pi.devices.policy.sshnp@dev")
    assert not re.search(MONITOR_REGEX, "@npa:ssh_request.pi.sshnp@dev")


@pytest.mark.skipif(
    any(importlib.util.find_spec(f"noports.cli.{t}") is None for t in ("srvd", "sshnpd", "npt")),
    reason="srvd/sshnpd/npt not in this checkout",
)
def test_sshnpd_asks_npa_end_to_end(np_env, tmp_path: Path) -> None:
    """sshnpd -p @policy + npa + srvd + npt: the policy file decides who tunnels where."""
    from noports.quickstart.rig import HttpService

    npa, dev, relay = np_env.atsign("npa"), np_env.atsign("dev"), np_env.atsign("relay")
    allowed, denied = np_env.atsign("alice"), np_env.atsign("mallory")
    web = HttpService(b"through the policy\n")
    other = HttpService(b"not granted\n")
    try:
        pol = tmp_path / "policy.toml"
        write_policy(pol, policy_text(allowed, f'"localhost:{web.port}"'))
        audit = tmp_path / "audit.jsonl"
        # started together, waited for in turn (start-up is mostly Python imports)
        procs = [
            (
                np_env.spawn("npa", "-a", npa, "--policy", str(pol), "--audit-log", str(audit)),
                "monitor started",
            ),
            (
                np_env.spawn(
                    "srvd",
                    "-a",
                    relay,
                    "-i",
                    "127.0.0.1",
                    "--bind",
                    "127.0.0.1",
                    "--drain-seconds",
                    "0",
                ),
                "ready: monitor started",
            ),
            (
                np_env.spawn("sshnpd", "-a", dev, "-p", npa, "-d", "pi"),
                r"Monitor .*monitor started",
            ),
        ]
        for proc, ready in procs:
            proc.wait_for(ready, 30)

        def npt(client: str, port: int, *extra: str) -> list[str]:
            return ["-f", client, "-t", dev, "-r", relay, "-d", "pi", "-p", str(port), *extra]

        tunnel = np_env.spawn("npt", *npt(allowed, web.port), ready=r"npt is listening on")
        port = int(tunnel.wait_for(r"npt is listening on [\d.]+:(\d+)").group(1))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=15) as r:
            assert r.read() == b"through the policy\n"
        tunnel.stop()

        # allowed client, a port the policy does not grant: the daemon refuses
        r = np_env.run("npt", *npt(allowed, other.port, "--dpt", "5"), timeout=60)
        assert r.returncode == 3, r.stderr
        # a client the policy does not know: the daemon ignores it (no reply at all)
        r = np_env.run("npt", *npt(denied, web.port, "--dpt", "3"), timeout=60)
        assert r.returncode == 5, r.stderr

        records = [json.loads(x) for x in audit.read_text().splitlines()]
        verdicts = {(x["clientAtsign"], x["authorized"]) for x in records}
        assert (allowed, True) in verdicts and (denied, False) in verdicts
        assert all(x["sender"] == dev and x["deviceName"] == "pi" for x in records)
    finally:
        web.close()
        other.close()


def test_rate_limit_and_bounded_heartbeats(tmp_path: Path) -> None:
    """A flooding sender is cut off (others still answered); the heartbeat table is bounded."""
    from noports.at.commands import Metadata
    from noports.at.protocol import Notification
    from noports.npa.service import NpaService, RateLimiter

    now = [0.0]
    lim = RateLimiter(2.0, 4.0, clock=lambda: now[0], max_senders=3)
    assert [lim.allow("@a") for _ in range(5)] == [True] * 4 + [False]
    now[0] += 1.0  # two tokens back
    assert [lim.allow("@a") for _ in range(3)] == [True, True, False]
    assert lim.allow("@b") and lim.dropped["@a"] == 2
    for s in ("@c", "@d", "@e"):
        lim.allow(s)
    assert "@a" not in lim._buckets and len(lim._buckets) == 3
    assert RateLimiter(0, 0).allow("@x")

    class FakeClient:
        atsign = "@npa"
        sent: list[tuple[str, str]] = []

        async def notify(self, to: str, key: str, value: str, **kw: Any) -> str:
            self.sent.append((to, key))
            return "id"

    pol = tmp_path / "p.toml"
    pol.write_text(policy_text("@carol", '"localhost:22"'))
    svc = NpaService(
        FakeClient(), PolicyStore(str(pol)), self_audit=False, max_rate=1.0, max_devices=2
    )

    def note(sender: str, key: str, value: str | None) -> Notification:
        return Notification(
            id=key,
            from_atsign=sender,
            to_atsign="@npa",
            key=f"@npa:{key}{sender}",
            value=value,
            operation="update",
            epoch_millis=1,
            message_type="key",
            is_encrypted=True,
            metadata=Metadata(),
        )

    def req(sender: str, rid: int) -> Notification:
        value = json.dumps(
            {
                "reqId": rid,
                "payload": {
                    "daemonAtsign": sender,
                    "daemonDeviceName": "pi",
                    "clientAtsign": "@carol",
                },
            }
        )
        return note(sender, f"request.{rid}.auth_checks.__rpcs.sshnp", value)

    async def flood() -> None:
        answered = [await svc.dispatch(req("@flood", i)) for i in range(1, 31)]
        assert sum(a is not None for a in answered) == 10  # the burst, then nothing
        assert await svc.dispatch(req("@calm", 99)) is not None
        for dev in ("d1", "d2", "d3"):
            await svc.dispatch(note("@calm", f"{dev}.devices.policy.sshnp", '{"devicename":1}'))

    asyncio.run(flood())
    assert len(FakeClient.sent) == 22  # ack + success for 11 requests
    assert list(svc.devices) == [("@calm", "d2"), ("@calm", "d3")]
