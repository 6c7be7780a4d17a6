"""What operators install from packaging/: systemd units that verify and score well on
``systemd-analyze security``, and man pages that are current and render (issue 7)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "packaging" / "systemd"
MAN = ROOT / "packaging" / "man"
MAX_EXPOSURE = 2.0

pytestmark = pytest.mark.skipif(not UNITS.is_dir(), reason="needs the source tree (packaging/)")


def _programs() -> list[str]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return sorted(data["project"]["scripts"])


def _unit_copies(tmp_path: Path) -> list[Path]:
    """Each unit with ExecStart pointed at this environment's programs (verify checks that
    the binary exists) and the template instantiated."""
    bindir = Path(sys.executable).parent
    if not (bindir / "srvd").exists():
        pytest.skip("the noports programs are not installed next to this interpreter")
    out = []
    for unit in sorted(UNITS.glob("*.service")):
        text = unit.read_text().replace("/opt/noports/bin/", f"{bindir}/")
        name = unit.name.replace("@.service", "@dev1.service")
        (tmp_path / name).write_text(text)
        out.append(tmp_path / name)
    return out


def test_a_unit_for_each_daemon() -> None:
    names = {u.name for u in UNITS.glob("*.service")}
    assert names == {
        "noports-srvd.service",
        "noports-sshnpd@.service",
        "noports-npa.service",
        "noports-server.service",
    }
    for u in UNITS.glob("*.service"):
        text = u.read_text()
        assert re.search(r"^User=noports$", text, re.M), u.name
        assert "NoNewPrivileges=yes" in text and "ProtectSystem=strict" in text, u.name
    assert "%i.toml" in (UNITS / "noports-sshnpd@.service").read_text()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_units_verify(tmp_path: Path) -> None:
    for unit in _unit_copies(tmp_path):
        p = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", str(unit)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        ours = [ln for ln in (p.stdout + p.stderr).splitlines() if unit.name in ln]
        assert p.returncode == 0 and not ours, f"{unit.name}: {p.stdout}{p.stderr}"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_units_score_well_on_systemd_analyze_security(tmp_path: Path) -> None:
    for unit in _unit_copies(tmp_path):
        p = subprocess.run(
            ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if "Unknown command verb" in p.stderr or "unrecognized option" in p.stderr:
            pytest.skip("systemd-analyze security --offline needs systemd >= 252")
        m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", p.stdout)
        assert m, p.stdout[-2000:] + p.stderr
        assert float(m.group(1)) <= MAX_EXPOSURE, f"{unit.name}: {m.group(0)}"


def test_a_man_page_for_every_program() -> None:
    pages = {p.stem for p in MAN.glob("*.1")}
    assert set(_programs()) <= pages
    assert {"noports-demo", "noports-quickstart", "noports-server"} <= pages


def test_man_pages_are_current() -> None:
    pytest.importorskip("argparse_manpage")
    p = subprocess.run(
        [sys.executable, "-m", "noports.cli.manpages", "--check", str(MAN)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr + " (python -m noports.cli.manpages packaging/man)"


@pytest.mark.skipif(shutil.which("groff") is None, reason="no groff")
def test_man_pages_render_without_warnings() -> None:
    for page in sorted(MAN.glob("*.1")):
        p = subprocess.run(
            ["groff", "-man", "-Tutf8", "-ww", str(page)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 0 and not p.stderr, f"{page.name}: {p.stderr}"
        text = re.sub(r".\x08", "", p.stdout)  # drop overstrike (bold) sequences
        assert "NAME" in text and "SYNOPSIS" in text, text[:500]
        assert f"{page.stem.upper()}(1)" in text, text[:200]
