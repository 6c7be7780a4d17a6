"""``noports server``: run the embedded control plane, or administer its data dir.

    noports server --data-dir DIR [--host 127.0.0.1] [--port N] [--output text|json]
    noports server add @alice [--keys-file F] --data-dir DIR   (prints the activation secret last)
    noports server list | remove @alice | status --data-dir DIR

On start it prints the two exports that point every program at it (or one JSON line with
``--output json``) and runs until SIGTERM/SIGINT. One server per data dir: a second one
refuses to start, naming the first one's PID. Without ``--port`` a restart listens on the
port the data dir had last time (so an exported ``NOPORTS_ROOT`` stays valid), falling back
to a free port if that one is taken; ``--port 0`` always picks a new one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path

from .. import _compat
from ..errors import ConfigError, NoPortsError
from ..log import setup_logging
from ..metrics import add_option as add_metrics_option
from .common import add_common, fail

PROG = "noports server"
ADMIN = ("add", "list", "remove", "status")


def _default_dir() -> str:
    return os.environ.get("NOPORTS_SERVER_DIR") or os.path.join(
        os.path.expanduser("~"), ".local", "share", "noports", "server"
    )


def _run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Embedded root directory + atServer over TLS "
        "(subcommands: add, list, remove, status).",
    )
    add_common(p)
    p.add_argument(
        "--data-dir", default=_default_dir(), help="state directory (default %(default)s)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument(
        "--port",
        type=int,
        default=None,
        help="port (default: the one this data dir used last, else a free one; 0 = a new free one)",
    )
    p.add_argument(
        "--output", choices=("text", "json"), default="text", help="start-up line format"
    )
    add_metrics_option(p)
    t = p.add_argument_group("limits (defaults are the official server's)")
    t.add_argument("--max-connections", type=int, default=200)
    t.add_argument(
        "--stats-interval", type=float, default=15.0, help="seconds between stats notifications"
    )
    t.add_argument(
        "--unauth-timeout",
        type=float,
        default=600.0,
        help="idle seconds before an unauthenticated connection is closed",
    )
    t.add_argument(
        "--notification-expiry",
        type=int,
        default=15 * 60,
        help="default notification expiry, seconds",
    )
    t.add_argument(
        "--buffer-limit", type=int, default=10_240_000, help="largest request line, bytes"
    )
    t.add_argument("--root-unknown-delay", type=float, default=3.0, help=argparse.SUPPRESS)
    t.add_argument(
        "--monitor-buffer-limit",
        type=int,
        default=8 * 1024 * 1024,
        help="close a monitor connection whose unsent output passes this many bytes",
    )
    g = p.add_argument_group("pre-auth limits (not in the official server)")
    g.add_argument(
        "--max-unauth",
        type=int,
        default=100,
        help="unauthenticated connections at once; a newcomer sheds the oldest (%(default)s)",
    )
    g.add_argument(
        "--max-unauth-per-source",
        type=int,
        default=32,
        help="the same per peer address (default %(default)s)",
    )
    g.add_argument(
        "--auth-deadline",
        type=float,
        default=60.0,
        help="seconds a connection may stay unauthenticated, busy or not (default %(default)s)",
    )
    g.add_argument(
        "--unauth-buffer-limit",
        type=int,
        default=64 * 1024,
        help="largest request line before authentication, bytes (default %(default)s)",
    )
    return p


def _admin_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Administer an embedded server's data dir.")
    add_common(p)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, hlp in (
        ("add", "register an atSign"),
        ("list", "list atSigns"),
        ("remove", "remove an atSign and all its data"),
        ("status", "show status"),
    ):
        sp = sub.add_parser(name, help=hlp)
        sp.add_argument("--data-dir", default=_default_dir())
        sp.add_argument("--output", choices=("text", "json"), default="text")
        if name in ("add", "remove"):
            sp.add_argument("atsign")
        if name == "add":
            sp.add_argument(
                "--keys-file",
                type=Path,
                help="install the PKAM and encryption public keys from this .atKeys file",
            )
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ADMIN:
        return _admin(_admin_parser().parse_args(argv))
    args = _run_parser().parse_args(argv)
    setup_logging(args)
    if args.port is not None and not 0 <= args.port <= 65535:
        _run_parser().error("--port must be 0-65535")
    if args.metrics:
        from ..metrics import parse_address

        try:
            parse_address(args.metrics)
        except ConfigError as exc:
            _run_parser().error(str(exc))
    try:
        return _compat.run(_serve(args))
    except KeyboardInterrupt:
        return 0
    except (NoPortsError, OSError) as exc:
        return fail(PROG, exc)


def _admin(args: argparse.Namespace) -> int:
    from ..atserver import admin

    setup_logging(args)
    data_dir = Path(args.data_dir)
    try:
        if args.cmd == "add":
            secret = admin.add(data_dir, args.atsign, args.keys_file)
            if args.output == "json":
                print(json.dumps({"atsign": args.atsign, "added": True, "secret": secret}))
            elif secret is None:
                print(f"added {args.atsign} with the keys from {args.keys_file}")
            else:
                print(f"added {args.atsign}; activation secret (use once, keep private):")
                print(secret)
        elif args.cmd == "list":
            names = admin.list_atsigns(data_dir)
            print(json.dumps(names) if args.output == "json" else "\n".join(names))
        elif args.cmd == "remove":
            if not admin.remove(data_dir, args.atsign):
                print(f"{PROG}: error: {args.atsign} is not registered", file=sys.stderr)
                return 4
            if args.output == "json":
                print(json.dumps({"atsign": args.atsign, "removed": True}))
            else:
                print(f"removed {args.atsign}")
        else:
            st = admin.status(data_dir)
            if args.output == "json":
                print(json.dumps(st))
            else:
                for k, v in st.items():
                    print(f"{k}: {v}")
        return 0
    except (NoPortsError, OSError) as exc:
        return fail(PROG, exc)


async def _serve(args: argparse.Namespace) -> int:
    from ..atserver.engine import Config
    from ..atserver.net import AtServer, pin_mmap_threshold

    pin_mmap_threshold()
    data_dir = Path(args.data_dir)
    lock = _lock_data_dir(data_dir)
    port = args.port if args.port is not None else _last_port(data_dir, args.host)
    cfg = Config(
        host=args.host,
        port=port,
        max_connections=args.max_connections,
        stats_interval=args.stats_interval,
        unauth_timeout=args.unauth_timeout,
        notification_expiry_ms=args.notification_expiry * 1000,
        buffer_limit=args.buffer_limit,
        root_unknown_delay=args.root_unknown_delay,
        monitor_buffer_limit=args.monitor_buffer_limit,
        max_unauth=max(1, args.max_unauth),
        max_unauth_per_source=max(1, args.max_unauth_per_source),
        auth_deadline=args.auth_deadline,
        unauth_buffer_limit=args.unauth_buffer_limit,
    )
    server = AtServer(args.data_dir, cfg)
    await server.start()
    observer = None
    if args.metrics:
        from ..atserver.observe import Observer

        observer = Observer(server)
        try:
            observer.start(args.metrics, asyncio.get_running_loop())
        except ConfigError:
            await server.stop()
            os.close(lock)
            raise
    with contextlib.suppress(OSError):
        (data_dir / LAST_PORT_FILE).write_text(f"{server.port}\n")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ca = str(server.tls.ca_cert)
    if args.output == "json":
        print(
            json.dumps(
                {
                    "root": server.root,
                    "ca_file": ca,
                    "data_dir": str(server.data_dir),
                    "pid": os.getpid(),
                }
            ),
            flush=True,
        )
    else:
        print(f"export NOPORTS_ROOT={server.root}")
        print(f"export NOPORTS_CA_FILE={ca}", flush=True)
    from ..sdnotify import notify as notify_systemd
    from ..sdnotify import watchdog

    notify_systemd("READY=1", f"STATUS=serving {server.root}")
    dog = loop.create_task(watchdog())
    try:
        await stop.wait()
    finally:
        dog.cancel()
        notify_systemd("STOPPING=1")
        if observer is not None:
            observer.close()
        await server.stop()
        os.close(lock)
    return 0


LOCK_FILE = "server.lock"
LAST_PORT_FILE = "last_port"


class DataDirBusyError(ConfigError):
    pass


def _lock_data_dir(data_dir: Path) -> int:
    """An exclusive lock on the data dir for this process's life (released by the kernel
    if it dies); a second server gets one line naming the first one's PID."""
    import fcntl

    from ..fsutil import secure_dir

    secure_dir(data_dir)
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        other = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        raise DataDirBusyError(
            f"another noports server (pid {other}) is running on {data_dir}: stop it first, "
            "or use another --data-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _last_port(data_dir: Path, host: str) -> int:
    """The port this data dir used last, if it is free now; else 0 (a free one)."""
    import socket

    try:
        port = int((data_dir / LAST_PORT_FILE).read_text().strip())
    except (OSError, ValueError):
        return 0
    if not 0 < port < 65536:
        return 0
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            print(
                f"{PROG}: warning: port {port} (used last time) is taken; picking a free one",
                file=sys.stderr,
            )
            return 0
    return port
