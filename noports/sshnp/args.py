"""sshnp flags (spec 7.1 plus ours), config files and profiles.

Precedence: command line > environment (``NOPORTS_SSHNP_*``) > ``--config-file`` / ``-e`` /
``--profile`` (official env-style ``KEY=VALUE``; ``~/.sshnp/config/<profile>.env``) > TOML
``--config``. Validation happens here, before any I/O: device names full-match the official
grammar (T8), atSigns are checked, a ``-s`` key is parsed as an ssh public key.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .. import config
from ..crypto.sshkey import parse_public_key
from ..errors import ConfigError, NoPortsError
from ..names import validate_atsign, validate_device_name

EPILOG = """\
ours: --stdio (tunnel on stdin/stdout for ProxyCommand), `sshnp ssh-config ...` (write a Host
block), --require-aead, --[no-]aead, --root, --ca-file, --profile, --output json.
exit codes: 0 ok (or ssh's own exit code when sshnp runs ssh), 1 error, 2 usage,
3 refused (permit-open, signature, missing daemon feature, --require-aead not met),
4 not found (keys file, username record), 5 timeout (daemon or relay did not answer),
6 protocol, 7 network.
"""


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
    p.add_argument("-r", "--srvd", default=None, metavar="@RELAY", help="relay (srvd) atSign")
    p.add_argument("-h", "--host", dest="host", default=None, help=argparse.SUPPRESS)
    p.add_argument("-l", "--local-port", type=int, default=0, help="local port (0 = any free port)")
    p.add_argument("-k", "--key-file", default=None, help="atKeys file")
    p.add_argument(
        "-i", "--identity-file", default=None, help="ssh private key for the user session"
    )
    p.add_argument("--identity-passphrase", default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "-s",
        "--send-ssh-public-key",
        action="store_true",
        help="send the public key of -i to the daemon (needs a daemon started with -s)",
    )
    p.add_argument(
        "-o",
        "--local-ssh-options",
        action="append",
        default=[],
        help="ssh -o option for the user session (repeatable)",
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
    p.add_argument("--root-domain", default="root.atsign.org", help="atDirectory host")
    p.add_argument("--root", default=None, help="atDirectory host:port (overrides --root-domain)")
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
            cfg_file = cfg_file or str(profile_dir() / f"{profile}.env")
        if cfg_file:
            file_values = config.load_env_file(cfg_file, parser)
    except ConfigError as exc:
        parser.error(str(exc))
    args = config.parse_args(parser, "sshnp", args_in, file_values=file_values)
    try:
        validate(args)
    except (ConfigError, NoPortsError) as exc:
        parser.error(str(exc))
    return args


def validate(args: argparse.Namespace) -> None:
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
    relay = args.srvd or args.host
    if not relay:
        raise ConfigError("-r/--srvd is required")
    args.srvd = validate_atsign(relay, add_at=True)
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
    opts: list[str] = []
    for o in args.local_ssh_options:
        if any(ord(c) < 0x20 for c in o):
            raise ConfigError("control character in an -o option")
        opts.append(o)
    args.local_ssh_options = opts
    if args.send_ssh_public_key:
        if not args.identity_file:
            raise ConfigError("-s needs -i (the public key sent is <identity>.pub)")
        pub = Path(args.identity_file + ".pub")
        try:
            text = pub.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read {pub}: {exc.strerror}") from None
        key = parse_public_key(" ".join(text.split()[:2]), allow_comment=False)
        args.public_key_text = key.key_text()
    if args.require_aead and not args.encrypt:
        raise ConfigError("--require-aead cannot be combined with --no-et")
    if args.require_aead and not args.aead:
        raise ConfigError("--require-aead cannot be combined with --no-aead")
    if args.stdio and args.print_command:
        raise ConfigError("--stdio cannot be combined with -x")
    if args.stdio and not args.encrypt:
        raise ConfigError("--stdio needs the encrypted flow (drop --no-et)")
