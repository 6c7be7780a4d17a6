"""sshnp end to end (spec 13 scenarios and ours): real srvd, sshnpd, sshd, ssh and scp."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_sshnp_rig import (
    CHECK,
    Rig,
    client_processes_without_secrets,
    module_rig,
    sha256_file,
)


@pytest.fixture(scope="module")
def rig(at_server, tmp_path_factory) -> Iterator[Rig]:
    yield from module_rig(at_server, tmp_path_factory)


pytestmark = pytest.mark.timeout(150)


def _key(rig: Rig) -> list[str]:
    return ["-i", str(rig.sshd.client_key)]


def test_v5_print_and_inline(rig: Rig) -> None:
    """``v5_openssh_print`` and ``v5_openssh_inline``, in the AEAD mode; ssh's exit code."""
    rig.daemon("dev1")
    r = rig.sshnp("dev1", "-u", rig.user, *_key(rig), "-x", "--output", "json")
    assert r.returncode == 0, r.stderr
    ev = json.loads(r.stdout)
    assert ev["mode"] == "aead" and ev["argv"][0] == "ssh"
    assert "HostKeyAlias=dev1." + rig.device_atsign in ev["argv"]
    assert client_processes_without_secrets() >= 1  # the detached tunnel end is alive
    out = rig.run_cmd([*ev["argv"], *rig.ssh_opts(), *CHECK])
    assert out.returncode == 0 and "TEST PASSED" in out.stdout, out.stderr
    # plain -x prints a runnable command line (no secrets; the official shape)
    r = rig.sshnp("dev1", "-u", rig.user, *_key(rig), "-x", "--require-aead")
    assert r.returncode == 0, r.stderr
    cmd = shlex.split(r.stdout.strip())
    assert cmd[:2] == ["ssh", "-p"] and f"{rig.user}@localhost" in cmd
    out = rig.run_cmd([*cmd, *rig.ssh_opts(), *CHECK])
    assert "TEST PASSED" in out.stdout, out.stderr
    # inline: sshnp runs ssh itself with the remote command; its exit code is ours
    r = rig.sshnp(
        "dev1", "-u", rig.user, *_key(rig), "-o", "BatchMode=yes", "--", "echo `whoami` TEST PASSED"
    )
    assert r.returncode == 0 and f"{rig.user} TEST PASSED" in r.stdout, r.stderr
    r = rig.sshnp("dev1", "-u", rig.user, *_key(rig), "-q", "-o", "BatchMode=yes", "--", "exit 3")
    assert r.returncode == 3, r.stderr
    assert r.stderr.strip() == "" or "Sending" not in r.stderr  # -q: no progress lines


def test_minus_s_flag(rig: Rig, tmp_path: Path) -> None:
    """``minus_s_flag``: a fresh key is refused by a daemon without -s (feature check, exit 3)
    and installed by a daemon with -s, after which it logs in."""
    rig.daemon("devn")
    rig.daemon("devs", "-s")
    key = tmp_path / "fresh_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    r = rig.sshnp("devn", "-u", rig.user, "-i", str(key), "-s", "-x")
    assert r.returncode == 3, r.stderr
    assert "This device daemon does not accept ssh public keys from the client" in r.stderr
    r = rig.sshnp("devs", "-u", rig.user, "-i", str(key), "-s", "-x")
    assert r.returncode == 0, r.stderr
    pub = key.with_suffix(".pub").read_text().split()[1]
    assert pub in (rig.env.home / ".ssh" / "authorized_keys").read_text()
    out = rig.run_cmd([*shlex.split(r.stdout), *rig.ssh_opts(), *CHECK])
    assert "TEST PASSED" in out.stdout, out.stderr


def test_minus_u_flag(rig: Rig) -> None:
    """``minus_u_flag``: without -u the username comes from the daemon's shared record; a
    hidden daemon (-h) shares none, so the client stops with a clear reason (exit 4)."""
    rig.daemon("devshare")
    rig.daemon("devhide", "-h")
    r = rig.sshnp("devhide", *_key(rig), "-x")
    assert r.returncode == 4, r.stderr
    assert "Remote username record not shared with the client" in r.stderr
    r = rig.sshnp("devhide", "-u", rig.user, *_key(rig), "-x")
    assert r.returncode == 0, r.stderr
    rig.run_cmd([*shlex.split(r.stdout), *rig.ssh_opts(), "true"])
    r = rig.sshnp("devshare", *_key(rig), "-x")
    assert r.returncode == 0, r.stderr
    assert f"{rig.user}@localhost" in r.stdout
    out = rig.run_cmd([*shlex.split(r.stdout), *rig.ssh_opts(), *CHECK])
    assert "TEST PASSED" in out.stdout, out.stderr


