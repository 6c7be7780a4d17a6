"""``noports agent``: a resident, per-user ``npt`` that starts tunnels in a blink.

A cold ``npt`` spends ~140 ms before its first packet (interpreter, asyncio, ssl, uvloop,
cryptography, flags) and ~14 ms connecting to its atServer (keys file, root lookup, TLS,
PKAM). The agent pays that once: it stays up with everything imported and, per (atSign,
keys file, root, CA file), two connected and authenticated spare atClients. The ``npt`` console
script (:mod:`noports.npt_front`) imports almost nothing, hands its argv, working directory
and the environment npt reads to the agent over a Unix socket, and relays the agent's
stdout/stderr lines and exit code. Like ``ssh``'s ControlMaster/ControlPersist, minus the
shared connection: every session still gets its own atClient (the spare) and monitor, and the
next spare connects in the background once the set-up is done. Public and shared keys stay
cached across sessions; a spare is dropped when its keys file changes, replaced after 4 min,
and closed after an hour without a request for its atSign.

The session is the same code as in-process npt: :func:`noports.cli.npt.parse` for the flags
(usage errors print the same text, exit 2) and :func:`noports.npt.run.run` for the session,
with per-request streams, so the lines ("npt is listening on ..."), the ``--output json``
ready event and the exit codes are npt's. ``-x``: the front prints the port and exits 0,
the tunnel stays in the agent. In the foreground the front waits; when it ends (Ctrl-C,
SIGTERM, killed) its connection closes and the agent ends the session.

The front runs npt in-process (silently) when there is no agent, when the socket is stale,
and for what the agent does not do: ``--no-agent`` / ``NOPORTS_NO_AGENT=1``, a pass phrase
(never sent over the socket), ``-v``/``--debug``/``--log-format json`` (logging is the
process's), an environment that differs from the agent's in what npt reads (other than the
``NOPORTS_NPT_*`` flag variables, which are applied per request), another noports version.

Trust model (as ``ssh-agent``): one agent per user. The socket (default
``$XDG_RUNTIME_DIR/noports/agent.sock``, else ``~/.atsign/run/agent.sock``;
``--socket``/``$NOPORTS_AGENT_SOCKET``) is 0600 in a directory of ours that is 0700; a
directory or socket owned by another uid, or a directory others can write, is refused. Both
ends check the peer's uid (``SO_PEERCRED``): the agent serves only its own uid, the front
talks only to an agent of its own uid. Anyone who can connect as that uid could run npt as
that uid anyway. The agent holds the atKeys in memory, as a running npt does; nothing secret
crosses the socket.

``noports agent`` runs in the foreground (``Type=notify`` under systemd: ``READY=1`` once it
listens), exits after ``--idle`` without a session (default 30m; 0 = never), on SIGTERM/SIGINT
or on ``noports agent stop`` (which ends its tunnels, ``-x`` ones included).
``noports agent status`` prints what it serves. Exit codes: 0 ok; 1 error (e.g. an agent
already runs on the socket); 2 usage; 7 status/stop found no agent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import __version__, sdnotify
from ..config import RawFormatter
from ..errors import ConfigError, NoPortsError
from ..log import TextFormatter, setup_logging
from ..npt import agentwire as wire
from ..npt.durations import parse_duration
from .common import VersionAction, fail

if TYPE_CHECKING:
    import concurrent.futures

    from ..at.client import AtClient
    from ..crypto import rsa

log = logging.getLogger("noports.agent")

DEFAULT_IDLE = "30m"
SPARE_MAX_AGE = 240.0  # a spare atClient older than this is replaced while idle
#: after a session is ready, wait this long before making the next spare and RSA key: the
#: first bytes through the new tunnel come first (2-core machines feel the contention)
BACKGROUND_DELAY = 0.3
SPARE_KEEP = 3600.0  # a spare not asked for this long is closed
SPARES = 2  # spare atClients per (atSign, keys, root, CA): back-to-back npt starts stay warm
MAINTAIN_EVERY = 5.0
RSA_STOCK = 2  # ephemeral RSA-2048 keys made ahead (only sessions without --require-aead)
EXIT_NO_AGENT = 7

#: the stderr stream of the request a task serves (its warnings go there, as in npt)
_REQUEST_ERR: contextvars.ContextVar[Any] = contextvars.ContextVar("npt_request_err", default=None)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="noports agent",
        description="Resident npt agent: tunnels start in a few tens of milliseconds "
        "(the npt command hands its request over a per-user Unix socket).",
        epilog="actions: run (default; foreground), status, stop. exit codes: 0 ok, 1 error, "
        "2 usage, 7 no agent answers (status, stop).",
        formatter_class=RawFormatter,
    )
    p.add_argument("action", nargs="?", choices=("run", "status", "stop"), default="run")
    p.add_argument(
        "--socket",
        default=None,
        metavar="PATH",
        help=f"the socket (default ${wire.ENV_SOCKET}, else "
        "$XDG_RUNTIME_DIR/noports/agent.sock, else ~/.atsign/run/agent.sock)",
    )
    p.add_argument(
        "--idle",
        default=DEFAULT_IDLE,
        help=f"exit after this long without a session (default {DEFAULT_IDLE}; 0 = never)",
    )
    p.add_argument("--version", action=VersionAction, help="show version and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    p.add_argument("--debug", action="store_true", help="log at DEBUG level")
    return p


class _Stream:
    """A request's stdout or stderr: each write is one message on the connection; after
    :meth:`detach` (``-x`` reported, or the front went away) writes are dropped."""

    def __init__(
        self, writer: asyncio.StreamWriter | None, tag: str, held: list[bytes] | None = None
    ) -> None:
        self.writer = writer
        self.tag = tag
        self.held = held  # frames kept back until the agent knows it serves the request

    def write(self, text: str) -> int:
        w = self.writer
        if w is not None and text and not w.is_closing():
            if self.held is not None:
                self.held.append(wire.frame(self.tag, text))
            else:
                w.write(wire.frame(self.tag, text))
        return len(text)

    def flush(self) -> None:
        return None

    def isatty(self) -> bool:
        return False

    def detach(self) -> None:
        self.writer = None


class _RouteHandler(logging.Handler):
    """Warnings logged while serving a request also go to that request's stderr, formatted
    as npt formats them (npt logs at WARNING unless -v/--debug, which run in-process)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.setFormatter(TextFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        stream = _REQUEST_ERR.get()
        if stream is None:
            return
        try:
            stream.write(self.format(record) + "\n")
        except Exception:  # noqa: BLE001 - logging must not break the session
            self.handleError(record)


def _exit_code(exc: SystemExit, err: _Stream) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    err.write(f"{exc.code}\n")
    return 1


class _Spares:
    """The spare atClients of one (atSign, keys file, root, CA file), oldest first, with when
    each was started, and the caches the successive clients share."""

    def __init__(self) -> None:
        self.tasks: list[tuple[asyncio.Task[AtClient], float]] = []
        self.used = time.monotonic()  # last asked for
        self.donor: AtClient | None = None  # the first client: its cache dicts are shared
        self.stamp: tuple[int, int, int] | None = None  # the keys file the spare was made with


Key = tuple[str, str | None, str | None, str | None]


class Agent:
    def __init__(self, path: str, idle_s: float | None) -> None:
        self.path = path
        self.idle_s = idle_s
        self.stopped = asyncio.Event()
        self.sessions: set[asyncio.Task[int]] = set()
        self.spares: dict[Key, _Spares] = {}
        self.rsa: list[concurrent.futures.Future[rsa.PrivateKey]] = []  # keys made ahead
        self.last_active = time.monotonic()
        self.started = time.time()
        self.served = 0
        self._ino: tuple[int, int] | None = None
        from ..npt import run as npt_run  # the session code, imported once
        from . import npt as npt_cli

        self._run = npt_run
        self._cli = npt_cli

    # -- life cycle ------------------------------------------------------------------------

    async def serve(self) -> int:
        await self._claim_path()
        old = os.umask(0o177)
        try:
            server = await asyncio.start_unix_server(
                self._connection, path=self.path, limit=wire.MAX_LINE
            )
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        st = os.lstat(self.path)
        self._ino = (st.st_dev, st.st_ino)
        loop = asyncio.get_running_loop()
        import signal

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopped.set)
        self._make_rsa()  # the first session's key, made ahead
        log.info("noports agent %d listening on %s", os.getpid(), self.path)
        print(f"noports agent listening on {self.path}", file=sys.stderr, flush=True)
        sdnotify.notify("READY=1", f"STATUS=listening on {self.path}")
        dog = asyncio.ensure_future(sdnotify.watchdog())
        try:
            await self._maintain()
        finally:
            sdnotify.notify("STOPPING=1")
            dog.cancel()
            server.close()
            self._unlink()
            for t in list(self.sessions):
                t.cancel()
            if self.sessions:
                await asyncio.gather(*self.sessions, return_exceptions=True)
            for sp in self.spares.values():
                for task, _born in sp.tasks:
                    await _close_spare(task)
            with contextlib.suppress(Exception):
                await server.wait_closed()
        return 0

    async def _claim_path(self) -> None:
        wire.make_dir(os.path.dirname(os.path.abspath(self.path)))
        if not os.path.lexists(self.path):
            return
        wire.check_socket(self.path)  # ours, or refused
        try:
            s = wire.connect(self.path, timeout=1.0)
        except OSError:  # stale: no one listens
            os.unlink(self.path)
            return
        s.close()
        raise NoPortsError(f"an agent is already running on {self.path}")

    def _unlink(self) -> None:
        with contextlib.suppress(OSError):
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._ino:
                os.unlink(self.path)

    async def _maintain(self) -> None:
        """Until stopped: exit when idle for ``idle_s``; replace old spares."""
        while not self.stopped.is_set():
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                await asyncio.wait_for(
                    self.stopped.wait(), min(MAINTAIN_EVERY, self.idle_s or MAINTAIN_EVERY)
                )
            now = time.monotonic()
            if self.sessions:
                self.last_active = now
            elif self.idle_s is not None and now - self.last_active >= self.idle_s:
                log.info("no session for %g s: exiting", self.idle_s)
                return
            for key, sp in list(self.spares.items()):
                if now - sp.used > SPARE_KEEP:  # not asked for in an hour: let it go
                    del self.spares[key]
                    for task, _born in sp.tasks:
                        await _close_spare(task)
                    continue
                old = [(t, b) for t, b in sp.tasks if t.done() and now - b > SPARE_MAX_AGE]
                if old:
                    sp.tasks = [tb for tb in sp.tasks if tb not in old]
                    for task, _born in old:
                        await _close_spare(task)
                    self._refill(key)

    # -- spares ----------------------------------------------------------------------------

    def _refill(self, key: Key) -> None:
        """Top the spares of ``key`` up to :data:`SPARES` (connecting in the background)."""
        sp = self.spares.setdefault(key, _Spares())
        while len(sp.tasks) < SPARES:
            # in an empty context: a spare serves later requests, not this one's stderr
            task = contextvars.Context().run(asyncio.ensure_future, self._connect(key))
            sp.tasks.append((task, time.monotonic()))

    async def _connect(self, key: Key) -> AtClient:
        from ..session.client import connect_client

        atsign, keys_file, root, ca_file = key
        sp = self.spares.setdefault(key, _Spares())
        stamp = _keys_stamp(key)
        if stamp != sp.stamp:  # new keys (or the first client): no cache carries over
            sp.stamp, sp.donor = stamp, None
        client = await connect_client(atsign, keys_file=keys_file, root=root, ca_file=ca_file)
        if sp.donor is None:
            sp.donor = client
        elif sp.donor is not client:
            client.adopt_caches(sp.donor)
        return client

    async def _take_client(self, key: Key) -> AtClient:
        """The warm spare, else connect now (the caller starts the next spare, :meth:`_refill`,
        once its session is set up: a TLS handshake and PKAM beside the set-up slow it)."""
        sp = self.spares.get(key)
        if sp is not None:
            sp.used = time.monotonic()
        task: asyncio.Task[AtClient] | None = None
        client = None
        if sp is not None and sp.tasks:
            if _keys_stamp(key) != sp.stamp:
                log.info("the keys file of %s changed: new atClients", key[0])
                stale, sp.tasks = sp.tasks, []
                for t, _born in stale:
                    await _close_spare(t)
            else:  # a connected one first, else the one started first; failed ones go
                sp.tasks = [tb for tb in sp.tasks if not _failed(tb[0])]
                ready = [tb for tb in sp.tasks if tb[0].done()]
                if ready or sp.tasks:
                    pick = (ready or sp.tasks)[0]
                    sp.tasks.remove(pick)
                    task = pick[0]
        if task is not None:
            try:
                client = await task
            except (NoPortsError, OSError) as exc:
                log.info("spare atClient failed (%s); connecting again", exc)
        if client is None:
            client = await self._connect(key)
        return client

    def _take_rsa(self) -> concurrent.futures.Future[rsa.PrivateKey]:
        """The key made ahead (the next one is started by :meth:`_make_rsa`, after the
        set-up: RSA-2048 generation takes 50-250 ms of CPU), else one made now."""
        from ..session.client import start_ephemeral_keygen

        for fut in self.rsa:
            if fut.done() and fut.exception() is None:
                self.rsa.remove(fut)
                return fut
        # none ready (a busy machine starves the nice-19 thread): one at normal priority now;
        # the pending ones stay in stock
        return start_ephemeral_keygen()

    def _background(self, key: Key) -> None:
        if not self.stopped.is_set():
            self._refill(key)
            self._make_rsa()

    def _make_rsa(self) -> None:
        """Make the next session's RSA key ahead, in a thread at the lowest CPU priority
        (``nice`` is per thread on Linux): tunnels and set-ups in flight come first."""
        from ..crypto import rsa as rsa_mod

        self.rsa = [f for f in self.rsa if not (f.done() and f.exception() is not None)]
        while len(self.rsa) < RSA_STOCK:
            self.rsa.append(_background_pool().submit(rsa_mod.generate))

    # -- requests --------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sock = writer.get_extra_info("socket")
            uid = wire.peer_uid(sock)
            if uid != os.getuid():
                log.warning("refused a connection from uid %d", uid)
                return
            line = await asyncio.wait_for(reader.readline(), 10.0)
            if not line:
                return
            req = json.loads(line)
            if not isinstance(req, dict):
                raise ValueError("request is not an object")
            op = req.get("op")
            if op == "npt":
                await self._npt(req, reader, writer)
            elif op == "status":
                writer.write(wire.frame("s", json.dumps(self.status())))
            elif op == "stop":
                writer.write(wire.frame("s", json.dumps({"stopping": True})))
                self.stopped.set()
            else:
                raise ValueError(f"unknown op {op!r}")
        except (ValueError, OSError, asyncio.TimeoutError, TimeoutError) as exc:
            log.info("bad request: %s", exc)
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    def status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "socket": self.path,
            "version": __version__,
            "sessions": len(self.sessions),
            "served": self.served,
            "uptimeS": round(time.time() - self.started, 1),
            "idleS": self.idle_s,
            "spares": sorted(k[0] for k, sp in self.spares.items() for _ in sp.tasks),
        }

    def _unsupported(self, req: dict[str, Any]) -> str | None:
        if req.get("v") != wire.PROTOCOL or req.get("version") != __version__:
            return "the agent runs another version"
        env = req.get("env")
        if not isinstance(env, dict) or not isinstance(req.get("argv"), list):
            return "malformed request"
        mine = wire.request_env() or {}
        for name in set(env) | set(mine):
            if name.startswith("NOPORTS_NPT_") or name in (wire.ENV_SOCKET, wire.ENV_NO_AGENT):
                continue  # the flag layer, applied per request (or the front's own)
            if env.get(name) != mine.get(name):
                return f"the environment differs from the agent's ({name})"
        return None

    def _parse(
        self, req: dict[str, Any], out: _Stream, err: _Stream
    ) -> tuple[int, argparse.Namespace | None]:
        """npt's flag parsing in the front's directory, terminal width and environment."""
        argv = [str(a) for a in req["argv"]]
        env = {str(k): str(v) for k, v in req["env"].items()}
        here = os.getcwd()
        cols = os.environ.get("COLUMNS")
        os.chdir(str(req.get("cwd") or "/"))
        try:
            os.environ["COLUMNS"] = str(int(req.get("columns") or 80))
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):  # type: ignore[type-var]
                try:
                    args = self._cli.parse(argv, environ=env)
                except SystemExit as exc:
                    return _exit_code(exc, err), None
            for name in ("key_file", "ca_file", "config"):
                value = getattr(args, name, None)
                if value:
                    setattr(args, name, os.path.abspath(str(value)))
            return 0, args
        finally:
            os.chdir(here)
            if cols is None:
                os.environ.pop("COLUMNS", None)
            else:
                os.environ["COLUMNS"] = cols

    async def _npt(
        self, req: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        t0 = time.perf_counter()
        reason = self._unsupported(req)
        if reason is None:
            try:
                os.stat(str(req.get("cwd") or "/"))
            except OSError:
                reason = "the working directory is not reachable"
        if reason is not None:
            writer.write(wire.frame("f", reason))
            return
        held: list[bytes] = []  # what parsing prints, sent once the request is served here
        out, err = _Stream(writer, "o", held), _Stream(writer, "e", held)
        self.last_active = time.monotonic()
        code, args = self._parse(req, out, err)
        reason = None if args is None else _unsupported_flags(args)
        if reason is not None:  # npt runs in-process: it prints those lines itself
            writer.write(wire.frame("f", reason))
            return
        writer.writelines(held)
        out.held = err.held = None
        if args is None:
            writer.write(wire.frame("x", str(code)))
            return
        self.served += 1
        writer.write(wire.frame("a", ""))  # taken: the front stops waiting for an answer
        _REQUEST_ERR.set(err)
        detached = [False]

        def report(text: str) -> None:  # -x: the front prints this and exits 0
            if detached[0]:
                return
            detached[0] = True
            out.write(text + "\n")
            writer.write(wire.frame("x", "0"))
            out.detach()
            err.detach()
            writer.close()

        log.debug("request checked and parsed in %.1f ms", (time.perf_counter() - t0) * 1000)
        task = asyncio.ensure_future(self._session(args, report, out, err))
        self.sessions.add(task)
        task.add_done_callback(self._session_done)
        eof = asyncio.ensure_future(reader.read())
        try:
            await asyncio.wait({task, eof}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done() and not detached[0]:  # the front went away: end the session
                task.cancel()
            code = 1
            if not detached[0]:
                with contextlib.suppress(asyncio.CancelledError):
                    code = await asyncio.shield(task)
                if task.cancelled() and self.stopped.is_set():
                    err.write("npt: error: the agent stopped\n")
            if not detached[0]:
                out.detach()
                err.detach()
                writer.write(wire.frame("x", str(code)))
        finally:
            eof.cancel()

    def _session_done(self, task: asyncio.Task[int]) -> None:
        self.sessions.discard(task)
        self.last_active = time.monotonic()

    async def _session(
        self, args: argparse.Namespace, report: Callable[[str], None], out: _Stream, err: _Stream
    ) -> int:
        key: Key = (
            args.from_,
            args.key_file,
            args.root or args.root_domain,
            args.ca_file,
        )
        done = [False]

        def background() -> None:  # the set-up is over: make the next spare and key
            if not done[0]:
                done[0] = True
                asyncio.get_running_loop().call_later(BACKGROUND_DELAY, self._background, key)

        try:
            t0 = time.perf_counter()
            eph = self._take_rsa() if self._run.wants_rsa(args) else None
            client = await self._take_client(key)
            log.debug("atClient taken in %.1f ms", (time.perf_counter() - t0) * 1000)
            try:
                return await self._run.run(
                    args,
                    report if args.exit_when_connected else None,
                    client=client,
                    ephemeral=eph,
                    stdout=out,
                    stderr=err,
                    on_ready=background,
                )
            finally:
                background()
                await client.close()
        except Exception as exc:  # noqa: BLE001 - one line and an exit code, as npt
            with contextlib.redirect_stderr(err):  # type: ignore[type-var]
                return fail("npt", exc)


def _failed(task: asyncio.Task[Any]) -> bool:
    return task.done() and (task.cancelled() or task.exception() is not None)


def _keys_stamp(key: Key) -> tuple[int, int, int] | None:
    """Identity of the keys file a request names (the spare is replaced when it changes)."""
    from ..crypto.atkeys import default_keys_path
    from ..names import validate_atsign

    try:
        path = key[1] or default_keys_path(validate_atsign(key[0], add_at=True))
        st = os.stat(path)
    except (OSError, NoPortsError, ValueError):
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


_POOL: concurrent.futures.ThreadPoolExecutor | None = None


def _lower_priority() -> None:
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, 0, 19)  # this thread only (Linux)


def _background_pool() -> concurrent.futures.ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        import concurrent.futures

        _POOL = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="agent-rsa", initializer=_lower_priority
        )
    return _POOL


