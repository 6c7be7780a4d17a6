"""npt: the session loop (spec 3.3, 7.2); the command line, ``-x`` detach and the one-line
error are :mod:`noports.cli.npt`.

Inline (default): set up a session, open the multi-mode client end on ``--local-host:-l``,
print ``npt is listening on <host>:<port>`` on stderr (plus a one-line ``ready`` JSON event on
stdout with ``--output json``), run until the tunnel ends (control channel closed, or no
connection for ``-T``). ``-K`` starts a new session 5 s after one ends, on the same port.
``-x`` prints the port on stdout and leaves the tunnel running in a detached child.
``noports agent`` runs the same :func:`run` for the thin ``npt`` front, with a warm atClient,
a key made ahead and the request's own output streams (``noports.cli.agent``).

Exit codes: 0 done; 1 other failure; 2 usage; 3 refused (daemon permit-open or signature,
relay nack, missing feature, --require-aead not met, authentication); 4 not found (keys file,
atSign); 5 timeout (no answer from the daemon or relay); 6 protocol; 7 network.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import NoPortsError
from ..log import escape
from ..session.background import Reporter
from ..session.client import (
    Established,
    NoAnswerError,
    connect_client,
    establish_any,
    start_ephemeral_keygen,
)
from ..session.features import FEATURE_CHECK_TIMEOUT_MESSAGE, DaemonFeature
from ..tunnel import ClientMulti

if TYPE_CHECKING:
    import concurrent.futures

    from ..at.client import AtClient
    from ..crypto import rsa

log = logging.getLogger("noports.npt")


class TextSink(Protocol):
    """Where a request's lines go (``sys.stdout``, or the agent's per-request stream)."""

    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...

KEEP_ALIVE_DELAY = 5.0


def _progress(args: argparse.Namespace, err: TextSink | None = None):
    def say(msg: str) -> None:
        if not args.quiet and not args.verbose and not args.debug:
            print(
                f"{time.strftime('%Y-%m-%d %H:%M:%S')} : {msg}",
                file=err or sys.stderr,
                flush=True,
            )

    return say


#: control-channel heartbeat period (official 5 min since sshnoports 5.14.5)
HEARTBEAT_S = 300.0


def control_heartbeat(est: Established) -> float | None:
    """``heartbeat:<n>`` on the control channel only to a daemon that advertises
    ``controlChannelHeartbeats`` (others may treat it as a malformed request) and, as
    official, only when the control channel is encrypted."""
    info = est.info
    if info is None or est.crypto is None:
        return None
    return HEARTBEAT_S if info.supports(DaemonFeature.CONTROL_CHANNEL_HEARTBEATS) else None


def ready_event(est: Established, host: str, port: int, started: float) -> dict[str, Any]:
    return {
        "event": "ready",
        "host": host,
        "port": port,
        "sessionId": est.session_id,
        "mode": est.mode,
        "relay": est.relay,
        "setupMs": round((time.monotonic() - started) * 1000, 1),
        "timingsMs": est.timings,
    }


def wants_rsa(args: argparse.Namespace) -> bool:
    """Whether the session makes an ephemeral RSA key (``--require-aead``: X25519 instead)."""
    return bool(args.encrypt and not args.require_aead)


async def run(
    args: argparse.Namespace,
    report: Reporter | None = None,
    *,
    client: AtClient | None = None,
    ephemeral: concurrent.futures.Future[rsa.PrivateKey] | None = None,
    stdout: TextSink | None = None,
    stderr: TextSink | None = None,
    on_ready: Callable[[], None] | None = None,
) -> int:
    """One npt invocation (``-K``: until cancelled). ``client``: an authenticated atClient
    the caller owns (``noports agent``: warm, and closed by the caller), else one is
    connected here and closed on return. ``ephemeral``: a key generation for the first
    session. ``stdout``/``stderr``: where the lines go (default ``sys.stdout``/``sys.stderr``
    at the time of writing). ``on_ready``: called when a session listens (the agent starts
    its background work then, off the set-up's critical path)."""
    started = time.monotonic()
    say = _progress(args, stderr)

    def out() -> TextSink:
        return stdout or sys.stdout

    def err() -> TextSink:
        return stderr or sys.stderr

    root = args.root or args.root_domain
    # --require-aead: an X25519 key in the request instead (session.client)
    eph = (ephemeral or start_ephemeral_keygen()) if wants_rsa(args) else None
    own_client = client is None
    connect_ms: float | None = None
    if client is None:
        t_connect = time.monotonic()
        client = await connect_client(
            args.from_,
            keys_file=args.key_file,
            root=root,
            ca_file=args.ca_file,
            pass_phrase=getattr(args, "pass_phrase", None),
        )
        connect_ms = round((time.monotonic() - t_connect) * 1000, 1)
    port = args.local_port
    try:
        while True:
            try:
                fut, eph = eph, None  # a key is used for one session only
                try:
                    est = await establish_any(client, args.spec, progress=say, ephemeral=fut)
                except NoAnswerError as exc:
                    if not str(exc).startswith(FEATURE_CHECK_TIMEOUT_MESSAGE):
                        raise
                    from ..session.devices import explain_no_answer

                    await explain_no_answer(client, exc, args.to, args.device)
                    raise
                cm = await ClientMulti.open(
                    est.relay_host,
                    est.relay_port,
                    auth_line=est.auth_line,
                    crypto=est.crypto,
                    local_host=args.bind_host,
                    local_port=port,
                    timeout=args.timeout_s,
                    heartbeat=args.heartbeat_s if control_heartbeat(est) else None,
                )
            except (NoPortsError, OSError) as exc:
                if not args.keep_alive:
                    raise
                print(
                    f"npt: session failed: {escape(str(exc))}; retrying in {KEEP_ALIVE_DELAY:g} s",
                    file=err(),
                    flush=True,
                )
                await asyncio.sleep(KEEP_ALIVE_DELAY)
                continue
            port = cm.port
            if connect_ms is not None:  # keys file, root lookup, TLS and PKAM (first session)
                est.timings["atConnect"], connect_ms = connect_ms, None
            if args.keep_alive and wants_rsa(args):
                eph = start_ephemeral_keygen()  # ready for the next session
            ev = ready_event(est, args.bind_host, cm.port, started)
            if not args.quiet:
                print(
                    f"npt is listening on {args.bind_host}:{cm.port} ({est.mode})",
                    file=err(),
                    flush=True,
                )
            if on_ready is not None:
                on_ready()
            if report is not None:
                report(json.dumps(ev) if args.output == "json" else str(cm.port))
            elif args.output == "json":
                print(json.dumps(ev), file=out(), flush=True)
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
                file=err(),
                flush=True,
            )
            await asyncio.sleep(KEEP_ALIVE_DELAY)
            started = time.monotonic()
    finally:
        if own_client:
            await client.close()
