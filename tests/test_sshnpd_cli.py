"""sshnpd command line: official flags and defaults, env and TOML layers, usage errors (exit 2)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from noports.cli.sshnpd import build_parser, config_from_args
from noports.config import parse_args
from noports.errors import ConfigError


def cfg(*argv: str, environ: dict[str, str] | None = None):
    args = parse_args(build_parser(), "sshnpd", list(argv), environ=environ or {})
    return config_from_args(args)


def test_defaults_and_official_normalisation():
    c = cfg("-a", "@Dev", "-m", " @Alice , @BOB,@alice", "-m", "carol", "-d", "My Pi")
    assert c.atsign == "@dev"
    assert c.managers == ("@alice", "@bob", "@carol")
    assert c.device == "my_pi"
    assert c.device_group == "__none__"
    assert str(c.permit_open) == "localhost:22,localhost:3389"
    assert c.local_sshd_port == 22 and c.ssh_algorithm == "ssh-ed25519"
    assert not c.accept_public_keys and not c.hide and not c.require_aead
    p = cfg("-a", "@dev", "-p", "@Policy")
    assert p.policy_manager == "@policy" and str(p.permit_open) == "*:*"
    p = cfg("-a", "@dev", "-p", "@policy", "--po", "localhost:22")
    assert str(p.permit_open) == "localhost:22"
    s = cfg(
        "-a",
        "@dev",
        "-m",
        "@a",
        "-s",
        "-S",
        'no-pty,from="10.0.0.1"',
        "-h",
        "--ephemeral-permissions",
        "no-X11-forwarding",
        "--ssh-algorithm",
        "ssh-rsa",
        "--local-sshd-port",
        "2222",
        "--dg",
        "lab",
        "--require-aead",
    )
    assert s.accept_public_keys and s.hide and s.require_aead
    assert s.public_key_permissions == 'no-pty,from="10.0.0.1"'
    assert s.local_sshd_port == 2222 and s.device_group == "lab"


def test_env_and_toml_layers(tmp_path):
    toml = tmp_path / "sshnpd.toml"
    toml.write_text(
        'atsign = "@dev"\nmanagers = ["@a"]\ndevice = "fromfile"\n'
        'permit-open = "localhost:22"\nsshpublickey = true\n'
    )
    c = cfg("--config", str(toml), environ={"NOPORTS_SSHNPD_DEVICE": "fromenv"})
    assert c.device == "fromenv" and c.managers == ("@a",) and c.accept_public_keys
    c = cfg("--config", str(toml), "-d", "fromcli", environ={"NOPORTS_SSHNPD_DEVICE": "x1"})
    assert c.device == "fromcli"
    toml.write_text('atsign = "@dev"\nmanagerz = ["@a"]\n')
    with pytest.raises(SystemExit) as e:
        cfg("--config", str(toml))
    assert e.value.code == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["-a", "@dev"],  # neither -m nor -p
        ["-a", "@dev", "-m", "@a", "-d", "bad\nname"],
        ["-a", "@dev", "-m", "@a", "-d", "x"],  # too short
        ["-a", "@dev", "-m", "@a", "--po", "localhost:22\n"],
        ["-a", "@dev", "-m", "@a", "--po", "127.1:22"],
        ["-a", "@dev", "-m", "@a", "-S", 'command="sh"\nssh-rsa'],
        ["-a", "@dev", "-m", "@a", "--local-sshd-port", "0"],
        ["-a", "@dev", "-m", "@a;rm"],
    ],
)
def test_bad_configuration_is_refused(argv):
    with pytest.raises(ConfigError):
        cfg(*argv)


def test_cli_usage_error_exit_code():
    out = subprocess.run(
        [sys.executable, "-m", "noports.cli.sshnpd", "-a", "@dev"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert "at least one of --managers and --policy-manager" in out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "noports.cli.sshnpd", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0 and "--permit-open" in out.stdout and "--require-aead" in out.stdout
