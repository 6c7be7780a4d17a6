"""Build: compile _speedups/*.pyx into noports._speedups.<name>.

NOPORTS_NO_EXTENSIONS=1 builds a pure-Python package on purpose. Otherwise a compile
failure fails the build: there is no silent fallback (msgpack PR #568).
"""

import os
import platform
import sys
from pathlib import Path

from setuptools import setup

NO_EXTENSIONS = bool(os.environ.get("NOPORTS_NO_EXTENSIONS")) or (
    platform.python_implementation() != "CPython"
)
HERE = Path(__file__).parent


def extensions():
    from Cython.Build import cythonize
    from setuptools import Extension

    mods = []
    for pyx in sorted((HERE / "_speedups").glob("*.pyx")):
        mods.append(
            Extension(
                f"noports._speedups.{pyx.stem}",
                [str(pyx.relative_to(HERE))],
                extra_compile_args=["-O2"],
            )
        )
    return cythonize(
        mods,
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
        quiet=True,
    )


if NO_EXTENSIONS:
    print("noports: building the pure-Python package (NOPORTS_NO_EXTENSIONS)", file=sys.stderr)
    setup()
else:
    print("noports: building with compiled speedups", file=sys.stderr)
    setup(ext_modules=extensions())
