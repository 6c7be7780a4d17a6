"""sshnpd: the v4 (ephemeral key) flow, ``-s`` keys (T9), refusals, require-aead, hide, restart.

Real daemon processes, the in-process relay engine, a real OpenSSH sshd; the test is the client.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import socket
import time

from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from noports.at.client import AtClient
from noports.errors import KeyNotFoundError
from noports.sshnpd.sessions import AEAD_REQUIRED
from noports.tunnel import open_client_single
from tests.test_sshnpd_e2e import READY, ssh_session, start_daemon
from tests.test_sshnpd_support import NpClient, arun, run_ssh


def new_pubkey() -> str:
    pub = ed25519.Ed25519PrivateKey.generate().public_key()
    return pub.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_log(proc, pattern: str, count: int = 1, timeout: float = 15.0) -> None:
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while len(rx.findall(proc.stderr)) < count:
        assert time.monotonic() < deadline, (
            f"{pattern!r} x{count} not in log:\n{proc.stderr[-3000:]}"
        )
        await asyncio.sleep(0.1)


async def v4_session(c: NpClient, sshd, tmp_path, ak_path) -> str:
    """Legacy form: no relay auth for the daemon, no encryption, ephemeral key; double ssh."""
    g = await c.grant(auth_b=False)
    reply = await c.send("ssh_request", c.ssh_payload(g, auth_to_rvd=False, encrypt=False), g.sid)
    payload = await c.verify_reply(reply)
    assert payload["sessionAESKey"] is None and payload["sessionIV"] is None
    pem = payload["ephemeralPrivateKey"]
    assert pem.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    lines = [ln for ln in ak_path.read_text().splitlines() if g.sid in ln]
    assert len(lines) == 1
    assert lines[0].startswith(
        f'command="echo \\"ssh session complete\\";sleep 20",PermitOpen="localhost:{sshd.port}"'
        " ssh-ed25519 "
    )
    assert lines[0].endswith(f" sshnp_ephemeral_{g.sid}")
    eph = tmp_path / f"eph_{g.sid}"
    eph.write_text(pem)
    os.chmod(eph, 0o600)
    tun = await open_client_single("127.0.0.1", g.port_a, auth_line=c.auth_line(g), timeout=15)
    fwd = free_port()
    # the official v4 client: ssh with the ephemeral key, a local forward to the device's sshd
    fw = await asyncio.create_subprocess_exec(
        "ssh",
        "-F",
        "/dev/null",
        "-i",
        str(eph),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        f"UserKnownHostsFile={sshd.known_hosts}",
        "-o",
        "ExitOnForwardFailure=yes",
        "-N",
        "-L",
        f"{fwd}:localhost:{sshd.port}",
        "-p",
        str(tun.port),
        f"{sshd.user}@127.0.0.1",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        for _ in range(100):
            try:
                r, w = await asyncio.open_connection("127.0.0.1", fwd)
                w.close()
                break
            except OSError:
                assert fw.returncode is None, (await fw.stderr.read()).decode()
                await asyncio.sleep(0.1)
        rc, out, err = await run_ssh(sshd, fwd, "echo", "TEST", "PASSED")
        assert rc == 0 and out.strip() == "TEST PASSED", err
    finally:
        fw.kill()
        await fw.wait()
        await tun.close()
    return g.sid


def test_v4_publickeys_and_refusals(np_env, tmp_path):
    ak = np_env.home / ".ssh" / "authorized_keys"
    daemon, client, sshd, proc = start_daemon(
        np_env, "-s", "-S", "no-agent-forwarding", "--po", f"localhost:{sshd_port(np_env)}"
    )
    stranger = np_env.atsign("stranger")

    async def main() -> None:
        async with (
            NpClient(np_env, client, daemon, "dev1") as c,
            NpClient(np_env, stranger, daemon, "dev1") as s,
        ):
            info = await c.ping()
            assert info["supportedFeatures"]["acceptsPublicKeys"] is True
            issued = time.monotonic()  # the daemon issues the key after this
            sid = await v4_session(c, sshd, tmp_path, ak)

            # -s: malicious keys leave the file byte-identical; a valid key lands exactly once
            before = ak.read_bytes()
            good = new_pubkey()
            rsa_blob = base64.b64encode(b"\x00\x00\x00\x07ssh-rsa" + b"\x00" * 20).decode()
            bad = [
                good + "\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAttacker attacker",
                'command="sh" ' + good,
                "ssh-dss AAAAB3NzaC1kc3MAAACBAP",
                good + "\x00",
                good + "\r",
                "ssh-ed25519 " + rsa_blob,
                "ssh-ed25519 " + "A" * 20000,
                'restrict,command="id" ' + good,
                "not a key",
            ]
            for b in bad:
                await c.at.notify(daemon, "sshpublickey.dev1", b, namespace="sshnp")
            await wait_log(proc, r"ssh public key from \S+ refused", len(bad))
            assert ak.read_bytes() == before
            for _ in range(2):
                await c.at.notify(daemon, "sshpublickey.dev1", good, namespace="sshnp")
            await wait_log(proc, r"ssh public key from \S+ already present", 1)
            text = ak.read_text()
            assert text.count(good.split()[1]) == 1
            assert f"no-agent-forwarding {good}\n" in text
            assert oct(ak.stat().st_mode & 0o777) == "0o600"
            # ... and the key works with sshd (the line is real)
            # refusals
            g, g2 = await c.grant(), await c.grant()
            bad_sig, bad_npt, stranger_ping = await asyncio.gather(
                c.send(
                    "ssh_request",
                    c.ssh_payload(g),
                    g.sid,
                    timeout=3,
                    key_to_sign=s.at.keys.encrypt_private,
                ),
                c.send(
                    "npt_request",
                    c.npt_payload(g2, "localhost", sshd.port),
                    g2.sid,
                    timeout=10,
                    key_to_sign=s.at.keys.encrypt_private,
                ),
                s.ping(timeout=3),
            )
            assert bad_sig is None  # official: a bad ssh_request signature gets no reply
            assert bad_npt is not None and bad_npt.startswith("Signature not verified: ")
            assert stranger_ping is None
            await wait_log(
                proc,
                rf"ignoring a notification from {re.escape(stranger)}: not in"
                r" --managers list",
            )
            g = await c.grant()
            r = await c.send("npt_request", c.npt_payload(g, "localhost", 1), g.sid)
            assert r == "Daemon does not permit connections to localhost:1"
            g = await c.grant()
            r = await c.send("npt_request", c.npt_payload(g, "LOCALHOST", 3389), g.sid)
            assert r == "Daemon does not permit connections to localhost:3389"
            g = await c.grant()
            p = c.ssh_payload(g)
            p["port"] = "22"
            r = await c.send("ssh_request", p, g.sid)
            assert r == "ssh_request field port must be an integer in 1..65535"
            assert "\n" not in r
            r = await c.send("ssh_request", None, g.sid, raw="{not json", timeout=2)
            assert r is None
            await wait_log(proc, r"ssh_request from \S+ refused: ssh_request is not a signed")
            # the ephemeral authorized_keys line goes away 15 s after it was issued
            if time.monotonic() - issued < 14:
                assert sid in ak.read_text()
            while sid in ak.read_text() and time.monotonic() - issued < 25:
                await asyncio.sleep(0.25)
            removed_after = time.monotonic() - issued
            assert sid not in ak.read_text(), removed_after
            assert removed_after >= 14.5

    arun(main(), 150)
    assert "PRIVATE KEY" not in proc.stderr


def sshd_port(np_env) -> int:
    return np_env.sshd().port


def test_require_aead_hide_and_restart(np_env, tmp_path):
    daemon, client, sshd, proc = start_daemon(
        np_env, "--require-aead", "--po", f"localhost:{sshd_port(np_env)}", device="dev2"
    )

    async def records(at: AtClient) -> tuple[str, dict]:
        user = await at.get("username.dev2.sshnp", shared_by=daemon)
        info = json.loads(await at.get("device_info.dev2.sshnp", shared_by=daemon))
        return user, info

    async def part1() -> None:
        async with NpClient(np_env, client, daemon, "dev2") as c:
            user, info = await records(c.at)
            assert user and info["devicename"] == "dev2"
            g = await c.grant()
            r = await c.send("ssh_request", c.ssh_payload(g), g.sid)
            assert r == AEAD_REQUIRED
            g = await c.grant()
            r = await c.send(
                "npt_request", c.npt_payload(g, "localhost", sshd.port, twin_keys=True), g.sid
            )
            assert r == AEAD_REQUIRED
            # a long session; the daemon is stopped under it
            g = await c.grant()
            payload = await c.verify_reply(
                await c.send("ssh_request", c.ssh_payload(g, aead=True), g.sid)
            )
            tun = await open_client_single(
                "127.0.0.1",
                g.port_a,
                auth_line=c.auth_line(g),
                crypto=c.tunnel_crypto(payload, g.sid),
                timeout=15,
            )
            ssh = await asyncio.create_subprocess_exec(
                *sshd.ssh_args("echo", "UP;", "sleep", "30", port=tun.port),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
            assert await asyncio.wait_for(ssh.stdout.readline(), 20) == b"UP\n"
            proc.signal(signal.SIGTERM)
            # the in-process tunnel is torn down with the daemon (no --drain)
            assert await asyncio.wait_for(ssh.wait(), 15) != 0
            await tun.close()

    arun(part1(), 90)
    assert proc.wait(15) == 0
    proc2 = np_env.spawn(
        "sshnpd",
        "-a",
        daemon,
        "-m",
        client,
        "-d",
        "dev2",
        "-h",
        "--local-sshd-port",
        str(sshd.port),
        "--po",
        f"localhost:{sshd.port}",
        "-u",
        "--drain",
        "20",
        "-v",
        ready=READY,
    )
    assert "-u, --un-hide is deprecated" in proc2.stderr

    async def part2() -> None:
        async with NpClient(np_env, client, daemon, "dev2") as c:
            for name in ("username", "device_info"):
                try:
                    await c.at.get(f"{name}.dev2.sshnp", shared_by=daemon)
                except KeyNotFoundError:
                    continue
                raise AssertionError(f"{name} still shared with -h")
            await ssh_session(c, sshd)  # the new daemon serves new sessions
            sid = await v4_session(c, sshd, tmp_path, ak)
            assert sid in ak.read_text()
            # --drain: a running session may finish after SIGTERM; no new work is taken
            g = await c.grant()
            payload = await c.verify_reply(
                await c.send("ssh_request", c.ssh_payload(g, aead=True), g.sid)
            )
            tun = await open_client_single(
                "127.0.0.1",
                g.port_a,
                auth_line=c.auth_line(g),
                crypto=c.tunnel_crypto(payload, g.sid),
                timeout=15,
            )
            ssh = asyncio.create_task(run_ssh(sshd, tun.port, "sleep", "3;", "echo", "DONE"))
            await asyncio.sleep(1.0)
            proc2.signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            assert await c.ping(timeout=2) is None
            rc, out, err = await ssh
            assert rc == 0 and out.strip() == "DONE", err
            await tun.close()
            return sid

    ak = np_env.home / ".ssh" / "authorized_keys"
    sid = arun(part2(), 60)
    assert proc2.wait(15) == 0
    assert sid not in ak.read_text()  # pending ephemeral keys are removed at exit
    assert "removed pending ephemeral keys of 1 session(s)" in proc2.stderr
    assert "draining 1 session(s)" in proc2.stderr
    assert "sshnpd stopped" in proc2.stderr
