"""npt: flags and the session loop (spec 3.3, 7.2).

Inline (default): set up a session, open the multi-mode client end on ``--local-host:-l``,
print ``npt is listening on <host>:<port>`` on stderr (plus a one-line ``ready`` JSON event on
stdout with ``--output json``), run until the tunnel ends (control channel closed, or no
connection for ``-T``). ``-K`` starts a new session 5 s after one ends, on the same port.
``-x`` prints the port on stdout and leaves the tunnel running in a detached child.

Exit codes: 0 done; 1 other failure; 2 usage; 3 refused (daemon permit-open or signature,
relay nack, missing feature, --require-aead not met, authentication); 4 not found (keys file,
atSign); 5 timeout (no answer from the daemon or relay); 6 protocol; 7 network.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from typing import Any

from .. import _compat, config
from ..cli.common import add_common, fail
from ..errors import ConfigError, NoPortsError
from ..log import escape, setup_logging
from ..session.background import Reporter, run_detached
from ..session.client import (
    Established,
    SessionSpec,
    connect_client,
    establish_any,
    start_ephemeral_keygen,
)
from ..session.features import npt_required_features
from ..tunnel import ClientMulti
from .durations import parse_duration

log = logging.getLogger("noports.npt")
KEEP_ALIVE_DELAY = 5.0
KEEP_ALIVE_DEFAULT_S = 24 * 3600.0
DEFAULT_TIMEOUT = "30s"

EPILOG = """\
durations (-T): 30s, 1h, 1h,14m,30s, 7d; 0 = never (365 days).
exit codes: 0 ok, 1 error, 2 usage, 3 refused (permit-open, signature, missing daemon feature,
--require-aead not met), 4 not found, 5 timeout (daemon or relay did not answer), 6 protocol,
7 network.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="npt",
        add_help=False,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Tunnel a local port to a TCP service a NoPorts device permits.",
    )
    p.add_argument("--help", action="help", help="show this help and exit")
    p.add_argument(
        "-f", "--from", dest="from_", required=True, metavar="@CLIENT", help="client atSign"
    )
    p.add_argument(
        "-t", "--to", required=True, metavar="@DEVICE_ATSIGN", help="device daemon atSign"
    )
    p.add_argument("-r", "--srvd", required=True, metavar="@RELAY", help="relay (srvd) atSign")
    p.add_argument("-d", "--device", required=True, help="device name")
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
        "--local-host",
        default="127.0.0.1",
        help="local bind address (default 127.0.0.1; e.g. 127.0.0.2 with -l 445)",
    )
    p.add_argument(
        "-k",
        "--key-file",
        "--keyFile",
        dest="key_file",
        default=None,
        help="atKeys file (default ~/.atsign/keys/<from>_key.atKeys)",
    )
    p.add_argument("--root-domain", default="root.atsign.org", help="atDirectory host")
    p.add_argument("--root", default=None, help="atDirectory host:port (overrides --root-domain)")
    p.add_argument("--ca-file", default=None, help="extra CA bundle to trust")
    p.add_argument(
        "--dpt",
        "--daemon-ping-timeout",
        dest="dpt",
        type=float,
        default=20.0,
        help="seconds to wait for the daemon's ping reply",
    )
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
        "--et",
        "--encrypt-rvd-traffic",
        dest="encrypt",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="encrypt the tunnel end to end (default on)",
    )
    p.add_argument(
        "--aead",
        dest="aead",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="offer the AEAD mode (default on)",
    )
    p.add_argument(
        "--require-aead", action="store_true", help="refuse unless the daemon uses the AEAD mode"
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
        "--output",
        choices=("text", "json"),
        default="text",
        help="json: a one-line ready event on stdout",
    )
    add_common(p)
    return p


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = config.parse_args(parser, "npt", argv)
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
        args.spec = SessionSpec(
            kind="npt",
            daemon=args.to,
            device=args.device,
            relay=args.srvd,
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
    return args


def _progress(args: argparse.Namespace):
    def say(msg: str) -> None:
        if not args.quiet and not args.verbose and not args.debug:
            print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} : {msg}", file=sys.stderr, flush=True)

    return say


def ready_event(est: Established, host: str, port: int, started: float) -> dict[str, Any]:
    return {
        "event": "ready",
        "host": host,
        "port": port,
        "sessionId": est.session_id,
        "mode": est.mode,
        "setupMs": round((time.monotonic() - started) * 1000, 1),
        "timingsMs": est.timings,
    }


async def run(args: argparse.Namespace, report: Reporter | None = None) -> int:
    started = time.monotonic()
    say = _progress(args)
    root = args.root or args.root_domain
    eph = start_ephemeral_keygen() if args.encrypt else None
    t_connect = time.monotonic()
    client = await connect_client(
        args.from_, keys_file=args.key_file, root=root, ca_file=args.ca_file
    )
    connect_ms: float | None = round((time.monotonic() - t_connect) * 1000, 1)
    port = args.local_port
    try:
        while True:
            try:
                fut, eph = eph, None  # a key is used for one session only
                est = await establish_any(client, args.spec, progress=say, ephemeral=fut)
                cm = await ClientMulti.open(
                    est.relay_host,
                    est.relay_port,
                    auth_line=est.auth_line,
                    crypto=est.crypto,
                    local_host=args.local_host,
                    local_port=port,
                    timeout=args.timeout_s,
                )
            except (NoPortsError, OSError) as exc:
                if not args.keep_alive:
                    raise
                print(
                    f"npt: session failed: {escape(str(exc))}; retrying in {KEEP_ALIVE_DELAY:g} s",
                    file=sys.stderr,
                    flush=True,
                )
                await asyncio.sleep(KEEP_ALIVE_DELAY)
                continue
            port = cm.port
            if connect_ms is not None:  # keys file, root lookup, TLS and PKAM (first session)
                est.timings["atConnect"], connect_ms = connect_ms, None
            if args.keep_alive and args.encrypt:
                eph = start_ephemeral_keygen()  # ready for the next session
            ev = ready_event(est, args.local_host, cm.port, started)
            if not args.quiet:
                print(
                    f"npt is listening on {args.local_host}:{cm.port} ({est.mode})",
                    file=sys.stderr,
                    flush=True,
                )
            if report is not None:
                report(json.dumps(ev) if args.output == "json" else str(cm.port))
            elif args.output == "json":
                print(json.dumps(ev), flush=True)
            try:
                stats = await cm.wait()
            finally:
                await cm.close()
            log.info(
                "session %s ended: %d connections, %d up, %d down",
                est.session_id,
                stats.connections,
                stats.bytes_up,
                stats.bytes_down,
            )
            if not args.keep_alive:
                return 0
            print(
                f"npt: session ended; starting a new one in {KEEP_ALIVE_DELAY:g} s",
                file=sys.stderr,
                flush=True,
            )
            await asyncio.sleep(KEEP_ALIVE_DELAY)
            started = time.monotonic()
    finally:
        await client.close()


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    setup_logging(args)

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
