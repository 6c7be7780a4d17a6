"""``srvd``: the NoPorts relay daemon (spec 4; work in :mod:`noports.srvd`).

Readiness: once the notification monitor is registered, srvd logs on stderr
``srvd <@atSign> ready: monitor started (...)``; wait for ``ready: monitor started``.

Exit codes (``noports.errors``): 0 stopped cleanly (SIGTERM/SIGINT, after the drain);
1 other failure (e.g. workers could not start); 2 bad arguments or configuration (one line
on stderr); 3 authentication refused by the atServer, or a key file with open permissions;
4 key file missing/unreadable or atSign unknown; 5 timeout; 6 protocol error; 7 cannot
connect to the root or atServer.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .. import _compat
from ..config import parse_args
from ..errors import EXIT_OK, ConfigError
from ..log import escape, setup_logging
from ..metrics import add_option as add_metrics_option
from ..names import InvalidNameError, validate_atsign
from ..relay import RelayLimits
from ..srvd.daemon import Settings, Srvd, default_root
from .common import add_common, fail

PROG = "srvd"

EPILOG = """\
Every option can also come from the environment (NOPORTS_SRVD_<OPTION>, e.g.
NOPORTS_SRVD_PORT_RANGE=40000-40999; NOPORTS_ROOT, NOPORTS_CA_FILE, NOPORTS_ROOT_DOMAIN and
NOPORTS_LOG_FORMAT are shared by all programs) or from a TOML file (--config, keys are the
long option names). Precedence: command line > environment > file; unknown keys are errors.

