"""``srv``: drop-in replacement for the official tunnel-end binary (spec 5.1).

Official parents (sshnp, sshnpd, npt) find ``srv`` next to themselves, start it with the
flags below and the secrets in ``RV_*`` environment variables, wait for
``rv started successfully`` on stderr, and treat exit 200 (``Exception running srv : ...``)
as failure. Our own programs do not spawn srv; they call ``noports.tunnel`` in-process.

Only parsing and the process contract live here; the work is ``noports.tunnel``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping

from .. import _compat
from ..crypto.escr import EscrAuth
from ..crypto.stream import CtrKeys
from ..errors import EXIT_ERROR, EXIT_OK, EXIT_SRV_EXCEPTION, ConfigError
from ..log import escape, setup_logging
from ..tunnel import (
    AeadKeys,
    ClientMulti,
    DaemonMulti,
    TunnelCrypto,
    mode_name,
    open_client_single,
    run_daemon_single,
)
from .common import add_common

READY = "rv started successfully"
log = logging.getLogger("noports.srv")

EPILOG = """\
environment (secrets are never taken from the command line):
  RV_AUTH                     relay auth line, sent first on every relay socket (--rv-auth)
  REMOTE_AUTH_ESCR_SESSION_ID, REMOTE_AUTH_ESCR_AES_KEY, REMOTE_AUTH_ESCR_PUB_KEY_URI,
  REMOTE_AUTH_ESCR_SIGNING_PUBKEY, REMOTE_AUTH_ESCR_SIGNING_PRIVKEY (b64 PKCS#8),
  REMOTE_AUTH_ESCR_IS_SIDE_A (true/false)
                              -a escr: answer each relay socket's challenge (official names)
  RV_AES, RV_IV               AES-256 key (b64, 32 bytes) and IV (b64, 16 bytes) (--rv-e2ee);
                              same key and IV both ways, as the official snapshot
  RV_AES_C2D, RV_IV_C2D,      twin keys: one key and IV per direction (client-to-daemon,
  RV_AES_D2C, RV_IV_D2C       daemon-to-client); used instead of RV_AES/RV_IV when set
  RV_AEAD_SECRET              --rv-aead: 32-byte session secret (b64); records are
                              AES-256-GCM or ChaCha20-Poly1305, keys per direction (and per
                              multi connection) by HKDF-SHA256, authenticated close
  RV_SESSION_ID               --rv-aead: session id bound into keys and AAD (default: the
                              sessionId inside RV_AUTH, else empty); both ends must agree
  NOPORTS_AEAD_SUITE          force what we send: aes-256-gcm or chacha20-poly1305
                              (default: AES-GCM if the CPU has AES instructions)

client mode (--bind-local-port) listens on 127.0.0.1 unless --local-host names another
address (the official srv listens on 0.0.0.0). Exit 0 when done, 1 on bad usage or missing
environment, 200 with "Exception running srv : <error>" on any failure.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="srv",
        add_help=False,
        description="NoPorts socket rendezvous tunnel end (client or daemon side).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--help", action="help", help="show this help and exit")
    p.add_argument("-h", "--host", required=True, help="relay host")
    p.add_argument(
        "-p", "--port", required=True, type=int, help="relay port (A for clients, B for daemons)"
    )
    p.add_argument(
        "--local-port",
        type=int,
        default=22,
        help="daemon: port to connect to; client: port to listen on (default 22)",
    )
    p.add_argument(
        "--local-host",
        default="localhost",
        help="daemon: host to connect to; client: address to listen on (default localhost)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds to wait for a connection; multi: idle seconds before ending (default 60)",
    )
    p.add_argument(
        "--bind-local-port",
        action="store_true",
        default=False,
        help="client mode: listen locally and accept",
    )
    p.add_argument(
        "--rv-auth",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="send RV_AUTH first on every relay socket",
    )
    p.add_argument(
        "-a",
        "--relay-auth-mode",
        choices=("payload", "escr"),
        default=None,
        help="payload: send RV_AUTH first (as --rv-auth); escr: answer the relay's challenge "
        "on every relay socket with REMOTE_AUTH_ESCR_* (not with --rv-auth)",
    )
    p.add_argument(
        "--rv-e2ee",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="AES-256-CTR with RV_AES/RV_IV (or twin RV_*_C2D/RV_*_D2C keys)",
    )
    p.add_argument(
        "--rv-aead",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="noports strong mode: authenticated records keyed from RV_AEAD_SECRET",
    )
    p.add_argument(
        "--multi",
        action="store_true",
        default=False,
        help="multi-connection mode (control channel)",
    )
    p.add_argument(
        "--heartbeat",
        type=float,
        default=None,
        metavar="SECS",
        help="client multi mode: send a control heartbeat every SECS seconds",
    )
    add_common(p, verbose_short=True)
    return p


