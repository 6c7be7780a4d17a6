"""Shared fixtures.

* ``impl``: every hot-path test runs against the compiled (``c``) and pure (``py``) twins.
  ``--no-c-extensions`` (or NOPORTS_NO_EXTENSIONS=1) deselects the compiled runs.
* ``loop_kind`` / ``run``: network tests run once on uvloop and once on asyncio. ``run(coro)``
  executes a coroutine on a fresh loop of the parametrized kind and closes it afterwards.
* ``keys``: RSA key material is slow to make, so a session-wide cache hands out AtKeys per
  atSign name.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from noports import _compat
from noports.crypto.atkeys import AtKeys


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--no-c-extensions",
        action="store_true",
        default=False,
        help="skip the runs that use the compiled speedups",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "c_extension: needs the compiled speedups")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not (config.getoption("--no-c-extensions") or _compat.NO_EXTENSIONS):
        return
    skip = pytest.mark.skip(reason="compiled speedups disabled")
    for item in items:
        if "c_extension" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(
    scope="session",
    params=[pytest.param("c", marks=pytest.mark.c_extension), "py"],
)
def impl(request: pytest.FixtureRequest) -> str:
    """'c' or 'py': pass to ``noports._compat.speedups(name, impl)`` or to library ``impl=``."""
    return request.param


LOOP_KINDS = ["uvloop", "asyncio"] if _compat.have_uvloop() else ["asyncio"]


@pytest.fixture(params=LOOP_KINDS)
def loop_kind(request: pytest.FixtureRequest) -> str:
    return request.param


RunFn = Callable[..., Any]


@pytest.fixture
def run(loop_kind: str) -> RunFn:
    """``run(coro, timeout=60)``: run a coroutine on a new loop of the parametrized kind."""

    def _run(coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
        async def guarded() -> Any:
            return await asyncio.wait_for(coro, timeout)

        return _compat.run(guarded(), loop=loop_kind)

    return _run


_KEY_CACHE: dict[str, AtKeys] = {}


@pytest.fixture(scope="session")
def keys() -> Callable[[str], AtKeys]:
    """``keys("@alice")`` -> AtKeys, generated once per test session."""

    def get(atsign: str) -> AtKeys:
        a = atsign if atsign.startswith("@") else "@" + atsign
        if a not in _KEY_CACHE:
            _KEY_CACHE[a] = AtKeys.generate(a)
        return _KEY_CACHE[a]

    return get


@pytest.fixture
def free_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Any:
    """An isolated HOME so nothing touches the real ~/.atsign or ~/.ssh."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in list(os.environ):
        if var.startswith(("NOPORTS_", "RV_")):
            monkeypatch.delenv(var, raising=False)
    return home


pytest_plugins = ["tests.fixtures_atsdk", "tests.fixtures_at", "tests.fixtures_np"]
