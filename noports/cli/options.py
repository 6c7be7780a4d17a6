"""Flag groups shared by the client programs (``npt``, ``sshnp``, ``noports profile``): one
definition of each flag, so that its names, default and meaning cannot drift apart.

Where a program's help has always said something of its own, the group takes that text as a
keyword (the help and man pages are part of the interface and do not change with the layout).
"""

from __future__ import annotations

import argparse

from ..config import RawFormatter

DEFAULT_ROOT_DOMAIN = "root.atsign.org"


def client_parser(prog: str, *, description: str, epilog: str) -> argparse.ArgumentParser:
    """The parser of a client program: ``--help`` only (``-h`` is an official flag of
    npt and sshnp), the epilog kept as written."""
    p = argparse.ArgumentParser(
        prog=prog,
        add_help=False,
        epilog=epilog,
        formatter_class=RawFormatter,  # argparse's, without importing shutil
        description=description,
    )
    p.add_argument("--help", action="help", help="show this help and exit")
    return p


def add_root_flags(
    parser: argparse.ArgumentParser, *, camel_alias: bool = False, notes: bool = True
) -> None:
    """``--root-domain`` (official, host only, port 64), ``--root-server``/``--root``
    (``host[:port]`` or ``proxy:host:port``; wins) and ``--ca-file``. ``notes=False`` keeps
    sshnp's shorter help (no port and environment notes)."""
    names = ["--root-domain", "--rootDomain"] if camel_alias else ["--root-domain"]
    parser.add_argument(
        *names,
        default=DEFAULT_ROOT_DOMAIN,
        help="atDirectory host (port 64)" if notes else "atDirectory host",
    )
    env_root = "env NOPORTS_ROOT; " if notes else ""
    parser.add_argument(
        "--root-server",
        "--root",
        dest="root",
        default=None,
        help=f"atDirectory host[:port] or proxy:host:port ({env_root}overrides --root-domain)",
    )
    env_ca = " (env NOPORTS_CA_FILE)" if notes else ""
    parser.add_argument("--ca-file", default=None, help=f"extra CA bundle to trust{env_ca}")


def root_of(args: argparse.Namespace) -> str | None:
    """``--root``/``--root-server`` when given, else a non-default ``--root-domain`` on port 64
    (None: the default root, or NOPORTS_ROOT, is used)."""
    root: str | None = args.root
    if not root and args.root_domain and args.root_domain != DEFAULT_ROOT_DOMAIN:
        root = f"{args.root_domain}:64"
    return root


def add_srvd_flag(parser: argparse.ArgumentParser) -> None:
    """``-r/--srvd``: one relay, a comma list, or empty (select the lowest-latency one)."""
    parser.add_argument(
        "-r",
        "--srvd",
        default=None,
        metavar="@RELAY",
        help="relay (srvd) atSign; a comma list or empty: select the lowest-latency one",
    )


def add_pass_phrase_flag(parser: argparse.ArgumentParser, *, env_help: str | None = None) -> None:
    """``-P/--pass-phrase`` of a password-protected atKeys file; the help points at the
    environment (``NOPORTS_<PROG>_PASS_PHRASE[_FILE]`` unless ``env_help`` says otherwise)."""
    env = env_help or f"NOPORTS_{(parser.prog or '').upper()}_PASS_PHRASE[_FILE]"
    parser.add_argument(
        "-P",
        "--pass-phrase",
        "--passPhrase",
        dest="pass_phrase",
        default=None,
        help=f"pass phrase of a password-protected atKeys file (prefer the environment: {env})",
    )


def add_client_atsign_flags(parser: argparse.ArgumentParser) -> None:
    """``-f/--from``, ``-t/--to``, ``-r/--srvd``, ``-k/--key-file`` and ``-P/--pass-phrase``
    as the official clients."""
    parser.add_argument(
        "-f", "--from", dest="from_", required=True, metavar="@CLIENT", help="client atSign"
    )
    parser.add_argument(
        "-t", "--to", required=True, metavar="@DEVICE_ATSIGN", help="device daemon atSign"
    )
    add_srvd_flag(parser)
    parser.add_argument(
        "-k",
        "--key-file",
        "--keyFile",
        dest="key_file",
        default=None,
        help="atKeys file (default ~/.atsign/keys/<from>_key.atKeys)",
    )
    add_pass_phrase_flag(parser)


def add_relay_auth_flags(parser: argparse.ArgumentParser) -> None:
    """``--relay-auth-mode/--ram`` (payload or escr; None: escr with a payload fallback) and
    ``--443`` (the relay's single port)."""
    parser.add_argument(
        "--relay-auth-mode",
        "--ram",
        dest="relay_auth_mode",
        choices=("payload", "escr"),
        default=None,
        help="how both tunnel ends authenticate to the relay: escr (a fresh signed challenge "
        "per socket) or payload (the official default). Default: escr, or payload when the "
        "device daemon does not support escr",
    )
    parser.add_argument(
        "--443",
        dest="only443",
        action="store_true",
        default=False,
        help="use the relay's single port 443 (needs escr and a relay run with --443)",
    )


def add_daemon_ping_timeout_flag(
    parser: argparse.ArgumentParser, *, short_first: bool = True
) -> None:
    """``--dpt/--daemon-ping-timeout``; ``short_first=False`` lists the long name first (sshnp)."""
    names = ["--dpt", "--daemon-ping-timeout"]
    parser.add_argument(
        *(names if short_first else names[::-1]),
        dest="dpt",
        type=float,
        default=20.0,
        help="seconds to wait for the daemon's ping reply",
    )


def add_aead_flags(
    parser: argparse.ArgumentParser, *, aead_help: str = "offer the AEAD mode (default on)"
) -> None:
    """``--[no-]aead`` (offer the AEAD mode, default on) and ``--require-aead``."""
    parser.add_argument(
        "--aead", dest="aead", action=argparse.BooleanOptionalAction, default=True, help=aead_help
    )
    parser.add_argument(
        "--require-aead", action="store_true", help="refuse unless the daemon uses the AEAD mode"
    )


def add_output_flag(parser: argparse.ArgumentParser, *, help: str) -> None:  # noqa: A002
    """``--output text|json`` (default text); ``help`` says what json changes."""
    parser.add_argument("--output", choices=("text", "json"), default="text", help=help)
