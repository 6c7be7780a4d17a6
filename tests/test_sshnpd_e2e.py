"""sshnpd end to end: the real daemon process, the relay engine, a real OpenSSH sshd.

The test acts as the client exactly as the spec describes (ping, relay session, signed
request, D5 reply, client tunnel end, then OpenSSH through the tunnel).
"""

from __future__ import annotations

import asyncio
import os
import time

from noports.tunnel import ClientMulti, open_client_single
from tests.test_sshnpd_support import NpClient, arun, run_ssh

READY = r"Monitor .*monitor started"


def start_daemon(np_env, *extra: str, device: str = "dev1", manager: str | None = None):
    daemon = np_env.atsign("device")
    client = manager or np_env.atsign("client")
    sshd = np_env.sshd()
    proc = np_env.spawn(
        "sshnpd",
        "-a",
        daemon,
        "-m",
        client,
        "-d",
        device,
        "--local-sshd-port",
        str(sshd.port),
        "-v",
        *(extra or ("--po", f"localhost:{sshd.port}")),
        ready=READY,
    )
    return daemon, client, sshd, proc


async def ssh_session(c: NpClient, sshd, **req) -> tuple[dict, str]:
    g = await c.grant()
    reply = await c.send("ssh_request", c.ssh_payload(g, **req), g.sid)
    assert reply is not None and reply.startswith("{"), reply
    payload = await c.verify_reply(reply)
    assert payload["status"] == "connected" and payload["sessionId"] == g.sid
    crypto = c.tunnel_crypto(payload, g.sid)
    tun = await open_client_single(
        "127.0.0.1", g.port_a, auth_line=c.auth_line(g), crypto=crypto, timeout=15
    )
    try:
        rc, out, err = await run_ssh(sshd, tun.port, "echo", "TEST", "PASSED")
    finally:
        await tun.close()
    assert rc == 0 and out.strip() == "TEST PASSED", err
    return payload, type(crypto).__name__ + ("-twin" if getattr(crypto, "twin", False) else "")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_ping_sessions_all_modes_and_npt(np_env):
    daemon, client, sshd, proc = start_daemon(np_env, device="dev1")
    secrets: list[str] = []
    baseline: list[int] = []

    async def main() -> None:
        async with NpClient(np_env, client, daemon, "dev1") as c:
            info = await c.ping()
            baseline.append(fd_count(proc.pid))
            assert info is not None
            assert info["devicename"] == "dev1"
            assert list(info) == [
                "devicename",
                "deviceGroupName",
                "version",
                "corePackageVersion",
                "supportedFeatures",
                "authModes",
                "allowedServices",
                "npCpVersion",
                "publicSigningKeyUri",
            ]
            assert info["authModes"] == ["payload", "escr"]
            assert info["publicSigningKeyUri"].startswith("public:_apsk.")
            f = info["supportedFeatures"]
            assert f["srAuth"] is f["srE2ee"] is f["supportsPortChoice"] is True
            assert f["supportsRamEscr"] is True
            assert f["noportsAead"] is True and f["acceptsPublicKeys"] is False
            assert info["allowedServices"] == [f"localhost:{sshd.port}"]

            payloads = []
            p, mode = await ssh_session(c, sshd)  # official default
            payloads.append(p)
            assert mode == "CtrKeys" and p["ephemeralPrivateKey"] is None
            assert "noportsAeadSecret" not in p
            p, mode = await ssh_session(c, sshd, twin_keys=True)  # twin keys
            assert mode == "CtrKeys-twin" and "aesKeyD2C" in p
            payloads.append(p)
            p, mode = await ssh_session(c, sshd, aead=True)  # strong mode
            assert mode == "AeadKeys" and "noportsAeadSecret" in p
            payloads.append(p)

            # npt to the sshd port: several parallel ssh connections over one session
            g = await c.grant()
            reply = await c.send(
                "npt_request",
                c.npt_payload(g, "localhost", sshd.port, aead=True, timeout_ms=20_000),
                g.sid,
            )
            payload = await c.verify_reply(reply)
            assert "ephemeralPrivateKey" not in payload
            payloads.append(payload)
            secrets.extend(
                v
                for pl in payloads
                for k, v in pl.items()
                if isinstance(v, str) and k not in ("status", "sessionId")
            )
            cm = await ClientMulti.open(
                "127.0.0.1",
                g.port_a,
                auth_line=c.auth_line(g),
                crypto=c.tunnel_crypto(payload, g.sid),
                timeout=20,
            )
            try:
                results = await asyncio.gather(
                    *[run_ssh(sshd, cm.port, "echo", f"TEST{i}", "PASSED") for i in range(4)]
                )
            finally:
                await cm.close()
            for i, (rc, out, err) in enumerate(results):
                assert rc == 0 and out.strip() == f"TEST{i} PASSED", err

    arun(main(), 120)
    # every session's sockets are closed once its tunnel ended (no fd leak)
    deadline = time.monotonic() + 10
    while fd_count(proc.pid) > baseline[0] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert fd_count(proc.pid) <= baseline[0], os.listdir(f"/proc/{proc.pid}/fd")
    # no wrapped key material or key names in the daemon's (verbose) log
    assert len(secrets) >= 8
    for sec in secrets:
        assert sec not in proc.stderr
    assert "sessionAESKey" not in proc.stderr and "PRIVATE KEY" not in proc.stderr
