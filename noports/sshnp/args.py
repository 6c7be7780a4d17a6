"""sshnp settings: validation, ``-o`` options, profiles; the parser is :mod:`noports.cli.sshnp`.

Validation happens here, before any network step: device names full-match the official
grammar (T8), atSigns are checked, a ``-s`` key is parsed as an ssh public key, ``-i`` and
``-l`` are checked locally.
"""

from __future__ import annotations

import argparse
import errno
import os
import shlex
import socket
import sys
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm

from ..crypto.sshkey import parse_public_key
from ..errors import EXIT_NOT_FOUND, EXIT_USAGE, ConfigError, LocalError, NoPortsError
from ..names import validate_atsign, validate_device_name
from ..session.relays import parse_relay_option


class IdentityFileError(LocalError):
    exit_code = EXIT_NOT_FOUND


class LocalPortBusyError(LocalError):
    exit_code = EXIT_USAGE


def profile_dir() -> Path:
    return Path.home() / ".sshnp" / "config"


def profile_text(args: argparse.Namespace, name: str) -> str:
    """The official profile writer's text: ``KEY=value`` lines in its order, joined by
    newlines without a trailing one; lists comma-joined, booleans ``true``/``false``, unset
    values and command-line-only settings (keys, identity, verbosity...) left out."""

    def b(v: bool) -> str:
        return "true" if v else "false"

    items: list[tuple[str, object]] = [
        ("PROFILE_NAME", name),
        ("FROM", args.from_),
        ("TO", args.to),
        ("SRVD", args.srvd),
        ("DEVICE", args.device),
        ("LOCAL_PORT", args.local_port),
        ("SEND_SSH_PUBLIC_KEY", b(args.send_ssh_public_key)),
        ("LOCAL_SSH_OPTIONS", ",".join(args.local_ssh_options)),
        ("REMOTE_USER_NAME", args.remote_user_name),
        ("TUNNEL_USER_NAME", args.tunnel_user_name),
        ("ROOT_DOMAIN", args.root_domain),
        ("REMOTE_SSHD_PORT", args.remote_sshd_port),
        ("AUTHENTICATE_CLIENT_TO_RVD", b(args.auth_client)),
        ("AUTHENTICATE_DEVICE_TO_RVD", b(args.auth_device)),
        ("ENCRYPT_RVD_TRAFFIC", b(args.encrypt)),
    ]
    return "\n".join(f"{k}={v}" for k, v in items if v is not None)


def save_profile(args: argparse.Namespace) -> Path:
    name = args.save_profile.strip()
    if not name or os.sep in name or name.startswith(".") or any(ord(c) < 0x20 for c in name):
        raise ConfigError(f"--save-profile {name!r}: give a profile name, not a path")
    path = profile_dir() / f"{name.replace(' ', '_')}.env"
    if path.exists():
        raise ConfigError(f"Failed to write config file: {path} already exists")
    from ..fsutil import write_secret

    return write_secret(path, profile_text(args, name).encode("utf-8"), overwrite=False)


def ssh_option_argv(values: list[str]) -> list[str]:
    """``-o`` values as ssh arguments, as the official client treats them.

    The official client splits each value on commas and appends every piece to the ssh
    command line as it is (``-o "-D 1080"`` gives ``ssh ... -D 1080``). A piece starting with
    ``-`` is therefore split into words here (shell-style quotes allowed); any other piece is
    an ssh configuration option and becomes ``-o <piece>`` (what a bare ``Key=Value`` meant to
    users of earlier versions of this tool, and the only way ssh can take it).
    """
    out: list[str] = []
    for value in values:
        for piece in value.split(","):
            piece = piece.strip()
            if not piece:
                continue
            if any(ord(c) < 0x20 for c in piece):
                raise ConfigError("control character in an -o option")
            if piece.startswith("-"):
                try:
                    words = shlex.split(piece)
                except ValueError as exc:
                    raise ConfigError(f"-o {piece!r}: {exc}") from None
                out += words
            else:
                out += ["-o", piece]
    return out


