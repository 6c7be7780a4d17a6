"""``sshnp ssh-config``: a Host block that reaches a device through ``sshnp --stdio``.

Include the output from ``~/.ssh/config`` (``Include ~/.ssh/config.d/noports``). Host keys stay
checked: ``HostKeyAlias <device>.<atSign>`` pins the device's key under a stable name (the
tunnel's local port changes every time, so ``[localhost]:port`` would never match), with
``StrictHostKeyChecking accept-new`` to learn it the first time. ``ServerAliveInterval 15``
notices a dead tunnel. ProxyCommand is run by ``$SHELL -c``: every argument is quoted, and
``%`` is doubled so ssh does not expand it. The block is usable from any shell: the sshnp
program, keys, identity and CA paths are absolute, and the root and CA in use (flags, else
``NOPORTS_ROOT`` / ``NOPORTS_CA_FILE``) are written into the command.

The command line (``sshnp ssh-config ...``) is :mod:`noports.cli.sshconfig`.
"""

from __future__ import annotations

import os
import shlex
import shutil
from typing import TYPE_CHECKING

from .._compat import python_module_argv
from ..errors import ConfigError
from ..names import validate_atsign, validate_device_name

if TYPE_CHECKING:
    import argparse


def _q(arg: str) -> str:
    return shlex.quote(arg).replace("%", "%%")


def host_block(args: argparse.Namespace) -> str:
    """The Host block for the options of ``sshnp ssh-config`` (ConfigError: a bad name)."""
    frm = validate_atsign(args.from_, add_at=True)
    to = validate_atsign(args.to, add_at=True)
    relay = validate_atsign(args.srvd, add_at=True)
    dev = validate_device_name(args.device)
    alias = args.alias or f"{dev}.{to.lstrip('@')}"
    if not alias or any(c.isspace() or c in "*?!#\"'" for c in alias):
        raise ConfigError(f"invalid Host name {alias!r}")
    if args.sshnp:
        prog = shlex.split(args.sshnp)
    elif shutil.which("sshnp"):
        prog = [os.path.abspath(str(shutil.which("sshnp")))]
    else:
        prog = python_module_argv("noports.cli.sshnp")
    cmd = [*prog, "--stdio", "-f", frm, "-t", to, "-d", dev, "-r", relay]
    # ssh runs the ProxyCommand from other shells and directories: pin what this one uses
    root = args.root or os.environ.get("NOPORTS_ROOT")
    ca = args.ca_file or os.environ.get("NOPORTS_CA_FILE")
    key_file = os.path.abspath(os.path.expanduser(args.key_file)) if args.key_file else None
    ca = os.path.abspath(os.path.expanduser(ca)) if ca else None
    for flag, val in (("-k", key_file), ("--root", root), ("--ca-file", ca)):
        if val:
            cmd += [flag, val]
    if args.require_aead:
        cmd.append("--require-aead")
    lines = [
        f"# NoPorts device {dev} of {to} via relay {relay} (sshnp ssh-config)",
        f"Host {alias}",
        f"  ProxyCommand {' '.join(_q(c) for c in cmd)}",
        f"  HostKeyAlias {dev}.{to}",
        "  StrictHostKeyChecking accept-new",
        "  ServerAliveInterval 15",
        "  ExitOnForwardFailure yes",
    ]
    if args.remote_user_name:
        lines.append(f"  User {args.remote_user_name}")
    if args.identity_file:
        ident = os.path.abspath(os.path.expanduser(args.identity_file))
        lines += [f"  IdentityFile {_q(ident)}", "  IdentitiesOnly yes"]
    return "\n".join(lines) + "\n"
