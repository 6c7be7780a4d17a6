"""sshnpd reload (SIGHUP) and ``--check-config``, with real processes.

The real sshnpd reads the official YAML config file; the embedded atServer, the relay engine
and a real OpenSSH sshd carry an ssh session (``cat`` echoing lines) across the reload. The
reload swaps the manager: the client refused before is served after and the old one ignored,
while the open tunnel keeps carrying data. A broken file on reload is one logged line and
the running configuration stays.
"""

from __future__ import annotations

import asyncio
import signal

import pytest

from noports.tunnel import open_client_single
from tests.test_sshnpd_e2e import READY
from tests.test_sshnpd_support import NpClient, arun

pytestmark = pytest.mark.timeout(150)


def nth(pattern: str, n: int) -> str:
    """A regex that matches once ``pattern`` occurred ``n`` times."""
    return rf"(?s)(?:{pattern}.*){{{n - 1}}}{pattern}"


def write_config(
    path, daemon: str, manager: str, sshd_port: int, extra: str = "", po: str | None = None
) -> None:
    path.write_text(
        f'atsign:\n  atsign: "{daemon}"\n'
        f'access:\n  managers: "{manager}"\n  permitopen: "{po or f"localhost:{sshd_port}"}"\n'
        f"device:\n  name: rdev\n"
        f"ssh:\n  sshd-port: {sshd_port}\n{extra}"
    )


def test_sshnpd_check_config_exit_codes(np_env, tmp_path):
    daemon, client = np_env.atsign("device"), np_env.atsign("client")
    cfg = tmp_path / "sshnpd.yaml"
    write_config(cfg, daemon, client, 22)
    r = np_env.run("sshnpd", "--config", str(cfg), "--check-config")
    assert r.returncode == 0, r.stderr
    assert "configuration is valid" in r.stdout and str(cfg) in r.stdout
    # an unknown key: exit 2, one line naming the key and its line
    write_config(cfg, daemon, client, 22, "runtime:\n  verbos: true\n")
    r = np_env.run("sshnpd", "--config", str(cfg), "--check-config")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "runtime.verbos" in lines[0] and "unknown" in lines[0], r.stderr
    # semantic errors too: neither managers nor policy, a bad permit-open entry
    r = np_env.run("sshnpd", "-a", daemon, "--check-config")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "--managers" in r.stderr
    r = np_env.run("sshnpd", "-a", daemon, "-m", client, "--po", "bad host", "--check-config")
    assert r.returncode == 2 and "permit-open" in r.stderr and "Traceback" not in r.stderr
    # the environment is part of what is checked
    r = np_env.run(
        "sshnpd", "-a", daemon, "--check-config", env={"NOPORTS_SSHNPD_MANAGERS": client}
    )
    assert r.returncode == 0, r.stderr


async def _ssh_cat(sshd, port: int) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *sshd.ssh_args("cat", port=port),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _echo(p: asyncio.subprocess.Process, line: str) -> str:
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write(line.encode() + b"\n")
    await p.stdin.drain()
    return (await asyncio.wait_for(p.stdout.readline(), 20)).decode().strip()


def test_sshnpd_sighup_reload_swaps_managers_keeps_tunnel(np_env, tmp_path):
    daemon, alice, bob = np_env.atsign("device"), np_env.atsign("alice"), np_env.atsign("bob")
    sshd = np_env.sshd()
    cfg = tmp_path / "sshnpd.yaml"
    write_config(cfg, daemon, alice, sshd.port)
    proc = np_env.spawn("sshnpd", "--config", str(cfg), "-v", ready=READY, timeout=30)

    async def main() -> None:
        async with NpClient(np_env, bob, daemon, "rdev") as b:
            assert await b.ping(timeout=3) is None  # bob is not a manager yet: ignored
        async with NpClient(np_env, alice, daemon, "rdev") as a:
            assert await a.ping() is not None
            g = await a.grant()
            reply = await a.send("ssh_request", a.ssh_payload(g), g.sid)
            assert reply is not None and reply.startswith("{"), reply
            payload = await a.verify_reply(reply)
            tun = await open_client_single(
                "127.0.0.1",
                g.port_a,
                auth_line=a.auth_line(g),
                crypto=a.tunnel_crypto(payload, g.sid),
                timeout=15,
            )
            ssh = await _ssh_cat(sshd, tun.port)
            try:
                assert await _echo(ssh, "before reload") == "before reload"
                # bob replaces alice, permit-open grows; the sshd port needs a restart
                po = f"localhost:{sshd.port},localhost:3389"
                write_config(cfg, daemon, bob, sshd.port + 1, po=po)
                proc.signal(signal.SIGHUP)
                await asyncio.to_thread(proc.wait_for, "configuration reloaded", 20)
                # the open tunnel still carries data after the reload
                for i in range(3):
                    assert await _echo(ssh, f"after reload {i}") == f"after reload {i}"
                assert ssh.stdin is not None
                ssh.stdin.close()
                assert await asyncio.wait_for(ssh.wait(), 20) == 0
            finally:
                if ssh.returncode is None:
                    ssh.kill()
                    await ssh.wait()
                await tun.close()
            assert await a.ping(timeout=3) is None  # alice is no longer served
        async with NpClient(np_env, bob, daemon, "rdev") as b:
            info = await b.ping()
            assert info is not None
            assert info["allowedServices"] == [f"localhost:{sshd.port}", "localhost:3389"]

    arun(main(), 120)
    assert "configuration reloaded: managers, permit_open" in proc.stderr
    assert "local_sshd_port changed; it takes effect after a restart" in proc.stderr

    # a broken file: one error line, the running configuration (bob) is kept
    cfg.write_text(cfg.read_text() + "runtime:\n  verbos: true\n")
    proc.signal(signal.SIGHUP)
    proc.wait_for("configuration reload failed", 20)
    failed = [ln for ln in proc.stderr.splitlines() if "configuration reload failed" in ln]
    assert len(failed) == 1 and "runtime.verbos" in failed[0], proc.stderr

    async def bob_still_served() -> None:
        async with NpClient(np_env, bob, daemon, "rdev") as b:
            assert await b.ping() is not None

    arun(bob_still_served(), 60)
    proc.signal(signal.SIGTERM)
    assert proc.wait(30) == 0


