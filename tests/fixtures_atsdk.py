"""The official Python atSDK (``atsdk`` from PyPI) as a real peer, in its own virtualenv.

The venv is cached under ``$NOPORTS_TEST_CACHE`` (default ``~/.cache/noports-tests``) keyed by
version, so only the first run pays for the install. When PyPI cannot be reached the tests
that need it are skipped with a clear message, never silently passed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ATSDK_VERSION = os.environ.get("NOPORTS_ATSDK_VERSION", "0.2.81")


def _cache_dir() -> Path:
    base = os.environ.get("NOPORTS_TEST_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "noports-tests"
    )
    return Path(base)


class OfficialPython:
    """A Python interpreter with ``atsdk`` installed; ``run(script)`` executes code in it."""

    def __init__(self, python: Path) -> None:
        self.python = python

    def run(
        self,
        script: str,
        *,
        env: dict[str, str] | None = None,
        timeout: float = 60,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        full_env = dict(os.environ)
        full_env.pop("PYTHONPATH", None)  # the official peer must not import our package
        if env:
            full_env.update(env)
        proc = subprocess.run(
            [str(self.python), "-c", script],
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"atsdk script failed ({proc.returncode}):\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc


def _ensure_venv() -> Path | str:
    root = _cache_dir() / f"atsdk-{ATSDK_VERSION}-py{sys.version_info[0]}{sys.version_info[1]}"
    py = root / "bin" / "python"
    marker = root / ".installed"
    if marker.exists() and py.exists():
        return py
    root.parent.mkdir(parents=True, exist_ok=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(root)
    proc = subprocess.run(
        [
            str(py),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            f"atsdk=={ATSDK_VERSION}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        return f"could not install atsdk=={ATSDK_VERSION} from PyPI: {proc.stderr.strip()[-300:]}"
    marker.write_text(ATSDK_VERSION)
    return py


@pytest.fixture(scope="session")
def atsdk_python() -> OfficialPython:
    """The official atsdk in its own venv; skips (with the reason) when PyPI is unreachable."""
    got = _ensure_venv()
    if isinstance(got, str):
        pytest.skip(got)
    return OfficialPython(got)
