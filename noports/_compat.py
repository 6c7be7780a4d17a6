"""Which implementation (compiled or pure) and which event loop are active.

A pure build records itself in ``noports/_build.py`` (written by setup.py), so an installed
pure wheel needs no environment variable. Otherwise one switch, read once:
``NOPORTS_NO_EXTENSIONS=1`` forces the pure-Python twins. Nothing else in the package reads
the environment for this. Library code asks ``speedups(name)``
for a hot-path module; tests may ask for a specific twin with ``impl="c"`` or ``"py"``.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
from collections.abc import Coroutine
from types import ModuleType
from typing import Any, TypeVar

try:  # written by setup.py into every built (non-editable) install
    from ._build import IMPLEMENTATION as BUILD  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # a source tree or an editable install: the environment decides
    BUILD = None

NO_EXTENSIONS: bool = (
    BUILD == "pure"
    or bool(os.environ.get("NOPORTS_NO_EXTENSIONS"))
    or sys.implementation.name != "cpython"  # not ``platform``: 2 ms at every start
)

IMPLS = ("c", "py")
T = TypeVar("T")


def speedups(name: str, impl: str | None = None) -> ModuleType:
    """Return the twin module for hot path ``name``: ``noports._speedups.<name>_c`` or ``_py``.

    ``impl=None`` picks the compiled twin unless NOPORTS_NO_EXTENSIONS is set. When the
    compiled twin was expected but cannot be imported this raises ImportError: a broken
    build must be loud, never a quiet slowdown.
    """
    if impl is None:
        impl = "py" if NO_EXTENSIONS else "c"
    if impl not in IMPLS:
        raise ValueError(f"unknown implementation {impl!r}")
    return importlib.import_module(f"noports._speedups.{name}_{impl}")


def implementation() -> str:
    """'compiled' when the compiled speedups are active, else 'pure'."""
    if NO_EXTENSIONS:
        return "pure"
    if missing_speedups() is not None:
        return "compiled build, speedups missing" if BUILD else "pure (compiled speedups missing)"
    return "compiled"


def missing_speedups() -> str | None:
    """Why the compiled twins cannot be imported, or None when they can (or are not wanted)."""
    if NO_EXTENSIONS:
        return None
    try:
        for name in ("pump", "xfer"):
            speedups(name)
    except ImportError as exc:
        return str(exc) or type(exc).__name__
    return None


def require_speedups(prog: str | None = None) -> None:
    """Exit 1 with one line when a compiled install lost its extension modules.

    Called when any program starts (``noports.cli``): better than a traceback mid-session.
    """
    why = missing_speedups()
    if why is None or BUILD is None:
        return  # a source tree without a build: tests and developers get the ImportError
    prog = prog or os.path.basename(sys.argv[0] if sys.argv else "") or "noports"
    prog = "noports" if prog.startswith("-") else prog
    print(
        f"{prog}: error: this noports install was built compiled but its speedups are "
        f"missing ({why}); reinstall it, or install the pure wheel",
        file=sys.stderr,
    )
    raise SystemExit(1)


# Python 3.10 has no -P: this bootstrap drops sys.path[0] (the current directory for -c)
# before anything else is imported, then runs the module as -m would.
_BOOTSTRAP = (
    "import sys; sys.path.pop(0); import runpy; m = sys.argv.pop(1); "
    "runpy.run_module(m, run_name='__main__', alter_sys=True)"
)


def python_module_argv(module: str, *args: str) -> list[str]:
    """argv that runs ``python -m module args`` without the current directory on sys.path.

    ``python -m`` puts the working directory first on the import path, so a child started
    from a source checkout would import the uncompiled tree instead of the installed package.
    3.11+ has ``-P`` for that; 3.10 gets an equivalent ``-c`` bootstrap. PYTHONPATH and the
    environment are honoured as usual (unlike ``-I``).
    """
    if sys.version_info >= (3, 11):
        return [sys.executable, "-P", "-m", module, *args]
    return [sys.executable, "-c", _BOOTSTRAP, module, *args]


def have_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def loop_name(kind: str | None = None) -> str:
    """Name of the loop ``new_event_loop(kind)`` creates."""
    kind = kind or os.environ.get("NOPORTS_LOOP") or ("uvloop" if have_uvloop() else "asyncio")
    if kind not in ("uvloop", "asyncio"):
        raise ValueError(f"unknown event loop {kind!r} (uvloop or asyncio)")
    if kind == "uvloop" and not have_uvloop():
        raise ValueError("uvloop requested but not installed")
    return kind


def new_event_loop(kind: str | None = None) -> asyncio.AbstractEventLoop:
    """A fresh event loop: uvloop when installed (or asked for), else asyncio's default.

    ``NOPORTS_LOOP=asyncio|uvloop`` overrides the default for a whole process.
    """
    if loop_name(kind) == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(main: Coroutine[Any, Any, T], loop: str | None = None) -> T:
    """Run ``main`` to completion on a new loop of the chosen kind."""
    ev = new_event_loop(loop)
    try:
        asyncio.set_event_loop(ev)
        return ev.run_until_complete(main)
    finally:
        try:
            _cancel_all(ev)
            ev.run_until_complete(ev.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            ev.close()


def _cancel_all(ev: asyncio.AbstractEventLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(ev) if not t.done()]
    for t in tasks:
        t.cancel()
    if tasks:
        ev.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


def openssl_version() -> str:
    from cryptography.hazmat.backends.openssl.backend import backend

    return backend.openssl_version_text()


def version_text(prog: str, crypto: str = "") -> str:
    """The ``--version`` line every program prints (``crypto``: the data plane's cryptography
    paths, from ``noports.crypto.cryptography_text``, which this layer may not import)."""
    import platform

    from . import __version__

    return (
        f"{prog} (noports) {__version__}; implementation {implementation()}; "
        f"event loop {loop_name()}; {openssl_version()}; {crypto or 'cryptography'}; "
        f"Python {platform.python_version()} on {sys.platform}-{platform.machine()}"
    )
