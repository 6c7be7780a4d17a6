"""``sshnp ssh-config``: the command line of :mod:`noports.sshnp.sshconfig` (print, or
``--write`` 0600, an ssh config Host block that reaches a device through ``sshnp --stdio``).
Run as ``sshnp ssh-config ...`` (cli/sshnp.py hands the rest of argv here). Exit codes: 0 ok,
2 usage or a bad atSign, device or Host name.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import ConfigError
from ..fsutil import write_secret
from ..sshnp.sshconfig import host_block


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sshnp ssh-config",
        description="print (or --write) an ssh config Host block using sshnp --stdio",
    )
    p.add_argument("-f", "--from", dest="from_", required=True)
    p.add_argument("-t", "--to", required=True)
    p.add_argument("-d", "--device", required=True)
    p.add_argument("-r", "--srvd", required=True)
    p.add_argument("-u", "--remote-user-name", default=None)
    p.add_argument("-i", "--identity-file", default=None)
    p.add_argument("-k", "--key-file", default=None)
    p.add_argument("--root-server", "--root", dest="root", default=None)
    p.add_argument("--ca-file", default=None)
    p.add_argument("--require-aead", action="store_true")
    p.add_argument(
        "--host",
        dest="alias",
        default=None,
        help="the Host name to use (default <device>.<atSign without @>)",
    )
    p.add_argument("--sshnp", default=None, help="sshnp command (default: found on PATH)")
    p.add_argument("--write", default=None, metavar="PATH", help="write the block to PATH (0600)")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        block = host_block(args)
    except ConfigError as exc:
        print(f"sshnp ssh-config: error: {exc}", file=sys.stderr)
        return 2
    if args.write:
        write_secret(args.write, block.encode())
        print(f"wrote {args.write}", file=sys.stderr)
    else:
        sys.stdout.write(block)
    return 0