def unit_commands(unit: str, key: str, subst: dict[str, str]) -> list[list[str]]:
    """The ``key=`` command lines of a packaging/systemd unit, paths replaced by ``subst``."""
    import shlex
    import sys
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "packaging" / "systemd" / unit).read_text()
    bindir = Path(sys.executable).parent
    if not (bindir / "sshnpd").exists():
        pytest.skip("the noports programs are not installed next to this interpreter")
    subst = {"/opt/noports/bin/": f"{bindir}/", **subst}
    out = []
    for line in text.splitlines():
        if line.startswith(key + "="):
            cmd = line[len(key) + 1 :]
            for old, new in subst.items():
                cmd = cmd.replace(old, new)
            out.append(shlex.split(cmd))
    return out


def test_sshnpd_unit_checks_config_before_start_and_reload(tmp_path):
    import os
    import subprocess

    daemon, client = "@dev1", "@alice"
    cfg = tmp_path / "dev1.toml"
    subst = {"/etc/noports/sshnpd/%i.toml": str(cfg), "/var/lib/noports/sshnpd/%i": str(tmp_path)}
    pre = unit_commands("noports-sshnpd@.service", "ExecStartPre", subst)
    reload = unit_commands("noports-sshnpd@.service", "ExecReload", subst)
    assert len(pre) == 1 and "--check-config" in pre[0]
    assert reload[0] == pre[0] and reload[-1] == ["/bin/kill", "-HUP", "$MAINPID"]
    env = {"HOME": str(tmp_path), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    cfg.write_text(f'atsign = "{daemon}"\nmanagers = ["{client}"]\ndevice = "dev1"\n')
    r = subprocess.run(pre[0], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    cfg.write_text(f'atsign = "{daemon}"\nmanagerz = ["{client}"]\n')
    r = subprocess.run(pre[0], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and "managerz" in r.stderr


def test_sshnpd_sighup_adds_then_drops_the_policy_service_and_metrics(np_env, tmp_path):
    """A TOML config this time. A reload that adds ``policy-manager`` and ``metrics``: the
    npa service then decides and /healthz answers; one that removes the policy: its clients
    are ignored again, the managers still served."""
    from tests.test_srvd_metrics import free_port, get

    daemon, mgr, carol = np_env.atsign("device"), np_env.atsign("mgr"), np_env.atsign("carol")
    policy = np_env.atsign("policy")
    pol = tmp_path / "policy.toml"
    pol.write_text(f'[users."{carol}"]\ndevice_names = {{ "rdev" = ["localhost:22"] }}\n')
    np_env.spawn("npa", "-a", policy, "--policy", str(pol), ready="monitor started", timeout=30)
    cfg = tmp_path / "sshnpd.toml"
    base = f'atsign = "{daemon}"\nmanagers = ["{mgr}"]\ndevice = "rdev"\n'
    cfg.write_text(base)
    proc = np_env.spawn("sshnpd", "--config", str(cfg), ready=READY, timeout=30)
    port = free_port()

    async def ping(who: str, timeout: float = 10.0):
        async with NpClient(np_env, who, daemon, "rdev") as c:
            return await c.ping(timeout=timeout)

    assert arun(ping(carol, 3)) is None  # no policy service yet: carol is ignored
    cfg.write_text(base + f'policy-manager = "{policy}"\nmetrics = "127.0.0.1:{port}"\n')
    proc.signal(signal.SIGHUP)
    proc.wait_for(nth("configuration reloaded", 1), 20)
    # with a policy service the default permit-open changes too (as at start-up)
    assert "configuration reloaded: metrics, permit_open, policy_manager" in proc.stderr
    assert arun(ping(carol)) is not None  # the policy service lets carol in
    assert arun(ping(mgr)) is not None
    status, body = get(f"http://127.0.0.1:{port}/healthz")
    assert status == 200 and body.startswith("ok"), body
    cfg.write_text(base)
    proc.signal(signal.SIGHUP)
    proc.wait_for(nth("configuration reloaded", 2), 20)
    assert arun(ping(carol, 3)) is None
    assert arun(ping(mgr)) is not None
    # a metrics address that cannot be bound: logged, the daemon keeps serving
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cfg.write_text(base + f'metrics = "127.0.0.1:{busy.getsockname()[1]}"\n')
        proc.signal(signal.SIGHUP)
        proc.wait_for("reload: cannot serve metrics", 20)
    assert arun(ping(mgr)) is not None
    proc.signal(signal.SIGTERM)
    assert proc.wait(30) == 0