def crypto_from_env(
    args: argparse.Namespace, env: Mapping[str, str]
) -> tuple[str | EscrAuth | None, TunnelCrypto]:
    """(auth, cipher settings) from the environment, as the flags require."""
    auth: str | EscrAuth | None = None
    mode = getattr(args, "relay_auth_mode", None)
    if mode is not None and args.rv_auth:
        raise ConfigError("--rv-auth and --relay-auth-mode cannot be used together")
    if mode == "escr":
        try:
            auth = EscrAuth.from_env(env)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    elif mode == "payload" and env.get("RV_AUTH") is None:
        raise ConfigError("--relay-auth-mode payload required, but RV_AUTH is not in environment")
    elif mode == "payload":
        auth = env.get("RV_AUTH")
    if args.rv_auth:
        auth = env.get("RV_AUTH")
        if auth is None:
            raise ConfigError("--rv-auth required, but RV_AUTH is not in environment")
    if args.rv_aead and args.rv_e2ee:
        raise ConfigError("--rv-aead and --rv-e2ee are exclusive; choose one")
    crypto: TunnelCrypto = None
    if args.rv_e2ee:
        crypto = CtrKeys.from_env(env)
        if crypto is None:
            raise ConfigError("--rv-e2ee required, but RV_AES is not in environment")
    elif args.rv_aead:
        crypto = AeadKeys.from_env(env)
        if crypto is None:
            raise ConfigError("--rv-aead required, but RV_AEAD_SECRET is not in environment")
        if isinstance(auth, EscrAuth) and env.get("RV_SESSION_ID") is None:
            crypto = crypto.replace(session_id=auth.session_id)
    return auth, crypto


def _ready() -> None:
    print(READY, file=sys.stderr, flush=True)


async def run_srv(
    args: argparse.Namespace, auth: str | EscrAuth | None, crypto: TunnelCrypto
) -> None:
    """One srv lifetime: set up, announce readiness, run until the tunnel ends."""
    log.info(
        "srv %s mode, %s, %s",
        "client" if args.bind_local_port else "daemon",
        "multi" if args.multi else "single",
        mode_name(crypto),
    )
    # What every end takes; only the four ends' lifetimes differ. (run_daemon_single's own
    # ``timeout`` is its relay-connect timeout, so srv's --timeout is not passed to it.)
    where = (args.host, args.port)
    common = {
        "auth_line": auth,
        "crypto": crypto,
        "local_host": args.local_host,
        "local_port": args.local_port,
    }
    if args.bind_local_port:
        if args.multi:
            cm = await ClientMulti.open(
                *where, **common, timeout=args.timeout, heartbeat=args.heartbeat
            )
            _ready()
            try:
                await cm.wait()
            finally:
                await cm.close()
        else:
            client = await open_client_single(*where, **common, timeout=args.timeout)
            _ready()
            try:
                await client.wait()
            finally:
                await client.close()
    elif args.multi:
        dm = DaemonMulti(*where, **common, timeout=args.timeout)
        await dm.connect()
        _ready()
        await dm.run()
    else:
        await run_daemon_single(*where, **common, on_ready=_ready)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    try:
        auth, crypto = crypto_from_env(args, os.environ)
    except ConfigError as exc:
        print(escape(str(exc)), file=sys.stderr)
        return EXIT_ERROR
    try:
        _compat.run(run_srv(args, auth, crypto))
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001 - the official contract: one line, exit 200
        print(
            f"Exception running srv : {escape(str(exc) or type(exc).__name__)}",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_SRV_EXCEPTION
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
