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


# -- flag groups shared by the client programs (one definition, one help text) -----------
def add_root_flags(parser: argparse.ArgumentParser, *, camel_alias: bool = False) -> None:
    """``--root-domain`` (official, host only, port 64), ``--root-server``/``--root``
    (``host[:port]`` or ``proxy:host:port``; wins) and ``--ca-file``."""
    names = ["--root-domain", "--rootDomain"] if camel_alias else ["--root-domain"]
    parser.add_argument(*names, default="root.atsign.org", help="atDirectory host (port 64)")
    parser.add_argument(
        "--root-server",
        "--root",
        dest="root",
        default=None,
        help="atDirectory host[:port] or proxy:host:port (env NOPORTS_ROOT; overrides "
        "--root-domain)",
    )
    parser.add_argument(
        "--ca-file", default=None, help="extra CA bundle to trust (env NOPORTS_CA_FILE)"
    )


def add_client_atsign_flags(parser: argparse.ArgumentParser) -> None:
    """``-f/--from``, ``-t/--to``, ``-r/--srvd`` and ``-k/--key-file`` as the official clients."""
    parser.add_argument(
        "-f", "--from", dest="from_", required=True, metavar="@CLIENT", help="client atSign"
    )
    parser.add_argument(
        "-t", "--to", required=True, metavar="@DEVICE_ATSIGN", help="device daemon atSign"
    )
    parser.add_argument(
        "-r",
        "--srvd",
        default=None,
        metavar="@RELAY",
        help="relay (srvd) atSign; a comma list or empty: select the lowest-latency one",
    )
    parser.add_argument(
        "-k",
        "--key-file",
        "--keyFile",
        dest="key_file",
        default=None,
        help="atKeys file (default ~/.atsign/keys/<from>_key.atKeys)",
    )
    parser.add_argument(
        "-P",
        "--pass-phrase",
        "--passPhrase",
        dest="pass_phrase",
        default=None,
        help="pass phrase of a password-protected atKeys file (prefer the environment: "
        f"NOPORTS_{(parser.prog or '').upper()}_PASS_PHRASE[_FILE])",
    )


DEFAULT_ROOT_DOMAIN = "root.atsign.org"


def root_of(args: argparse.Namespace) -> str | None:
    """``--root``/``--root-server`` when given, else a non-default ``--root-domain`` on port 64
    (None: the default root, or NOPORTS_ROOT, is used)."""
    root: str | None = args.root
    if not root and args.root_domain and args.root_domain != DEFAULT_ROOT_DOMAIN:
        root = f"{args.root_domain}:64"
    return root
