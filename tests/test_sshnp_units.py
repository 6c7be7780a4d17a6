"""sshnp/npt without the network: durations, flags and config files, the ssh-config block
(read back by the real ``ssh -G``), the -x background hand-off."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from noports.cli import npt as npt_run
from noports.cli import sshnp as sshnp_cli
from noports.cli.detach import run_detached
from noports.cli.sshconfig import build_parser as sshconfig_parser
from noports.npt.durations import NEVER_S, parse_duration
from noports.sshnp.run import ssh_command
from noports.sshnp.sshconfig import host_block

BASE = ["-f", "@alice", "-t", "@bob", "-r", "@relay"]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("1h", 3600),
        ("1h,14m,30s", 4470),
        ("7d", 604800),
        ("0", NEVER_S),
        ("90", 90),
        ("1h30m", 5400),
        ("250ms", 0.25),
        (" 2m ", 120),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1x", "h", "1h,,2m", "-5s", "400d", "1.5.2s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def _exit_code(fn, argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        fn(argv)
    return int(exc.value.code or 0)


def test_npt_flags() -> None:
    a = npt_run.parse(
        [
            *BASE,
            "-d",
            "dev1",
            "-p",
            "445",
            "-l",
            "445",
            "--local-host",
            "127.0.0.2",
            "-T",
            "1h,14m,30s",
        ]
    )
    assert a.spec.remote_port == 445 and a.spec.remote_host == "localhost"
    assert a.spec.timeout_ms == 4470_000
    assert "adjustableTimeout" in [f.value for f in a.spec.required]
    a = npt_run.parse([*BASE, "-d", "dev1", "-p", "22", "-K"])
    assert a.timeout_s == 24 * 3600  # -K without -T: 24 h, as official
    a = npt_run.parse([*BASE, "-d", "dev1", "-p", "22"])
    assert a.timeout_s == 30 and "adjustableTimeout" not in [f.value for f in a.spec.required]
    for bad in (
        ["-p", "0"],
        ["-p", "22", "-K", "-x"],
        ["-p", "22", "-T", "soon"],
        ["-p", "22", "--require-aead", "--no-et"],
        ["-p", "x"],
        [],
    ):
        assert _exit_code(npt_run.parse, [*BASE, "-d", "dev1", *bad]) == 2, bad
    assert _exit_code(npt_run.parse, [*BASE, "-d", "../etc", "-p", "22"]) == 2


def test_sshnp_config_file_profile_and_precedence(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    prof = tmp_path / ".sshnp" / "config"
    prof.mkdir(parents=True)
    (prof / "work_pi.env").write_text(
        "# profile\nFROM=@alice\nTO=@bob\nSRVD=@relay\nDEVICE=Work Pi\nLOCAL_PORT=2222\n"
        "LOCAL_SSH_OPTIONS=ServerAliveInterval=5,Compression=yes\n"
        "ENCRYPT_RVD_TRAFFIC=TRUE\nREMOTE_USER_NAME=pi\n"
    )
    a = sshnp_cli.parse(["--profile", "work_pi"])
    assert (a.from_, a.to, a.srvd, a.device, a.local_port) == (
        "@alice",
        "@bob",
        "@relay",
        "work_pi",
        2222,
    )
    assert a.local_ssh_options == ["ServerAliveInterval=5", "Compression=yes"] and a.encrypt
    a = sshnp_cli.parse(["--profile", "work_pi", "-l", "0", "-u", "root", "-o", "A=b"])
    assert a.local_port == 0 and a.remote_user_name == "root" and a.local_ssh_options == ["A=b"]
    cfg = tmp_path / "x.env"
    cfg.write_text("FROM=@alice\nTO=@bob\nSRVD=@relay\nDEVICE=dev1\nBOGUS_KEY=1\n")
    assert sshnp_cli.parse(["--config-file", str(cfg)]).device == "dev1"  # ignored, as official
    assert _exit_code(sshnp_cli.parse, ["--profile", "../x"]) == 2


def test_sshnp_flag_validation(tmp_path: Path) -> None:
    a = sshnp_cli.parse([*BASE, "-d", "dev1", "-h", "@other"])
    assert a.srvd == "@relay"  # -r wins over the legacy -h
    a = sshnp_cli.parse(["-f", "@alice", "-t", "@bob", "-h", "@legacy", "-d", "dev1"])
    assert a.srvd == "@legacy"
    for bad in (
        ["--ssh-client", "dart"],
        ["-s"],
        ["-u", "-oProxyCommand=x"],
        ["-d", "a b;c"],
        ["--stdio", "-x"],
        ["-l", "-1"],
        ["-u", "root@evil"],
    ):
        assert _exit_code(sshnp_cli.parse, [*BASE, "-d", "dev1", *bad]) == 2, bad
    key = tmp_path / "id"
    key.write_text("x")
    (tmp_path / "id.pub").write_text("ssh-ed25519 AAAA-not-base64 me\n")
    assert _exit_code(sshnp_cli.parse, [*BASE, "-d", "dev1", "-s", "-i", str(key)]) == 2


def test_ssh_command_shape(tmp_path: Path) -> None:
    key = tmp_path / "id"
    key.write_text("x")
    a = sshnp_cli.parse([*BASE, "-d", "dev1", "-i", str(key), "-o", "Compression=yes"])
    cmd = ssh_command(a, 61234, "pi")
    assert cmd[:3] == ["ssh", "-p", "61234"]
    assert "HostKeyAlias=dev1.@bob" in cmd and "StrictHostKeyChecking=accept-new" in cmd
    assert cmd[-3:] == ["pi@localhost", "-i", str(key)] and "Compression=yes" in cmd


@pytest.mark.skipif(shutil.which("ssh") is None, reason="OpenSSH client not installed")
def test_ssh_config_block_read_by_openssh(tmp_path: Path) -> None:
    ns = sshconfig_parser().parse_args(
        [
            "-f",
            "@alice",
            "-t",
            "@bob",
            "-r",
            "@relay",
            "-d",
            "Dev1",
            "-u",
            "pi",
            "-i",
            str(tmp_path / "my key%1"),
            "--root",
            "127.0.0.1:6464",
        ]
    )
    block = host_block(ns)
    cfg = tmp_path / "cfg"
    cfg.write_text(block)
    out = subprocess.run(
        ["ssh", "-G", "-F", str(cfg), "dev1.bob"],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    ).stdout
    conf = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    assert conf["hostkeyalias"] == "dev1.@bob" and conf["user"] == "pi"
    assert conf["serveraliveinterval"] == "15" and conf["stricthostkeychecking"] == "accept-new"
    assert "--stdio" in conf["proxycommand"] and "-d dev1" in conf["proxycommand"]
    # quoted for the space; % doubled (ssh expands %-tokens when it opens the file, not in -G)
    assert conf["identityfile"].endswith("my key%%1")
    ns.device = "x;rm -rf /"
    with pytest.raises(ValueError):
        host_block(ns)


def test_detached_child_reports_then_outlives_parent(tmp_path: Path) -> None:
    """``run_detached`` in a fresh interpreter: the parent prints the child's report and
    exits 0 while the child keeps running; a child failing first gives its exit code."""
    marker = tmp_path / "alive"
    code = (
        "import sys, time, pathlib\n"
        "from noports.cli.detach import run_detached\n"
        "def ok(report):\n"
        "    report('PORT 4242')\n"
        "    time.sleep(0.5)\n"
        f"    pathlib.Path({str(marker)!r}).write_text('yes')\n"
        "    return 0\n"
        "def bad(report):\n"
        "    print('boom', file=sys.stderr)\n"
        "    return 5\n"
        "sys.exit(run_detached(ok if sys.argv[1] == 'ok' else bad))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    r = subprocess.run(
        [sys.executable, "-c", code, "ok"], capture_output=True, text=True, timeout=20, env=env
    )
    assert r.returncode == 0 and r.stdout == "PORT 4242\n"
    assert not marker.exists()  # the parent did not wait for the child
    for _ in range(100):
        if marker.exists():
            break
        subprocess.run(["sleep", "0.05"])
    assert marker.read_text() == "yes"
    r = subprocess.run(
        [sys.executable, "-c", code, "bad"], capture_output=True, text=True, timeout=20, env=env
    )
    assert r.returncode == 5 and "boom" in r.stderr and r.stdout == ""
    assert run_detached is not None
