"""Build: compile _speedups/*.pyx into noports._speedups.<name>.

One build story (README "Install"):
- The sdist ships each ``.pyx`` and its generated ``.c``. When a ``.c`` is present and not older
  than its ``.pyx`` the C is compiled as is and Cython is never imported; Cython runs only for a
  missing or stale ``.c`` (a git checkout).
- A compile failure fails the build: there is no silent fallback (msgpack PR #568).
- ``NOPORTS_NO_EXTENSIONS=1`` builds a pure-Python package on purpose.
  ``NOPORTS_REQUIRE_EXTENSIONS=1`` (wheel builders) refuses any pure build, including the
  automatic one on a Python that is not CPython.
- Every non-editable build writes ``noports/_build.py`` recording ``compiled`` or ``pure``, so
  the installed package selects its implementation without any environment variable.
"""

import os
import platform
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py as _build_py
from setuptools.command.sdist import sdist as _sdist

HERE = Path(__file__).parent
NO_EXTENSIONS = bool(os.environ.get("NOPORTS_NO_EXTENSIONS")) or (
    platform.python_implementation() != "CPython"
)
REQUIRE_EXTENSIONS = bool(os.environ.get("NOPORTS_REQUIRE_EXTENSIONS"))
DIRECTIVES = {"language_level": "3", "boundscheck": False, "wraparound": False}


def _pyx_files():
    return sorted((HERE / "_speedups").glob("*.pyx"))


def _stale(pyx):
    c = pyx.with_suffix(".c")
    return not c.exists() or c.stat().st_mtime < pyx.stat().st_mtime


def _cythonize(mods):
    from Cython.Build import cythonize  # only for a missing or stale .c

    return cythonize(mods, compiler_directives=DIRECTIVES, quiet=True)


def extensions():
    from setuptools import Extension

    mods, stale = [], False
    for pyx in _pyx_files():
        src = pyx
        if _stale(pyx):
            stale = True
        else:
            src = pyx.with_suffix(".c")
        mods.append(
            Extension(
                f"noports._speedups.{pyx.stem}",
                [str(src.relative_to(HERE))],
                extra_compile_args=["-O2"],
            )
        )
    return _cythonize(mods) if stale else mods


class build_py(_build_py):
    """Also write noports/_build.py: what this build is (not for editable installs)."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "noports" / "_build.py"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(
            '"""Written by setup.py at build time: which implementation this install carries."""\n'
            f"IMPLEMENTATION = {'pure' if NO_EXTENSIONS else 'compiled'!r}\n"
        )

    def get_outputs(self, include_bytecode=1):
        outs = super().get_outputs(include_bytecode)
        if not getattr(self, "editable_mode", False):
            outs.append(str(Path(self.build_lib) / "noports" / "_build.py"))
        return outs


class sdist(_sdist):
    """The sdist always carries fresh generated C, whatever this host builds."""

    def run(self):
        from setuptools import Extension

        stale = [p for p in _pyx_files() if _stale(p)]
        if stale:
            _cythonize(
                [
                    Extension(f"noports._speedups.{p.stem}", [str(p.relative_to(HERE))])
                    for p in stale
                ]
            )
        super().run()


cmdclass = {"build_py": build_py, "sdist": sdist}
if NO_EXTENSIONS:
    if REQUIRE_EXTENSIONS:
        sys.exit(
            "noports: NOPORTS_REQUIRE_EXTENSIONS is set but this build would be pure "
            f"(NOPORTS_NO_EXTENSIONS or {platform.python_implementation()})"
        )
    print("noports: building the pure-Python package (NOPORTS_NO_EXTENSIONS)", file=sys.stderr)
    setup(cmdclass=cmdclass)
else:
    print("noports: building with compiled speedups", file=sys.stderr)
    setup(ext_modules=extensions(), cmdclass=cmdclass)
