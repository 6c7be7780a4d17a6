"""A short, bounded fuzz pass over every network/file parser (the long run is
``python -m tests.fuzz``). Only declared exceptions may escape; a slow input is a finding
(generous bound here, since CI machines are shared; the long run uses 50 ms)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import fuzz

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", sorted(fuzz.TARGETS))
def test_random_mutations_find_nothing(name: str) -> None:
    assert fuzz.run_random([name], runs=300, slow_ms=2000, seconds=10) == 0  # ~0.1-1 s each


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["server_line", "relay_auth_line", "control_messages"])
def test_atheris_short_run(name: str) -> None:
    if not os.environ.get("NOPORTS_FUZZ_ATHERIS"):
        pytest.skip("set NOPORTS_FUZZ_ATHERIS=1: Atheris instruments every loaded module "
                    "first (20-60 s on a shared runner); `python -m tests.fuzz` is the long run")
    pytest.importorskip("atheris", reason="atheris is not installed (pip install atheris)")
    r = subprocess.run(
        [sys.executable, "-m", "tests.fuzz", "--one", name, "--runs", "3000",
         "--seconds", "20", "--slow-ms", "2000"],
        capture_output=True, text=True, timeout=100, cwd=str(REPO),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Done " in r.stderr