def test_v4_flow(rig: Rig) -> None:
    """``v4_openssh_print``: ``--no-ad --no-et``: the daemon's ephemeral key drives a tunnel ssh
    with -L; the key file is 0600 while used and removed afterwards."""
    rig.daemon("dev1")
    r = rig.sshnp(
        "dev1",
        "-u",
        rig.user,
        *_key(rig),
        "--no-ad",
        "--no-et",
        "--remote-sshd-port",
        str(rig.sshd.port),
        "-x",
        "--output",
        "json",
    )
    assert r.returncode == 0, r.stderr
    ev = json.loads(r.stdout)
    assert ev["mode"] == "clear"
    out = rig.run_cmd([*ev["argv"], *rig.ssh_opts(), *CHECK])
    assert "TEST PASSED" in out.stdout, out.stderr
    left = [p.name for p in (rig.env.home / ".sshnp").iterdir() if p.name.startswith("ephemeral_")]
    assert left == []
    assert os.stat(rig.env.home / ".sshnp").st_mode & 0o077 == 0
    # both relay authentications off: the legacy relay request (R1L, bare session id) and
    # the v4 flow inline (sshnp runs the tunnel ssh, then the user's ssh with a command)
    r = rig.sshnp(
        "dev1",
        "-u",
        rig.user,
        *_key(rig),
        "--no-ac",
        "--no-ad",
        "--no-et",
        "--remote-sshd-port",
        str(rig.sshd.port),
        "-o",
        "BatchMode=yes",
        "--",
        "echo",
        "V4",
        "TEST",
        "PASSED",
    )
    assert r.returncode == 0 and "V4 TEST PASSED" in r.stdout, r.stderr


def test_stdio_scp_100mb_and_controlmaster(rig: Rig, tmp_path: Path) -> None:
    """``ssh-config`` Host block with ``--stdio``: scp of 100 MB (sha256 compared), then a
    ControlMaster: a second ssh goes through the master without running the ProxyCommand."""
    rig.daemon("dev1")
    r = rig.env.run(
        "sshnp",
        "ssh-config",
        "-f",
        rig.client,
        "-t",
        rig.device_atsign,
        "-r",
        rig.relay,
        "-d",
        "dev1",
        "-u",
        rig.user,
        "-i",
        str(rig.sshd.client_key),
        "--host",
        "nphost",
    )
    assert r.returncode == 0, r.stderr
    block = r.stdout
    assert "ProxyCommand" in block and "--stdio" in block
    assert f"HostKeyAlias dev1.{rig.device_atsign}" in block
    assert "ServerAliveInterval 15" in block and "StrictHostKeyChecking no" not in block
    cfg = tmp_path / "ssh_config"
    ctl_dir = Path(tempfile.mkdtemp(prefix="npcm", dir="/tmp"))  # unix socket paths are short
    ctl = ctl_dir / "m"
    cfg.write_text(
        block + f"Host nphost\n  BatchMode yes\n  LogLevel ERROR\n"
        f"  UserKnownHostsFile {rig.env.home / '.ssh' / 'known_hosts'}\n"
    )
    src = tmp_path / "big.bin"
    with open(src, "wb") as f:
        for _ in range(100):
            f.write(os.urandom(1 << 20))
    dst = f"{tmp_path}/copy.bin"
    out = rig.run_cmd(["scp", "-q", "-F", str(cfg), str(src), f"nphost:{dst}"], timeout=90)
    assert out.returncode == 0, out.stderr
    assert sha256_file(dst) == sha256_file(src)
    os.unlink(dst)
    os.unlink(src)
    master = [
        "-F",
        str(cfg),
        "-o",
        "ControlMaster=auto",
        "-o",
        f"ControlPath={ctl}",
        "-o",
        "ControlPersist=20",
    ]
    out = rig.run_cmd(["ssh", *master, "nphost", *CHECK])
    assert "TEST PASSED" in out.stdout, out.stderr
    # the second ssh cannot run a ProxyCommand at all: only the master can carry it
    out = rig.run_cmd(["ssh", *master, "-o", "ProxyCommand=false", "nphost", "echo", "REUSED"])
    assert out.returncode == 0 and "REUSED" in out.stdout, out.stderr
    rig.run_cmd(["ssh", *master, "-O", "exit", "nphost"])
    shutil.rmtree(ctl_dir, ignore_errors=True)


