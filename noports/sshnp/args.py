"""sshnp flags (spec 7.1 plus ours), config files and profiles.

Precedence: command line > environment (``NOPORTS_SSHNP_*``) > ``--config-file`` / ``-e`` /
``--profile`` (official env-style ``KEY=VALUE``; ``~/.sshnp/config/<profile>.env``) > TOML
``--config``. Validation happens here, before any I/O: device names full-match the official
grammar (T8), atSigns are checked, a ``-s`` key is parsed as an ssh public key.
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

from .. import config
from ..crypto.sshkey import parse_public_key
from ..errors import EXIT_NOT_FOUND, EXIT_USAGE, ConfigError, LocalError, NoPortsError
from ..names import validate_atsign, validate_device_name
from ..session.relays import parse_relay_option

EPILOG = """\
ours: --stdio (tunnel on stdin/stdout for ProxyCommand), sshnp ssh-config ... (write a Host
block), --require-aead, --[no-]aead, --root, --ca-file, --profile, --output json.
exit codes: 0 ok (or ssh's own exit code when sshnp runs ssh), 1 error, 2 usage,
3 refused (permit-open, signature, missing daemon feature, --require-aead not met),
4 not found (keys file, username record), 5 timeout (daemon or relay did not answer),
6 protocol, 7 network.
"""


class IdentityFileError(LocalError):
    exit_code = EXIT_NOT_FOUND


class LocalPortBusyError(LocalError):
    exit_code = EXIT_USAGE


def profile_dir() -> Path:
    return Path.home() / ".sshnp" / "config"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sshnp",
        add_help=False,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="ssh to a NoPorts device (no open ports on the device).",
    )
    B = argparse.BooleanOptionalAction
    p.add_argument("--help", action="help", help="show this help and exit")
    p.add_argument(
        "-f", "--from", dest="from_", default=None, metavar="@CLIENT", help="client atSign"
    )
    p.add_argument(
        "-t", "--to", default=None, metavar="@DEVICE_ATSIGN", help="device daemon atSign"
    )
    p.add_argument("-d", "--device", default=None, help="device name (default: default)")
    p.add_argument(
        "-r",
        "--srvd",
        default=None,
        metavar="@RELAY",
        help="relay (srvd) atSign; a comma list or empty: select the lowest-latency one",
    )
    p.add_argument("-h", "--host", dest="host", default=None, help=argparse.SUPPRESS)
    p.add_argument("-l", "--local-port", type=int, default=0, help="local port (0 = any free port)")
    p.add_argument("-k", "--key-file", default=None, help="atKeys file")
    p.add_argument(
        "-P",
        "--pass-phrase",
        "--passPhrase",
        dest="pass_phrase",
        default=None,
        help="pass phrase of a password-protected atKeys file (prefer the environment: "
        "NOPORTS_SSHNP_PASS_PHRASE or NOPORTS_SSHNP_PASS_PHRASE_FILE)",
    )
    p.add_argument(
        "-i", "--identity-file", default=None, help="ssh private key for the user session"
    )
    p.add_argument("--identity-passphrase", default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "-s",
        "--send-ssh-public-key",
        action="store_true",
        help="send the public key of -i (derived from the private key) to the daemon "
        "(needs a daemon started with -s)",
    )
    p.add_argument(
        "-o",
        "--local-ssh-options",
        action="append",
        default=[],
        help="extra ssh arguments for the user session, as the official client: values are "
        'split on commas; one starting with "-" is passed as ssh arguments ("-D 1080", '
        '"-L 8080:localhost:80"), any other as ssh -o OPTION (repeatable)',
    )
    p.add_argument("-u", "--remote-user-name", default=None, help="remote user name")
    p.add_argument("-U", "--tunnel-user-name", default=None, help="user for the v4 tunnel ssh")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.add_argument(
        "-x",
        "--output-execution-command",
        dest="print_command",
        action="store_true",
        help="print the ssh command and leave the tunnel waiting in the background",
    )
    p.add_argument("--ssh-client", default="openssh", help="openssh (dart is not supported)")
    p.add_argument(
        "--root-domain", "--rootDomain", default="root.atsign.org", help="atDirectory host"
    )
    p.add_argument(
        "--root-server",
        "--root",
        dest="root",
        default=None,
        help="atDirectory host[:port] or proxy:host:port (overrides --root-domain)",
    )
    p.add_argument("--rvd", dest="rvd_deprecated", default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--legacy-daemon", dest="legacy_daemon", action="store_true", help=argparse.SUPPRESS
    )
    p.add_argument("--ca-file", default=None, help="extra CA bundle to trust")
    p.add_argument(
        "--remote-sshd-port", type=int, default=22, help="sshd port on the device (v4 flow)"
    )
    p.add_argument(
        "--idle-timeout", type=int, default=15, help="seconds (accepted; dart client only)"
    )
    p.add_argument(
        "--ssh-algorithm",
        default="ssh-ed25519",
        choices=("ssh-ed25519", "ssh-rsa"),
        help="accepted for compatibility",
    )
    p.add_argument(
        "--add-forwards-to-tunnel",
        action="store_true",
        help="put the -o options on the v4 tunnel ssh instead of the user session",
    )
    p.add_argument(
        "--config-file",
        "-e",
        "--env-file",
        dest="config_file",
        default=None,
        help="env-style KEY=VALUE config file",
    )
    p.add_argument("--profile", default=None, help="~/.sshnp/config/<PROFILE>.env")
    p.add_argument(
        "--save-profile",
        default=None,
        metavar="NAME",
        help="write these settings as the official profile ~/.sshnp/config/<NAME>.env "
        "(spaces become '_') and exit",
    )
    p.add_argument(
        "--list-devices",
        "--ls",
        dest="list_devices",
        action="store_true",
        help="list devices (output on stderr)",
    )
    p.add_argument(
        "--authenticate-client-to-rvd",
        "--ac",
        dest="auth_client",
        action=B,
        default=True,
        help="our tunnel end authenticates to the relay",
    )
    p.add_argument(
        "--authenticate-device-to-rvd",
        "--ad",
        dest="auth_device",
        action=B,
        default=True,
        help="the daemon's tunnel end authenticates to the relay",
    )
    p.add_argument(
        "--relay-auth-mode",
        "--ram",
        dest="relay_auth_mode",
        choices=("payload", "escr"),
        default=None,
        help="how both tunnel ends authenticate to the relay: escr (a fresh signed challenge "
        "per socket) or payload (the official default). Default: escr, or payload when the "
        "device daemon does not support escr",
    )
    p.add_argument(
        "--443",
        dest="only443",
        action="store_true",
        default=False,
        help="use the relay's single port 443 (needs escr and a relay run with --443)",
    )
    p.add_argument(
        "--encrypt-rvd-traffic",
        "--et",
        dest="encrypt",
        action=B,
        default=True,
        help="encrypt end to end (off: the v4 double-ssh flow)",
    )
    p.add_argument(
        "--daemon-ping-timeout",
        "--dpt",
        dest="dpt",
        type=float,
        default=20.0,
        help="seconds to wait for the daemon's ping reply",
    )
    p.add_argument(
        "--stdio",
        action="store_true",
        help="carry the tunnel on stdin/stdout (ssh ProxyCommand); logs go to stderr",
    )
    p.add_argument("--aead", dest="aead", action=B, default=True, help="offer the AEAD mode")
    p.add_argument(
        "--require-aead", action="store_true", help="refuse unless the daemon uses the AEAD mode"
    )
    p.add_argument(
        "--output",
        choices=("text", "json"),
        default="text",
        help="json: -x prints a JSON object with the command, port and session",
    )
    from ..cli.common import add_common

    add_common(p)
    return p


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


def _preparse_file(argv: list[str]) -> tuple[str | None, str | None]:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config-file", "-e", "--env-file", dest="config_file", default=None)
    pre.add_argument("--profile", default=None)
    known, _ = pre.parse_known_args(argv)
    return known.config_file, known.profile


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args_in = list(sys.argv[1:] if argv is None else argv)
    cfg_file, profile = _preparse_file(args_in)
    file_values = None
    try:
        if profile:
            if os.sep in profile or profile.startswith("."):
                raise ConfigError("--profile takes a profile name, not a path")
            # official file names: spaces become '_' (~/.sshnp/config/my_pi.env)
            cfg_file = cfg_file or str(profile_dir() / f"{profile.replace(' ', '_')}.env")
        if cfg_file:
            file_values = config.load_env_file(cfg_file, parser)
    except ConfigError as exc:
        parser.error(str(exc))
    args = config.parse_args(parser, "sshnp", args_in, file_values=file_values)
    try:
        validate(args)
    except ConfigError as exc:
        parser.error(str(exc))
    except NoPortsError as exc:  # e.g. -i missing (4), local port busy: one line, its code
        from ..cli.common import fail

        sys.exit(fail("sshnp", exc))
    return args


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