def _unsupported_flags(args: argparse.Namespace) -> str | None:
    if args.no_agent:
        return "--no-agent"
    if args.verbose or args.debug or args.log_format != "text":
        return "logging flags"
    if getattr(args, "pass_phrase", None):
        return "a pass phrase"
    return None


async def _close_spare(task: asyncio.Task[AtClient] | None) -> None:
    if task is None:
        return
    if not task.done():
        task.cancel()
    with contextlib.suppress(BaseException):
        client = await task
        await client.close()


def _ask(path: str, op: str) -> dict[str, Any] | None:
    try:
        s = wire.connect(path, timeout=5.0)
    except OSError:
        return None
    try:
        s.settimeout(10.0)
        s.sendall(wire.encode_request({"op": op}))
        got = wire.Frames(s).next()
        if got is None or got[0] != "s":
            return None
        answer = json.loads(got[1])
        return answer if isinstance(answer, dict) else None
    except (OSError, ValueError):
        return None
    finally:
        s.close()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    path = os.path.abspath(args.socket or wire.default_socket_path())
    if args.action in ("status", "stop"):
        got = _ask(path, args.action)
        if got is None:
            print(f"noports agent: no agent answers on {path}", file=sys.stderr)
            return EXIT_NO_AGENT
        if args.action == "status":
            print(json.dumps(got, indent=1, sort_keys=True))
            return 0
        deadline = time.monotonic() + 10.0
        while os.path.lexists(path) and time.monotonic() < deadline:
            time.sleep(0.05)
        print(f"noports agent on {path} stopped", file=sys.stderr)
        return 0
    try:
        idle = parse_duration(args.idle) if args.idle.strip() not in ("0", "0s") else None
    except ConfigError as exc:
        parser.error(str(exc))
    setup_logging(args)
    logging.getLogger().addHandler(_RouteHandler())
    from .. import _compat

    try:
        return _compat.run(Agent(path, idle).serve())
    except (NoPortsError, OSError) as exc:
        return fail("noports agent", exc)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
