"""Thin argparse front ends: each module exposes ``main(argv=None) -> int``."""

from .. import _compat

_compat.require_speedups()  # a compiled install that lost its .so: one line, exit 1
