"""``noports service install``: unit + config + user, against a temporary root directory."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from noports.cli import service
from noports.config import load_toml


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "noports.cli.noports", "service", "install", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_dry_run_prints_and_writes_nothing(tmp_path: Path) -> None:
    p = _run("srvd", "--root", str(tmp_path), "--set", "atsign=@relay", "--dry-run")
    assert p.returncode == 0, p.stderr
    assert "would write" in p.stdout and "noports-srvd.service" in p.stdout
    assert "skip (--root is not /): useradd" in p.stdout
    assert not any(tmp_path.iterdir())


def test_install_srvd_writes_a_unit_and_a_config_srvd_accepts(tmp_path: Path) -> None:
    bindir = tmp_path / "venv-bin"
    p = _run(
        "srvd",
        "--root",
        str(tmp_path),
        "--bin-dir",
        str(bindir),
        "--set",
        "atsign=@relay",
        "--set",
        "ip=relay.example.com",
        "--set",
        "workers=2",
    )
    assert p.returncode == 0, p.stderr
    unit = tmp_path / "etc/systemd/system/noports-srvd.service"
    cfg = tmp_path / "etc/noports/srvd.toml"
    assert f"ExecStart={bindir}/srvd --config /etc/noports/srvd.toml" in unit.read_text()
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o640
    from noports.cli.srvd import build_parser

    values = load_toml(str(cfg), build_parser(environ={}))
    assert values["atsign"] == "@relay" and values["ip"] == "relay.example.com"
    assert values["workers"] == 2
    assert "systemctl enable --now noports-srvd.service" in p.stdout
    # a second run keeps the operator's config
    cfg.write_text('atsign = "@mine"\n')
    p = _run("srvd", "--root", str(tmp_path), "--set", "atsign=@other")
    assert p.returncode == 0 and "keep" in p.stdout
    assert cfg.read_text() == 'atsign = "@mine"\n'


def test_sshnpd_instances(tmp_path: Path) -> None:
    p = _run("sshnpd", "--root", str(tmp_path), "--instance", "pi4", "--set", "device=pi4")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "etc/systemd/system/noports-sshnpd@.service").exists()
    assert (tmp_path / "etc/noports/sshnpd/pi4.toml").exists()
    assert "enable --now noports-sshnpd@pi4.service" in p.stdout


@pytest.mark.parametrize(
    "args, text",
    [
        (["sshnpd"], "needs --instance"),
        (["sshnpd", "--instance", "../x"], "needs --instance"),
        (["srvd", "--set", "no-such-option=1"], "has no option --no-such-option"),
        (["srvd", "--set", "atsign"], "KEY=VALUE"),
        (["npa", "--instance", "x"], "for sshnpd only"),
    ],
)
def test_bad_requests_are_one_line_exit_2(tmp_path: Path, args: list[str], text: str) -> None:
    p = _run(*args, "--root", str(tmp_path))
    assert p.returncode == 2 and text in p.stderr, p
    assert len(p.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_every_program_has_a_template() -> None:
    d = service.templates_dir()
    for unit, _cfg, _factory in service.PROGRAMS.values():
        assert (d / unit).exists(), unit
