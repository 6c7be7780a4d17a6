"""``npt``: tunnel a local port to a TCP service on a NoPorts device (see ``noports.npt``).

The command line lives here (official flags and defaults, spec 6.2 and 7.2); the session
loop is :mod:`noports.npt.run`; ``main`` adds the ``-x`` detach and the one-line error.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import socket
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

from .. import config
from ..errors import ConfigError, NoPortsError
from ..log import setup_logging
from ..npt.durations import parse_duration
from .common import add_common, fail
from .options import (
    add_aead_flags,
    add_client_atsign_flags,
    add_daemon_ping_timeout_flag,
    add_output_flag,
    add_relay_auth_flags,
    add_root_flags,
    client_parser,
)

if TYPE_CHECKING:
    from ..session.background import Reporter

KEEP_ALIVE_DEFAULT_S = 24 * 3600.0
DEFAULT_TIMEOUT = "30s"
DEFAULT_HEARTBEAT = "5m"  # controlChannelHeartbeatIntervalMins since sshnoports 5.14.5

EPILOG = """\
durations (-T, -H): 30s, 1h, 1h,14m,30s, 7d; -T 0 = never (365 days), -H 0 = no heartbeats.
--lh/--local-host: comma list, the first that is an IP address or resolves is used;
0 or 0.0.0.0 = all interfaces (default localhost = 127.0.0.1).
exit codes: 0 ok, 1 error (also: no usable --lh address), 2 usage, 3 refused (permit-open,
signature, missing daemon feature, --require-aead not met), 4 not found, 5 timeout (daemon
or relay did not answer), 6 protocol, 7 network.
"""


def build_parser() -> argparse.ArgumentParser:
    p = client_parser(
        "npt",
        description="Tunnel a local port to a TCP service a NoPorts device permits.",
        epilog=EPILOG,
    )
    add_client_atsign_flags(p)
    p.add_argument("-d", "--device", required=True, help="device name (required, as official)")
    p.add_argument(
        "-p",
        "--rp",
        "--remote-port",
        dest="remote_port",
        type=int,
        required=True,
        help="port of the service on the device side",
    )
    p.add_argument(
        "-h",
        "--rh",
        "--remote-host",
        dest="remote_host",
        default="localhost",
        help="host of the service, as the daemon sees it (default localhost)",
    )
    p.add_argument(
        "-l",
        "--lp",
        "--local-port",
        dest="local_port",
        type=int,
        default=0,
        help="local port (0 = any free port)",
    )
    p.add_argument(
        "--lh",
        "--local-host",
        dest="local_host",
        default="localhost",
        help="local bind address(es), comma separated: the first usable one is used "
        "(default localhost = 127.0.0.1; 0 = all interfaces)",
    )
    add_root_flags(p)
    add_daemon_ping_timeout_flag(p)
    p.add_argument(
        "--pss",
        "--per-session-storage",
        dest="pss",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="accepted for compatibility; we keep no local storage",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.add_argument(
        "-x",
        "--exit-when-connected",
        dest="exit_when_connected",
        action="store_true",
        help="print the local port and leave the tunnel running in the background",
    )
    p.add_argument(
        "-K",
        "--keep-alive",
        dest="keep_alive",
        action="store_true",
        help="start a new session 5 s after one ends (not with -x)",
    )
    p.add_argument(
        "-T",
        "--timeout",
        default=None,
        help="idle timeout of the tunnel (default 30s; 24h with -K)",
    )
    p.add_argument(
        "-H",
        "--heartbeat",
        default=DEFAULT_HEARTBEAT,
        help="control-channel heartbeat interval, sent when the daemon supports it "
        f"(default {DEFAULT_HEARTBEAT}; 0 = none)",
    )
    p.add_argument(
        "--et",
        "--encrypt-rvd-traffic",
        dest="encrypt",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="encrypt the tunnel end to end (default on)",
    )
    add_aead_flags(p)
    add_relay_auth_flags(p)
    add_output_flag(p, help="json: a one-line ready event on stdout")
    p.add_argument(
        "--no-agent",
        dest="no_agent",
        action="store_true",
        help="run in this process even when a `noports agent` is running "
        "(also NOPORTS_NO_AGENT=1)",
    )
    add_common(p)
    return p


class NoLocalHostError(ConfigError):
    exit_code = 1  # the official npt exits 1 here


def resolve_local_host(text: str) -> str:
    """The address to bind for ``--lh``: the first entry that is an IP or resolves."""
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        if entry in ("0", "0.0.0.0"):
            return "0.0.0.0"
        if entry == "localhost":
            return "127.0.0.1"
        try:
            return str(ipaddress.ip_address(entry.strip("[]")))
        except ValueError:
            pass
        try:
            infos = socket.getaddrinfo(entry, None, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            continue
        if infos:
            return str(infos[0][4][0])
    raise NoLocalHostError(f"Error: No valid IP addresses found in: {text}")


def parse(argv: list[str] | None, environ: Mapping[str, str] | None = None) -> argparse.Namespace:
    """The flags (command line > ``environ`` (default ``os.environ``) > config file)."""
    from ..session.client import SessionSpec
    from ..session.features import npt_required_features
    from ..session.relays import parse_relay_option

    parser = build_parser()
    args = config.parse_args(parser, "npt", argv, environ=environ)
    try:
        if not 1 <= args.remote_port <= 65535:
            raise ConfigError("--remote-port must be 1..65535")
        if not 0 <= args.local_port <= 65535:
            raise ConfigError("--local-port must be 0..65535")
        if args.keep_alive and args.exit_when_connected:
            raise ConfigError("-K/--keep-alive cannot be combined with -x/--exit-when-connected")
        if args.require_aead and not args.encrypt:
            raise ConfigError("--require-aead cannot be combined with --no-encrypt-rvd-traffic")
        if args.require_aead and not args.aead:
            raise ConfigError("--require-aead cannot be combined with --no-aead")
        if args.timeout is None:
            args.timeout_s = (
                KEEP_ALIVE_DEFAULT_S if args.keep_alive else parse_duration(DEFAULT_TIMEOUT)
            )
        else:
            args.timeout_s = parse_duration(args.timeout)
        hb = args.heartbeat.strip()
        args.heartbeat_s = None if hb in ("0", "0s") else parse_duration(hb)
        relay, candidates = parse_relay_option(args.srvd)
        args.spec = SessionSpec(
            kind="npt",
            daemon=args.to,
            device=args.device,
            relay=relay,
            relay_candidates=candidates,
            root=args.root_domain,
            encrypt=args.encrypt,
            offer_aead=args.aead,
            require_aead=args.require_aead,
            required=npt_required_features(timeout_s=args.timeout_s),
            ping_timeout=args.dpt,
            remote_host=args.remote_host,
            remote_port=args.remote_port,
            timeout_ms=int(args.timeout_s * 1000),
            relay_auth_mode=args.relay_auth_mode or "escr",
            ram_fallback=args.relay_auth_mode is None,
            only443=args.only443,
        )
    except ConfigError as exc:
        parser.error(str(exc))
    try:
        args.bind_host = resolve_local_host(args.local_host)
    except NoLocalHostError as exc:
        print(str(exc), file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    if "," in args.local_host and not args.quiet:
        print(f"Will bind to local host: {args.bind_host}", file=sys.stderr)
    if args.local_port:  # before any network step: a busy port must not cost a session
        from ..sshnp.args import local_port_free

        try:
            local_port_free(args.bind_host, args.local_port)
        except NoPortsError as exc:
            raise SystemExit(fail("npt", exc)) from None
    return args


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    # the session key is generated on another core while the rest of the program imports
    from ..crypto import ephemeral

    ephemeral.prestart(sys.argv[1:] if argv is None else argv)
    # no garbage collection while the session modules import (they make thousands of
    # objects and no garbage; ~5 % of the start-up CPU): back on before the session runs
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        args = parse(argv)
        setup_logging(args)
        import signal

        from .. import _compat
        from ..npt.run import log, run
        from .detach import run_detached
    finally:
        if gc_was_on:
            gc.enable()

    def work(report: Reporter | None) -> int:
        try:
            return _compat.run(run(args, report))
        except KeyboardInterrupt:
            return 1
        except Exception as exc:  # noqa: BLE001 - one line and an exit code, as documented
            if args.debug:
                log.exception("npt failed")
            return fail("npt", exc)

    signal.signal(signal.SIGTERM, _terminate)  # SIGTERM ends us like SIGINT: exit 1
    if args.exit_when_connected:
        return run_detached(work)
    return work(None)


if __name__ == "__main__":
    sys.exit(main())