def test_bad_inputs(rig: Rig) -> None:
    """Unknown device (short --dpt), unauthorised client atSign, malformed flags."""
    rig.daemon("dev1")
    r = rig.sshnp("nosuchdev", "-u", rig.user, "--dpt", "2", "-x")
    assert r.returncode == 4, r.stderr  # the daemon shares dev1, not nosuchdev: wrong -d
    assert "Daemon feature check timed out" in r.stderr and "nosuchdev" in r.stderr
    # a relay that only serves another atSign answers with a nack: one line, exit 3
    picky = rig.env.atsign("picky")
    rig.env.spawn(
        "srvd",
        "-a",
        picky,
        "-i",
        "127.0.0.1",
        "--bind",
        "127.0.0.1",
        "-m",
        rig.env.atsign("someoneelse"),
        "--drain-seconds",
        "0",
        ready=r"ready: monitor started",
        timeout=30,
    )
    r = rig.env.run(
        "sshnp",
        "-f",
        rig.client,
        "-t",
        rig.device_atsign,
        "-r",
        picky,
        "-d",
        "dev1",
        "-u",
        rig.user,
        "-x",
        timeout=40,
    )
    assert r.returncode == 3, r.stderr
    assert f"the relay {picky} refused the session" in r.stderr
    assert len(r.stderr.strip().splitlines()[-1]) < 400
    stranger = rig.env.atsign("stranger")
    r = rig.sshnp("dev1", "-u", rig.user, "--dpt", "2", "-x", frm=stranger)
    assert r.returncode == 5, r.stderr
    assert "managers list" in r.stderr
    for bad in (
        ["--ssh-client", "dart"],
        ["-d", "bad name!"],
        ["-l", "70000"],
        ["--no-such-flag"],
        ["-d", "dev1\nx"],
        ["--require-aead", "--no-et"],
    ):
        args = ["-f", rig.client, "-t", rig.device_atsign, "-r", rig.relay, "-d", "dev1", *bad]
        r = rig.env.run("sshnp", *args, timeout=20)
        assert r.returncode == 2, (bad, r.stderr)
        assert "error" in r.stderr.lower()
    r = rig.env.run("sshnp", "-t", rig.device_atsign, "-r", rig.relay, timeout=20)
    assert r.returncode == 2 and "-f/--from" in r.stderr


def test_list_devices_and_stdio_eof(rig: Rig) -> None:
    """``--ls`` (stderr, official shape): a live device is Active, a stopped one Inactive, a
    hidden one absent. ``--stdio`` with stdin at EOF: only tunnel bytes (the sshd banner) on
    stdout, then a prompt exit 0."""
    rig.daemon("dev1")
    rig.daemon("devgone").stop()
    rig.daemon("devhidden", "-h")
    for extra in ([], ["-t", rig.device_atsign]):
        r = rig.env.run("sshnp", "-f", rig.client, *extra, "--ls", "--dpt", "3", timeout=30)
        assert r.returncode == 0 and r.stdout == "", r.stderr
        active, _, inactive = r.stderr.partition("Inactive Devices:")
        assert "Searching for devices..." in active and "Active Devices:" in active
        owner = "" if extra else re.escape(rig.device_atsign)
        assert re.search(rf"^  dev1{owner} - v\d\S* \(core \S+\)$", active, re.M), active
        assert "allowedServices" not in active  # official text omits it; --output json has it
        assert "  devgone" in inactive and "dev1" not in inactive
        assert "devhidden" not in r.stderr
    r = rig.env.run("sshnp", "-f", rig.client, "--ls", "--dpt", "3", "--output", "json",
                    timeout=30)
    devs = {d["device"]: d for d in json.loads(r.stdout)["devices"]}
    assert devs["dev1"]["active"] and devs["dev1"]["atsign"] == rig.device_atsign
    assert any(s.startswith("localhost:") for s in devs["dev1"]["allowedServices"])
    assert not devs["devgone"]["active"] and "devhidden" not in devs
    t0 = time.monotonic()
    p = subprocess.run(
        rig.env.argv("sshnp", *rig.base("dev1"), "--stdio"),
        env=rig.env.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(b"SSH-2.0-") and p.stdout.count(b"\n") == 1
    assert time.monotonic() - t0 < 15
