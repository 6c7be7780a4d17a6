"""sshnp with official command lines and files: a profile written by the official client,
``-o "-D 1080"`` (the docs' SOCKS recipe), ``-s`` with only a private key, and the mistakes
that must be reported before any network step (``-i`` missing, local port busy)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from noports.cli import sshnp as sshnp_cli
from noports.sshnp.run import ssh_command
from tests.fixtures_at import REPO

BASE = ["-f", "@alice", "-t", "@bob", "-r", "@relay", "-d", "dev1"]


def _sshnp(*argv: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOPORTS_")}
    # an unreachable root: any network step would fail differently (and later)
    env.update(HOME=str(home), PYTHONPATH=str(REPO), NOPORTS_ROOT="127.0.0.1:1")
    return subprocess.run([sys.executable, "-m", "noports.cli.sshnp", *argv], env=env,
                          cwd=str(REPO), capture_output=True, text=True, timeout=30)


def test_official_profile_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    d = tmp_path / ".sshnp" / "config"
    d.mkdir(parents=True)
    # as the official writer lays it out: KEY=value lines joined by \n, no trailing newline,
    # PROFILE_NAME first, ROOT_DOMAIN from older writers, lists comma-joined
    (d / "my_pi.env").write_text("\n".join([
        "PROFILE_NAME=my pi", "FROM=@alice", "TO=@bob", "SRVD=@relay", "DEVICE=pi",
        "LOCAL_PORT=0", "SEND_SSH_PUBLIC_KEY=false", "LOCAL_SSH_OPTIONS=-D 1080,-C",
        "REMOTE_USER_NAME=pi", "ROOT_DOMAIN=root.atsign.org", "REMOTE_SSHD_PORT=22",
        "AUTHENTICATE_CLIENT_TO_RVD=true", "AUTHENTICATE_DEVICE_TO_RVD=true",
        "ENCRYPT_RVD_TRAFFIC=true", "RELAY_AUTH_MODE=payload", "SOME_FUTURE_KEY=1",
    ]))  # fmt: skip
    a = sshnp_cli.parse(["--profile", "my pi"])
    assert (a.from_, a.to, a.srvd, a.device, a.remote_user_name) == (
        "@alice", "@bob", "@relay", "pi", "pi")  # fmt: skip
    assert a.local_ssh_argv == ["-D", "1080", "-C"]
    assert a.encrypt and a.auth_client and a.auth_device and not a.send_ssh_public_key


def test_minus_o_as_the_official_client(tmp_path: Path) -> None:
    key = tmp_path / "id"
    key.write_text("x")
    a = sshnp_cli.parse([*BASE, "-o", "-D 1080", "-o", "Compression=yes,-L '8080:h:80'"])
    assert a.local_ssh_argv == ["-D", "1080", "-o", "Compression=yes", "-L", "8080:h:80"]
    cmd = ssh_command(a, 40000, "pi")
    i = cmd.index("-D")
    assert cmd[i:i + 2] == ["-D", "1080"] and cmd[-1] == "pi@localhost"
    if shutil.which("ssh"):  # OpenSSH accepts the command line (-G: print config, no connect)
        g = subprocess.run([*cmd[:-1], "-G", cmd[-1]], capture_output=True, text=True,
                           timeout=10)
        assert g.returncode == 0, g.stderr
        assert "dynamicforward 1080" in g.stdout.lower()


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen not installed")
def test_minus_s_derives_the_public_key_from_the_private_key(tmp_path: Path) -> None:
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "me", "-f", str(key)],
                   check=True, timeout=30)
    pub = (tmp_path / "id_ed25519.pub").read_text().split()
    (tmp_path / "id_ed25519.pub").unlink()  # the official client does not need it
    a = sshnp_cli.parse([*BASE, "-s", "-i", str(key)])
    assert a.public_key_text.split()[:2] == pub[:2]
    enc = tmp_path / "id_enc"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret pw", "-f", str(enc)],
                   check=True, timeout=30)
    (tmp_path / "id_enc.pub").unlink()
    r = _sshnp(*BASE, "-s", "-i", str(enc), home=tmp_path)
    assert r.returncode == 2 and "--identity-passphrase" in r.stderr


def test_mistakes_found_before_any_network_step(tmp_path: Path) -> None:
    t0 = time.monotonic()
    r = _sshnp(*BASE, "-i", str(tmp_path / "missing"), home=tmp_path)
    assert r.returncode == 4, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"sshnp: error: -i {tmp_path / 'missing'}: no such file (the ssh private key for the "
        "session)"]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = _sshnp(*BASE, "-l", str(port), home=tmp_path)
    assert r.returncode == 2 and f"local port {port} is already in use" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert time.monotonic() - t0 < 20  # no 20 s daemon wait: nothing was sent
    r = _sshnp(*BASE, "--rvd", "@old", "--legacy-daemon", "--dpt", "1", home=tmp_path)
    assert "--rvd is no longer supported" in r.stderr and r.returncode == 4, r.stderr
    assert "@alice_key.atKeys does not exist" in r.stderr  # the next local check


def test_ssh_config_pins_root_ca_and_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from noports.cli.sshconfig import build_parser
    from noports.sshnp.sshconfig import host_block

    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NOPORTS_ROOT", "127.0.0.1:6464")
    monkeypatch.setenv("NOPORTS_CA_FILE", "ca.pem")
    ns = build_parser().parse_args([*BASE, "-k", "keys.atKeys", "-i", "id"])
    block = host_block(ns)
    proxy = next(ln for ln in block.splitlines() if "ProxyCommand" in ln)
    assert "--root 127.0.0.1:6464" in proxy and f"--ca-file {ca}" in proxy
    assert f"-k {tmp_path / 'keys.atKeys'}" in proxy
    assert f"IdentityFile {tmp_path / 'id'}" in block
    prog = proxy.split()[1]
    assert os.path.isabs(prog), proxy  # sshnp found on PATH, or this python, by full path


def test_save_profile_writes_the_official_layout_and_reads_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = _sshnp(*BASE, "-u", "pi", "-o", "-D 1080", "--save-profile", "my pi", home=tmp_path)
    assert r.returncode == 0, r.stderr
    path = tmp_path / ".sshnp" / "config" / "my_pi.env"
    assert path.read_text() == "\n".join([
        "PROFILE_NAME=my pi", "FROM=@alice", "TO=@bob", "SRVD=@relay", "DEVICE=dev1",
        "LOCAL_PORT=0", "SEND_SSH_PUBLIC_KEY=false", "LOCAL_SSH_OPTIONS=-D 1080",
        "REMOTE_USER_NAME=pi", "ROOT_DOMAIN=root.atsign.org", "REMOTE_SSHD_PORT=22",
        "AUTHENTICATE_CLIENT_TO_RVD=true", "AUTHENTICATE_DEVICE_TO_RVD=true",
        "ENCRYPT_RVD_TRAFFIC=true"])  # fmt: skip
    monkeypatch.setenv("HOME", str(tmp_path))
    a = sshnp_cli.parse(["--profile", "my pi"])
    assert (a.from_, a.to, a.srvd, a.device, a.remote_user_name) == (
        "@alice", "@bob", "@relay", "dev1", "pi")  # fmt: skip
    assert a.local_ssh_argv == ["-D", "1080"]
    r = _sshnp(*BASE, "--save-profile", "my pi", home=tmp_path)
    assert r.returncode == 2 and "already exists" in r.stderr
