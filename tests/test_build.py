"""The build and the implementation switch.

A normal install must run the compiled speedups (a silent fallback would hide a broken build,
msgpack #481); NOPORTS_NO_EXTENSIONS=1 must select the pure twins; every twin pair exposes the
same public names; every program's --version names version, implementation, loop and OpenSSL.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest

from noports import _compat
from noports._speedups import NAMES


def _py(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if k != "NOPORTS_NO_EXTENSIONS"}
    e.update(env)
    return subprocess.run(
        [sys.executable, "-I", "-W", "error::RuntimeWarning", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=e,
        cwd=os.getcwd(),
    )


@pytest.mark.c_extension
def test_compiled_speedups_are_active_by_default():
    # -I ignores PYTHONPATH and the cwd: this is the installed package, as users get it.
    p = _py("from noports import _compat; print(_compat.implementation())")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "compiled"


@pytest.mark.c_extension
@pytest.mark.parametrize("name", NAMES)
def test_each_compiled_twin_imports_as_extension_module(name):
    p = _py(f"import noports._speedups.{name}_c as m; print(m.__file__)")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().endswith((".so", ".pyd")), p.stdout


def test_no_extensions_env_selects_pure_twins():
    p = _py(
        "from noports import _compat; m = _compat.speedups('pump'); "
        "print(_compat.implementation(), m.__name__)",
        NOPORTS_NO_EXTENSIONS="1",
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["pure", "noports._speedups.pump_py"]


@pytest.mark.parametrize("name", NAMES)
def test_twins_expose_the_same_public_api(name, impl):
    if impl == "py":
        pytest.skip("compared from the compiled side")
    c = importlib.import_module(f"noports._speedups.{name}_c")
    py = importlib.import_module(f"noports._speedups.{name}_py")
    # Functions and classes must match exactly; constants both define must agree (the pure
    # twin may also re-export constants it imported from the protocol modules).
    calls = lambda m: {n for n in _own_api(m) if callable(getattr(m, n))}  # noqa: E731
    assert calls(py) == calls(c), (
        f"pure-only {calls(py) - calls(c)}, compiled-only {calls(c) - calls(py)}"
    )
    identity = {"IMPLEMENTATION", "SPLICE"}  # what each twin says about its own mechanism
    for n in _own_api(c) - calls(c) - identity:
        assert getattr(c, n) == getattr(py, n), n


def _own_api(mod) -> set[str]:
    """Public names a twin defines itself (not what it imported)."""
    import types

    out = set()
    for n in dir(mod):
        if n.startswith("_") or n == "annotations":
            continue
        obj = getattr(mod, n)
        if isinstance(obj, types.ModuleType):
            continue
        owner = getattr(obj, "__module__", None)
        if callable(obj) and owner is not None and owner != mod.__name__:
            continue  # imported helper (typing.Any, socket.socket, ...)
        out.add(n)
    return out


def test_unknown_impl_is_an_error():
    with pytest.raises(ValueError):
        _compat.speedups("pump", "fortran")


def _entry_points() -> dict[str, str]:
    from pathlib import Path

    try:
        import tomllib
    except ImportError:  # Python 3.10: the runtime dependency tomli
        import tomli as tomllib  # type: ignore[no-redef]

    data = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    return data["project"]["scripts"]


PROGRAMS = sorted(_entry_points())


def test_every_documented_program_is_an_entry_point():
    assert {"noports", "srv", "srvd", "sshnpd", "sshnp", "npt", "npa", "at_activate"} <= set(
        PROGRAMS
    )


@pytest.mark.parametrize("prog", [*PROGRAMS, "noports server", "noports quickstart"])
def test_version_names_implementation_loop_and_openssl(prog):
    name, *sub = prog.split()
    module = _entry_points()[name].split(":")[0]
    p = subprocess.run(
        [sys.executable, "-m", module, *sub, "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    line = p.stdout.strip()
    assert "(noports)" in line and "implementation" in line and "event loop" in line, line
    assert "OpenSSL" in line, line
