"""``sshnpd``: the NoPorts device daemon (official flags and defaults, spec 6.1).

Only parsing lives here; the daemon is :mod:`noports.sshnpd.daemon`. Every flag can also come
from the environment (``NOPORTS_SSHNPD_<FLAG>``) or a config file: the official YAML schema
(``--config FILE``, else ``$SSHNPD_CONFIG``, else /etc/noports/sshnpd.yaml if present) or a
TOML file (``.toml``); the command line wins. Empty arguments (the official systemd unit
passes ``"$delegate_policy"`` even when it is empty) are ignored. Exit codes: 0 after
SIGTERM/SIGINT, 2 for bad usage or configuration, otherwise the
documented code of the error that stopped the daemon (README "Exit codes").
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from .. import _compat
from ..at.client import AtClient
from ..config import parse_args
from ..crypto.atkeys import AtKeys, default_keys_path
from ..errors import EXIT_OK, ConfigError
from ..log import escape, setup_logging
from ..metrics import add_option as add_metrics_option
from ..names import validate_atsign, validate_device_group, validate_device_name
from ..session.permitopen import DEFAULT_PERMIT_OPEN, POLICY_DEFAULT_PERMIT_OPEN, PermitOpen
from ..sshnpd.authkeys import validate_options
from ..sshnpd.daemon import Daemon, DaemonConfig
from .common import DEFAULT_ROOT_DOMAIN, add_common, fail, root_of

PROG = "sshnpd"
DEFAULT_CONFIG = "/etc/noports/sshnpd.yaml"
CONFIG_ENV = "SSHNPD_CONFIG"
#: the official sshnpd.yaml schema (noports_core sshnpd options, configKey) -> our dest
YAML_KEYS = {
    "/atsign/atsign": "atsign",
    "/atsign/keys": "key_file",
    "/atsign/passphrase": "pass_phrase",
    "/atsign/root": "root",
    "/atsign/root-domain": "root",
    "/access/managers": "managers",
    "/access/policy": "policy_manager",
    "/access/permitopen": "permit_open",
    "/device/name": "device",
    "/device/group": "device_group",
    "/device/hide": "hide",
    "/ssh/add-publickeys": "sshpublickey",
    "/ssh/client": "ssh_client",
    "/ssh/ssh-client": "ssh_client",  # what the official sample sshnpd.yaml writes
    "/ssh/sshd-port": "local_sshd_port",
    "/ssh/publickey-permissions": "sshpublickey_permissions",
    "/ssh/ephemeral-permissions": "ephemeral_permissions",
    "/ssh/algorithm": "ssh_algorithm",
    "/runtime/storage-path": "storage_path",
    "/runtime/clear-cached-pks": "clear_cached_pks",
    "/runtime/strict": "strict",
    "/runtime/verbose": "verbose",
    "/runtime/debug": "debug",
}
log = logging.getLogger("noports.sshnpd")
NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        add_help=False,
        description="NoPorts device daemon: answers sshnp/npt session requests from its "
        "managers (or the policy service) and runs the device end of each tunnel.",
    )
    p.add_argument("--help", action="help", help="show this help and exit")
    p.add_argument("-a", "--atsign", required=True, help="the device's atSign")
    p.add_argument(
        "-k",
        "--key-file",
        "--keyFile",
        dest="key_file",
        default=None,
        help="atKeys file (default ~/.atsign/keys/<atSign>_key.atKeys)",
    )
    p.add_argument(
        "-P",
        "--pass-phrase",
        "--passPhrase",
        dest="pass_phrase",
        default=None,
        help="pass phrase of a password-protected atKeys file (visible to local users on the "
        "command line: prefer atsign.passphrase in the config file or "
        "NOPORTS_SSHNPD_PASS_PHRASE_FILE)",
    )
    p.add_argument(
        "-m",
        "--managers",
        "--manager",
        dest="managers",
        action="append",
        default=None,
        help="manager atSign(s), comma separated; may be repeated",
    )
    p.add_argument(
        "-p",
        "--policy-manager",
        default=None,
        help="policy (NPA) atSign that authorises other clients",
    )
    p.add_argument(
        "-d",
        "--device",
        default="default",
        help="device name (lower-cased, spaces to '_'; 2-36 of a-z 0-9 _ -)",
    )
    p.add_argument(
        "-s",
        "--sshpublickey",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="accept ssh public keys from clients into ~/.ssh/authorized_keys",
    )
    p.add_argument(
        "-S",
        "--sshpublickey-permissions",
        default="",
        help="authorized_keys options prefixed to keys accepted with -s",
    )
    p.add_argument(
        "-h",
        "--hide",
        action="store_true",
        default=False,
        help="do not share username and device_info with managers (deletes them)",
    )
    p.add_argument(
        "-u",
        "--un-hide",
        "--username",
        dest="un_hide",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=argparse.SUPPRESS,
    )
    p.add_argument(
        "--ssh-client",
        choices=("openssh", "dart"),
        default="openssh",
        help="accepted for compatibility (only the legacy reverse ssh used it)",
    )
    p.add_argument(
        "--root-domain",
        default=DEFAULT_ROOT_DOMAIN,
        help="root directory host (port 64); --root overrides",
    )
    p.add_argument(
        "--root-server",
        "--root",
        dest="root",
        default=None,
        help="root directory host[:port] or proxy:host:port (env NOPORTS_ROOT)",
    )
    p.add_argument("--ca-file", default=None, help="extra CA bundle to trust (env NOPORTS_CA_FILE)")
    p.add_argument(
        "--device-group",
        "--dg",
        dest="device_group",
        default="__none__",
        help="device group, sent to the policy service and in pings",
    )
    p.add_argument("--local-sshd-port", type=int, default=22, help="local sshd port (22)")
    p.add_argument(
        "--ephemeral-permissions",
        default="",
        help="extra authorized_keys options for ephemeral keys",
    )
    p.add_argument(
        "--ssh-algorithm",
        choices=("ssh-ed25519", "ssh-rsa"),
        default="ssh-ed25519",
        help="ephemeral key algorithm",
    )
    p.add_argument(
        "--storage-path",
        default=None,
        help="accepted for compatibility; this daemon keeps no local atClient store",
    )
    p.add_argument(
        "--permit-open",
        "--po",
        dest="permit_open",
        default=None,
        help=f"host:port list sessions may reach (default {DEFAULT_PERMIT_OPEN}; "
        f"{POLICY_DEFAULT_PERMIT_OPEN} with -p)",
    )
    p.add_argument(
        "--require-aead",
        action="store_true",
        default=False,
        help="refuse sessions that do not use the noports AEAD mode",
    )
    p.add_argument(
        "--strict",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="verify request signatures (official default: only with -p); this daemon "
        "always verifies, so --no-strict changes nothing",
    )
    p.add_argument(
        "--clear-cached-pks",
        action="store_true",
        default=False,
        help="accepted for compatibility: this daemon caches no public keys",
    )
    p.add_argument(
        "--doctor",
        action="store_true",
        default=False,
        help="check keys, root, atServer, sshd and configuration, print a summary, exit",
    )
    p.add_argument(
        "-o",
        "--output",
        nargs="?",
        const="sshnpd_doctor_log.txt",
        default=None,
        metavar="FILE",
        help="with --doctor: also save the summary (default sshnpd_doctor_log.txt)",
    )
    p.add_argument(
        "--check-config",
        action="store_true",
        default=False,
        help="validate the command line, environment and config file, then exit "
        "(0 valid, 2 invalid); SIGHUP re-reads them in a running daemon",
    )
    p.add_argument("--max-sessions", type=int, default=128, help="concurrent tunnels (128)")
    p.add_argument(
        "--drain",
        type=float,
        default=0.0,
        metavar="SECS",
        help="on SIGTERM/SIGINT let running sessions finish for up to SECS seconds "
        "(default 0: cut them at once)",
    )
    add_metrics_option(p)
    add_common(p, verbose_short=True)
    return p


def _managers(values: Sequence[str] | None) -> tuple[str, ...]:
    out: list[str] = []
    for v in values or ():
        for item in v.split(","):
            item = item.strip(" ").lower()
            if item:
                a = validate_atsign(item, add_at=True)
                if a not in out:
                    out.append(a)
    return tuple(out)


def config_from_args(args: argparse.Namespace) -> DaemonConfig:
    atsign = validate_atsign(args.atsign.strip().lower(), add_at=True)
    managers = _managers(args.managers)
    policy = (
        validate_atsign(args.policy_manager.strip().lower(), add_at=True)
        if args.policy_manager
        else None
    )
    if not managers and not policy:
        raise ConfigError("at least one of --managers and --policy-manager is required")
    if not 1 <= args.local_sshd_port <= 65535:
        raise ConfigError("--local-sshd-port must be 1-65535")
    if not 1 <= args.max_sessions <= 10_000:
        raise ConfigError("--max-sessions must be 1-10000")
    if not 0 <= args.drain <= 86_400:
        raise ConfigError("--drain must be 0-86400 seconds")
    if args.metrics:
        from ..metrics import parse_address

        parse_address(args.metrics)
    if args.permit_open is not None:
        po_text = args.permit_open
    else:
        po_text = POLICY_DEFAULT_PERMIT_OPEN if policy else DEFAULT_PERMIT_OPEN
    # spaces around commas are tolerated; any other whitespace or control character is refused
    permit = PermitOpen.parse(",".join(s.strip(" ") for s in po_text.split(",") if s.strip(" ")))
    return DaemonConfig(
        atsign=atsign,
        device=validate_device_name(args.device),
        managers=managers,
        policy_manager=policy,
        device_group=validate_device_group(args.device_group),
        permit_open=permit,
        accept_public_keys=bool(args.sshpublickey),
        public_key_permissions=validate_options(args.sshpublickey_permissions),
        hide=bool(args.hide),
        local_sshd_port=args.local_sshd_port,
        ephemeral_permissions=validate_options(args.ephemeral_permissions),
        ssh_algorithm=args.ssh_algorithm,
        require_aead=bool(args.require_aead),
        max_sessions=args.max_sessions,
        drain=args.drain,
        metrics=args.metrics or None,
        log_level=(
            logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING
        ),
    )


class _CheckParser(argparse.ArgumentParser):
    """``--check-config``: a usage error is one line on stderr (exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {escape(message)}\n")


class _ReloadParser(argparse.ArgumentParser):
    """On reload a bad configuration must not exit the running daemon."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(escape(message))

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        raise ConfigError(escape((message or f"exit {status}").strip()))


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    return parse_args(
        parser,
        PROG,
        argv,
        default_config=DEFAULT_CONFIG,
        yaml_keys=YAML_KEYS,
        config_env=(CONFIG_ENV,),
    )


def reload_config(argv: list[str]) -> DaemonConfig:
    """The configuration from the same command line, the environment and the config file as
    they are now; ConfigError (the running daemon keeps its configuration) when invalid."""
    parser = build_parser()
    parser.__class__ = _ReloadParser
    return config_from_args(_parse(parser, argv))


def _notice(text: str) -> None:
    log.handle(log.makeRecord(log.name, NOTICE, __file__, 0, text, (), None))


def load_keys(args: argparse.Namespace, atsign: str) -> AtKeys:
    path = args.key_file or default_keys_path(atsign)
    # like ssh: a group/world-readable key file is refused (exit 3)
    return AtKeys.load(path, atsign, strict_mode=True, pass_phrase=args.pass_phrase or None)


async def _serve(
    cfg: DaemonConfig, args: argparse.Namespace, argv: list[str] | None = None
) -> int:
    client = await AtClient.connect(
        cfg.atsign, keys=load_keys(args, cfg.atsign), root=root_of(args), ca_file=args.ca_file
    )
    daemon = Daemon(cfg, client, on_ready=_notice)
    if argv is not None:
        daemon.reloader = lambda: reload_config(argv)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.stop)
    loop.add_signal_handler(signal.SIGHUP, daemon.reload)
    try:
        _notice(
            f"sshnpd {cfg.atsign} device {cfg.device} starting; managers "
            f"{','.join(cfg.managers) or '-'}; policy {cfg.policy_manager or '-'}; "
            f"permit-open {cfg.permit_open}"
        )
        await daemon.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await client.close()
    _notice("sshnpd stopped")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--doctor" in argv:  # runs before argument validation, as the official
        from .sshnpd_doctor import run_doctor

        return run_doctor(parser, argv, default_config=DEFAULT_CONFIG, yaml_keys=YAML_KEYS)
    if "--check-config" in argv:
        parser.__class__ = _CheckParser
    args = _parse(parser, argv)
    if args.check_config:
        try:
            config_from_args(args)
        except ConfigError as exc:
            parser.error(str(exc))
        if args.output is not None:
            parser.error("-o/--output is only valid with --doctor")
        print(f"{PROG}: configuration is valid" + (f" ({args.config})" if args.config else ""))
        return EXIT_OK
    setup_logging(args)
    if args.output is not None:
        parser.error("-o/--output is only valid with --doctor")
    if args.clear_cached_pks:
        log.info("--clear-cached-pks: nothing to clear (this daemon caches no public keys)")
    if args.pass_phrase and any(a.startswith(("-P", "--pass", "--passPhrase")) for a in argv):
        print(
            f"{PROG}: warning: a pass phrase on the command line is visible to other local "
            "users; prefer atsign.passphrase in the config file or "
            "NOPORTS_SSHNPD_PASS_PHRASE_FILE",
            file=sys.stderr,
        )
    if args.un_hide is not None:
        print(
            "[WARN] -u, --un-hide is deprecated; the daemon shares its username unless "
            "-h/--hide is given",
            file=sys.stderr,
        )
    try:
        cfg = config_from_args(args)
    except ConfigError as exc:
        parser.error(str(exc))
    try:
        return _compat.run(_serve(cfg, args, argv))
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as exc:  # one line and a documented exit code, never a traceback
        return fail(PROG, exc)


if __name__ == "__main__":
    sys.exit(main())
