"""Helpers shared by every CLI: --version, logging setup, one-line errors and exit codes."""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from typing import Any

from .. import _compat
from ..errors import NoPortsError, exit_code_for

_CTRL = re.compile(r"[\x00-\x1f\x7f]")


class VersionAction(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kw: Any) -> None:
        super().__init__(option_strings, dest=dest, nargs=0, default=argparse.SUPPRESS, **kw)

    def __call__(self, parser: argparse.ArgumentParser, *a: Any, **kw: Any) -> None:
        print(_compat.version_text(parser.prog))
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


def escape(text: str, limit: int = 512) -> str:
    """Log-safe text: control characters escaped, length capped (reliability T10)."""
    s = _CTRL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return s if len(s) <= limit else s[:limit] + "..."


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        msg = escape(record.getMessage(), 4096)
        return f"{ts}.{int(record.msecs):03d}Z {record.levelname} {record.name}: {msg}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        d = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            d.update(extra)
        return json.dumps(d, ensure_ascii=True, default=str)


def setup_logging(args: argparse.Namespace | None = None, *, level: int | None = None) -> None:
    if level is None:
        level = logging.WARNING
        if args is not None and getattr(args, "verbose", False):
            level = logging.INFO
        if args is not None and getattr(args, "debug", False):
            level = logging.DEBUG
    fmt = getattr(args, "log_format", "text") if args is not None else "text"
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [h]
    root.setLevel(level)


def fail(prog: str, exc: BaseException) -> int:
    """Print one line for ``exc`` on stderr and return its exit code."""
    msg = str(exc) or type(exc).__name__
    kind = "" if isinstance(exc, NoPortsError) else f"{type(exc).__name__}: "
    print(f"{prog}: error: {kind}{escape(msg)}", file=sys.stderr)
    return exit_code_for(exc)


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
    parser.add_argument("-r", "--srvd", required=True, metavar="@RELAY", help="relay (srvd) atSign")
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