def _public_key_from_identity(path: str, passphrase: str | None) -> str:
    """The OpenSSH public key of the private key ``path`` (its ``.pub`` as a fallback)."""
    from cryptography.hazmat.primitives import serialization

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise IdentityFileError(f"cannot read -i {path}: {exc.strerror}") from None
    try:
        key = serialization.load_ssh_private_key(
            data, password=passphrase.encode() if passphrase else None
        )
        text = (
            key.public_key()
            .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            .decode("ascii")
        )
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        pub = Path(path + ".pub")
        try:
            text = pub.read_text(encoding="utf-8")
        except OSError:
            raise ConfigError(
                f"-s: cannot derive the public key from {path} ({exc}); "
                f"give --identity-passphrase or put the public key in {pub}"
            ) from None
    try:
        return parse_public_key(" ".join(text.split()[:2]), allow_comment=False).key_text()
    except NoPortsError as exc:
        raise ConfigError(f"-s: {exc}") from None


def local_port_free(host: str, port: int) -> None:
    """LocalPortBusyError (one line, exit 2) when ``host:port`` cannot be listened on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise LocalPortBusyError(
                    f"local port {port} is already in use: pick another -l/--local-port, "
                    "or -l 0 for any free port"
                ) from None
            if exc.errno == errno.EACCES:
                raise LocalPortBusyError(
                    f"local port {port} needs privileges: use a port above 1023 or -l 0"
                ) from None
            raise


def validate(args: argparse.Namespace) -> None:
    if args.rvd_deprecated is not None or args.legacy_daemon:
        flag = "--rvd" if args.rvd_deprecated is not None else "--legacy-daemon"
        print(
            f"sshnp: warning: {flag} is no longer supported by current NoPorts clients and is "
            "ignored" + (" (use -r/--srvd for the relay)" if flag == "--rvd" else ""),
            file=sys.stderr,
        )
        if args.rvd_deprecated and not args.srvd and not args.host:
            args.srvd = args.rvd_deprecated
    if args.ssh_client != "openssh":
        if args.ssh_client == "dart":
            raise ConfigError("--ssh-client dart is not supported (use openssh)")
        raise ConfigError(f"--ssh-client must be openssh, not {args.ssh_client!r}")
    if not args.from_:
        raise ConfigError("-f/--from is required")
    args.from_ = validate_atsign(args.from_, add_at=True)
    if args.to:
        args.to = validate_atsign(args.to, add_at=True)
    if args.list_devices:
        return
    if not args.to:
        raise ConfigError("-t/--to is required")
    # -r empty or absent: the standard relay list; "@a,@b": the best of those (latest spec 1)
    args.srvd, args.relay_candidates = parse_relay_option(args.srvd or args.host)
    if args.device is None:
        args.device = "default"
        if not args.quiet:
            print("sshnp: warning: no -d/--device given, using 'default'", file=sys.stderr)
    args.device = validate_device_name(args.device)
    if not 0 <= args.local_port <= 65535:
        raise ConfigError("--local-port must be 0..65535")
    if not 1 <= args.remote_sshd_port <= 65535:
        raise ConfigError("--remote-sshd-port must be 1..65535")
    for name in ("remote_user_name", "tunnel_user_name"):
        v = getattr(args, name)
        if v is not None and (
            not v or v.startswith("-") or any(c.isspace() or c in "@:/" or ord(c) < 0x20 for c in v)
        ):
            raise ConfigError(f"invalid user name {v!r}")
    args.local_ssh_argv = ssh_option_argv(args.local_ssh_options)
    if args.identity_file and not os.path.isfile(args.identity_file):
        raise IdentityFileError(
            f"-i {args.identity_file}: no such file (the ssh private key for the session)"
        )
    if args.send_ssh_public_key:
        if not args.identity_file:
            raise ConfigError("-s needs -i (the private key whose public key is sent)")
        args.public_key_text = _public_key_from_identity(
            args.identity_file, args.identity_passphrase
        )
    if args.local_port and not args.stdio:
        local_port_free("127.0.0.1", args.local_port)
    if args.require_aead and not args.encrypt:
        raise ConfigError("--require-aead cannot be combined with --no-et")
    if args.require_aead and not args.aead:
        raise ConfigError("--require-aead cannot be combined with --no-aead")
    if args.stdio and args.print_command:
        raise ConfigError("--stdio cannot be combined with -x")
    if args.stdio and not args.encrypt:
        raise ConfigError("--stdio needs the encrypted flow (drop --no-et)")
