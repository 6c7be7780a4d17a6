"""Helpers shared by every CLI: --version, the common flags, one-line errors and exit codes."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

from .. import _compat
from ..crypto import cryptography_text
from ..errors import NoPortsError, exit_code_for
from ..log import JsonFormatter, escape

# the flag groups shared by the client programs live in options.py; re-exported for the
# programs that import them from here
from .options import DEFAULT_ROOT_DOMAIN, add_client_atsign_flags, add_root_flags, root_of

__all__ = [
    "DEFAULT_ROOT_DOMAIN",
    "VersionAction",
    "add_client_atsign_flags",
    "add_common",
    "add_root_flags",
    "fail",
    "root_of",
]


class VersionAction(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kw: Any) -> None:
        super().__init__(option_strings, dest=dest, nargs=0, default=argparse.SUPPRESS, **kw)

    def __call__(self, parser: argparse.ArgumentParser, *a: Any, **kw: Any) -> None:
        print(_compat.version_text(parser.prog, cryptography_text()))
        parser.exit(0)


def add_common(parser: argparse.ArgumentParser, *, verbose_short: bool = True) -> None:
    parser.add_argument(
        "--version",
        action=VersionAction,
        help="show version, implementation, event loop and OpenSSL",
    )
    flags = ["-v", "--verbose"] if verbose_short else ["--verbose"]
    parser.add_argument(*flags, action="store_true", default=False, help="log at INFO level")
    parser.add_argument("--debug", action="store_true", default=False, help="log at DEBUG level")
    parser.add_argument(
        "--log-format", choices=("text", "json"), default="text", help="log line format on stderr"
    )


def fail(prog: str, exc: BaseException) -> int:
    """Print one line for ``exc`` on stderr and return its exit code."""
    msg = str(exc) or type(exc).__name__
    kind = "" if isinstance(exc, NoPortsError) else f"{type(exc).__name__}: "
    code = exit_code_for(exc)
    if any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers):
        # --log-format json: the fatal error is a record like every other line
        record = {
            "ts": round(time.time(), 3),
            "level": "critical",
            "logger": prog,
            "msg": f"{kind}{msg}",
            "event": "fatal",
            "error": type(exc).__name__,
            "exit_code": code,
        }
        print(json.dumps(record, ensure_ascii=True), file=sys.stderr)
        return code
    print(f"{prog}: error: {kind}{escape(msg)}", file=sys.stderr)
    return code