Pre-auth limits: --max-preauth is relay-wide and split evenly across workers;
--max-preauth-per-ip applies within each worker (a session's sockets all land in one worker).
--json-response answers every JSON request in the JSON form; a request that asks for it
(sendJsonResponse) always gets it. Legacy requests always get the CSV form.

Ready line (stderr): "srvd <@atSign> ready: monitor started (...)".
Exit codes: 0 clean stop, 1 failure, 2 usage/config, 3 auth refused, 4 keys missing,
5 timeout, 6 protocol, 7 cannot connect.
"""

SNOOP_HELP = (
    "log every relayed byte (non-printables as '*'). PRIVACY: without end-to-end "
    "encryption this writes the tunnel's plaintext to the log; debugging only"
)


def _port_range(text: str) -> tuple[int, int]:
    try:
        lo_s, hi_s = text.split("-", 1)
        lo, hi = int(lo_s), int(hi_s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO-HI, got {text!r}") from None
    if not (1 <= lo < hi <= 65535):
        raise argparse.ArgumentTypeError(f"{text!r}: need 1 <= LO < HI <= 65535")
    return lo, hi


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def _port(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {v}")
    return v


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 <= v <= 86400:
        raise argparse.ArgumentTypeError(f"must be 0-86400 seconds, got {text!r}")
    return v


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line on stderr (exit 2), not the whole usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {escape(message)} (see {self.prog} --help)\n")


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def build_parser(environ: dict[str, str] | None = None) -> argparse.ArgumentParser:
    env = os.environ if environ is None else environ
    p = _Parser(
        prog=PROG,
        description="NoPorts socket rendezvous relay daemon.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # official flags (spec 4.1)
    p.add_argument("-a", "--atsign", required=True, help="the relay's atSign (mandatory)")
    p.add_argument(
        "-i",
        "--ip",
        required=True,
        help="FQDN or IP sent to clients verbatim (mandatory; not used for binding)",
    )
    p.add_argument(
        "-k",
        "--key-file",
        "--keyFile",
        dest="key_file",
        default=None,
        help="atKeys file (default ~/.atsign/keys/<atSign>_key.atKeys)",
    )
    p.add_argument(
        "-m",
        "--manager",
        default="open",
        help="only this atSign (comma-separated list allowed) may request sessions; "
        "'open' = anyone (default open)",
    )
    p.add_argument(
        "--root-domain",
        default="root.atsign.org",
        help="atDirectory host (default root.atsign.org; --root wins)",
    )
    p.add_argument(
        "--443",
        dest="only443",
        action="store_true",
        default=False,
        help="also listen on one port (--443-bind-port) for port-443 sessions: every "
        "socket authenticates with escr and names its session and side",
    )
    p.add_argument(
        "--443-bind-port",
        dest="bind_port_443",
        type=_port,
        default=443,
        help="port the --443 listener binds (default 443; replies still name 443, see "
        "--443-advertise-port)",
    )
    if env.get("ENABLE_SNOOP", "").lower() == "true":
        p.add_argument("-s", "--snoop", action="store_true", default=False, help=SNOOP_HELP)
    add_common(p)
    # ours
    p.add_argument(
        "--root-server",
        "--root",
        dest="root",
        default=None,
        help="root host[:port] (env NOPORTS_ROOT)",
    )
    p.add_argument("--ca-file", default=None, help="extra CA bundle (env NOPORTS_CA_FILE)")
    p.add_argument(
        "--bind",
        default="0.0.0.0",
        help="address the session ports listen on (default 0.0.0.0; '::' for IPv6)",
    )
    p.add_argument(
        "--port-range",
        type=_port_range,
        default=None,
        metavar="LO-HI",
        help="listen only on ports LO..HI (default: OS-chosen ephemeral ports)",
    )
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=default_workers(),
        help="data worker processes (default: one per available core)",
    )
    p.add_argument(
        "--max-sessions",
        type=_positive_int,
        default=10_000,
        help="live sessions relay-wide (default 10000; never more than the port range holds)",
    )
    p.add_argument(
        "--max-sessions-per-requester",
        type=_positive_int,
        default=50,
        help="live sessions per requesting atSign (default 50)",
    )
    p.add_argument(
        "--max-preauth",
        type=_positive_int,
        default=8192,
        help="sockets still authenticating, relay-wide (default 8192)",
    )
    p.add_argument(
        "--max-preauth-per-ip",
        type=_positive_int,
        default=256,
        help="sockets still authenticating per source address (default 256)",
    )
    p.add_argument(
        "--auth-timeout",
        type=_seconds,
        default=5.0,
        help="seconds a socket has to authenticate (default 5)",
    )
    p.add_argument(
        "--pair-timeout",
        type=_seconds,
        default=30.0,
        help="seconds a session waits for its first pair (default 30)",
    )
    p.add_argument(
        "--require-auth",
        action="store_true",
        default=False,
        help="refuse requests in which either socket is unauthenticated "
        "(legacy and --no-ad clients)",
    )
    p.add_argument(
        "--443-advertise-port",
        dest="advertise_port_443",
        type=_port,
        default=443,
        help="port named in replies to port-443 sessions (default 443, as official relays; "
        "for a listener behind a port forward, or tests)",
    )
    p.add_argument(
        "--refuse-payload-auth",
        action="store_true",
        default=False,
        help="accept only sessions that authenticate both sockets with escr (a fresh "
        "challenge per socket); refuses payload-mode auth lines, which can be replayed "
        "within a live session, and unauthenticated sessions",
    )
    p.add_argument(
        "--json-response",
        action="store_true",
        default=False,
        help="answer JSON requests in the JSON form even when not asked",
    )
    p.add_argument(
        "--drain-seconds",
        type=_seconds,
        default=30.0,
        help="on SIGTERM/SIGINT, how long live sessions may continue (default 30)",
    )
    p.add_argument(
        "--check-config",
        action="store_true",
        default=False,
        help="validate the command line, environment and --config file, then exit "
        "(0 valid, 2 invalid)",
    )
    add_metrics_option(p)
    return p


def settings_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Settings:
    try:
        atsign = validate_atsign(args.atsign, add_at=True)
        managers: frozenset[str] | None = None
        if args.manager.strip().lower() != "open":
            managers = frozenset(
                validate_atsign(m.strip(), add_at=True)
                for m in args.manager.split(",")
                if m.strip()
            )
            if not managers:
                raise InvalidNameError("--manager is empty")
    except InvalidNameError as exc:
        parser.error(str(exc))
    ip = args.ip.strip()
    if not ip or any(c in ip for c in ", \t\r\n"):
        parser.error(f"--ip {args.ip!r} must be one host name or address (no commas or spaces)")
    max_sessions = args.max_sessions
    if args.port_range is not None:
        max_sessions = min(max_sessions, (args.port_range[1] - args.port_range[0] + 1) // 2)
    per_worker_preauth = -(-args.max_preauth // args.workers)
    limits = {
        "auth_timeout": args.auth_timeout,
        "pair_timeout": args.pair_timeout,
        "max_preauth": per_worker_preauth,
        "max_preauth_per_ip": args.max_preauth_per_ip,
    }
    try:
        RelayLimits(**limits)
    except ValueError as exc:
        parser.error(str(exc))
    level = logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING
    return Settings(
        atsign=atsign,
        ip=ip,
        keys_file=args.key_file,
        managers=managers,
        root=default_root(args.root, args.root_domain),
        ca_file=args.ca_file,
        bind=args.bind,
        port_range=args.port_range,
        workers=args.workers,
        max_sessions=max_sessions,
        per_requester=args.max_sessions_per_requester,
        require_auth=args.require_auth,
        json_response=args.json_response,
        drain_seconds=args.drain_seconds,
        snoop=bool(getattr(args, "snoop", False)),
        limits=limits,
        log_level=level,
        log_format=args.log_format,
        metrics=_metrics_address(args.metrics, parser),
        single_port=args.bind_port_443 if args.only443 else None,
        single_advertise=args.advertise_port_443,
        refuse_payload_auth=args.refuse_payload_auth,
    )


def _metrics_address(text: str | None, parser: argparse.ArgumentParser) -> str | None:
    if not text:
        return None
    from ..metrics import parse_address

    try:
        parse_address(text)
    except ConfigError as exc:
        parser.error(str(exc))
    return text


class _ReloadParser(_Parser):
    """On reload a bad configuration must not exit the running relay."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(escape(message))

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        raise ConfigError(escape((message or f"exit {status}").strip()))


def reload_settings(argv: list[str] | None) -> Settings:
    """Settings from the same command line, the current environment and the config file as it
    is now; ConfigError (the running relay keeps its settings) when they are invalid."""
    parser = build_parser()
    parser.__class__ = _ReloadParser
    return settings_from(parse_args(parser, PROG, argv), parser)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, PROG, argv)
    settings = settings_from(args, parser)
    if args.check_config:
        print(f"{PROG}: configuration is valid" + (f" ({args.config})" if args.config else ""))
        return EXIT_OK
    setup_logging(args)
    # The official relay's "shout" lines are always logged; -v adds the detail lines.
    logging.getLogger("noports.srvd").setLevel(logging.DEBUG if args.debug else logging.INFO)
    logging.getLogger("noports.srvd.detail").setLevel(settings.log_level)
    try:
        relay = Srvd(settings)
        relay.reloader = lambda: reload_settings(argv)
        return _compat.run(relay.run()) or EXIT_OK
    except KeyboardInterrupt:  # pragma: no cover - a signal before the handlers were set
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001 - one line, documented exit code
        return fail(PROG, exc)


if __name__ == "__main__":
    sys.exit(main())
