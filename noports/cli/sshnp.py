"""``sshnp``: ssh to a NoPorts device (see ``noports.sshnp``). ``sshnp ssh-config ...`` writes
an ssh config Host block. Anything after ``--`` is the remote command for the user session.

The command line lives here (spec 7.1 plus ours). Precedence: command line > environment
(``NOPORTS_SSHNP_*``) > ``--config-file`` / ``-e`` / ``--profile`` (official env-style
``KEY=VALUE``; ``~/.sshnp/config/<profile>.env``) > TOML ``--config``. The checks that are
not argparse are :func:`noports.sshnp.args.validate`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..session.background import Reporter

EPILOG = """\
ours: --stdio (tunnel on stdin/stdout for ProxyCommand), sshnp ssh-config ... (write a Host
block), --require-aead, --[no-]aead, --root, --ca-file, --profile, --output json.
exit codes: 0 ok (or ssh's own exit code when sshnp runs ssh), 1 error, 2 usage,
3 refused (permit-open, signature, missing daemon feature, --require-aead not met),
4 not found (keys file, username record), 5 timeout (daemon or relay did not answer),
6 protocol, 7 network.
"""


def build_parser() -> argparse.ArgumentParser:
    from .common import add_common
    from .options import (
        add_aead_flags,
        add_daemon_ping_timeout_flag,
        add_output_flag,
        add_pass_phrase_flag,
        add_relay_auth_flags,
        add_root_flags,
        add_srvd_flag,
        client_parser,
    )

    p = client_parser(
        "sshnp",
        description="ssh to a NoPorts device (no open ports on the device).",
        epilog=EPILOG,
    )
    B = argparse.BooleanOptionalAction
    p.add_argument(
        "-f", "--from", dest="from_", default=None, metavar="@CLIENT", help="client atSign"
    )
    p.add_argument(
        "-t", "--to", default=None, metavar="@DEVICE_ATSIGN", help="device daemon atSign"
    )
    p.add_argument("-d", "--device", default=None, help="device name (default: default)")
    add_srvd_flag(p)
    p.add_argument("-h", "--host", dest="host", default=None, help=argparse.SUPPRESS)
    p.add_argument("-l", "--local-port", type=int, default=0, help="local port (0 = any free port)")
    p.add_argument("-k", "--key-file", default=None, help="atKeys file")
    add_pass_phrase_flag(p, env_help="NOPORTS_SSHNP_PASS_PHRASE or NOPORTS_SSHNP_PASS_PHRASE_FILE")
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
    add_root_flags(p, camel_alias=True, notes=False)
    p.add_argument("--rvd", dest="rvd_deprecated", default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--legacy-daemon", dest="legacy_daemon", action="store_true", help=argparse.SUPPRESS
    )
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
    add_relay_auth_flags(p)
    p.add_argument(
        "--encrypt-rvd-traffic",
        "--et",
        dest="encrypt",
        action=B,
        default=True,
        help="encrypt end to end (off: the v4 double-ssh flow)",
    )
    add_daemon_ping_timeout_flag(p, short_first=False)
    p.add_argument(
        "--stdio",
        action="store_true",
        help="carry the tunnel on stdin/stdout (ssh ProxyCommand); logs go to stderr",
    )
    add_aead_flags(p, aead_help="offer the AEAD mode")
    add_output_flag(p, help="json: -x prints a JSON object with the command, port and session")
    add_common(p)
    return p


def _preparse_file(argv: list[str]) -> tuple[str | None, str | None]:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config-file", "-e", "--env-file", dest="config_file", default=None)
    pre.add_argument("--profile", default=None)
    known, _ = pre.parse_known_args(argv)
    return known.config_file, known.profile


def parse(argv: list[str] | None) -> argparse.Namespace:
    # imported here, not at the top: main() starts the session keygen before the heavy imports
    from .. import config
    from ..errors import ConfigError, NoPortsError
    from ..sshnp.args import profile_dir, validate
    from .common import fail

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
        sys.exit(fail("sshnp", exc))
    return args


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # the session key is generated on another core while the rest of the program imports
    from ..crypto import ephemeral

    ephemeral.prestart(argv)
    from .. import _compat
    from ..errors import NoPortsError
    from ..log import setup_logging
    from ..sshnp import args as sshnp_args
    from .common import fail
    from .detach import run_detached

    if argv and argv[0] == "ssh-config":
        from . import sshconfig

        return sshconfig.main(argv[1:])
    command: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, command = argv[:i], argv[i + 1 :]
    args = parse(argv)
    setup_logging(args)
    if args.save_profile:
        try:
            print(f"saved profile {sshnp_args.save_profile(args)}", file=sys.stderr)
        except (NoPortsError, OSError) as exc:
            return fail("sshnp", exc)
        return 0

    def work(report: Reporter | None) -> int:
        from ..sshnp import run

        try:
            if args.list_devices:
                from ..sshnp.listing import list_devices

                return _compat.run(list_devices(args))
            if args.stdio:
                from ..sshnp.stdio import run_stdio

                return _compat.run(run_stdio(args))
            return _compat.run(run.run(args, report, run.check_command(command)))
        except KeyboardInterrupt:
            return 1
        except Exception as exc:  # noqa: BLE001 - one line and a documented exit code
            if args.debug:
                import logging

                logging.getLogger("noports.sshnp").exception("sshnp failed")
            return fail("sshnp", exc)

    signal.signal(signal.SIGTERM, _terminate)  # SIGTERM ends us like SIGINT: exit 1
    if args.print_command and not args.list_devices:
        return run_detached(work)
    return work(None)


if __name__ == "__main__":
    sys.exit(main())
