"""A srvd data worker: one process, one event loop, one :class:`~noports.relay.Relay`.

Started by the control process as ``python -m noports.srvd.worker --fd N --index I`` with one
end of a socketpair (see :mod:`noports.srvd.ipc`). The first message is the configuration;
the worker answers ``ready``, then creates sessions on request and reports every session's
end. Each session's two listening sockets and all of its pairs live here.

The worker ignores SIGINT and SIGTERM: a Ctrl-C or a service manager signals the whole
process group, and the control process decides how to drain. It exits when told to
(``close``) or as soon as the control link reaches EOF (the control process died), so a
killed control process never leaves workers behind.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import os
import signal
import socket
import sys
from typing import Any

from .. import _compat
from ..errors import ConfigError, NoPortsError, PortsExhaustedError
from ..relay import Relay, RelayLimits, Session
from . import ipc

log = logging.getLogger("noports.srvd.worker")
LOOKUP_TIMEOUT = 8.0  # under the socket's auth deadline budget of the 443 path (10 s)


class _Tag(logging.Filter):
    """Marks every record with the worker index (``name[w1]`` and a ``worker`` JSON field)."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.name = f"{record.name}[w{self.index}]"
        fields = getattr(record, "fields", None)
        record.fields = {**(fields if isinstance(fields, dict) else {}), "worker": self.index}
        return True


def _setup_logging(index: int, cfg: dict[str, Any]) -> None:
    from ..log import setup_logging

    setup_logging(level=int(cfg.get("log_level", logging.WARNING)))
    root = logging.getLogger()
    for h in root.handlers:
        if cfg.get("log_format") == "json":
            from ..log import JsonFormatter

            h.setFormatter(JsonFormatter())
        h.addFilter(_Tag(index))
    if cfg.get("snoop"):
        logging.getLogger("noports.srvd.snoop").setLevel(logging.INFO)


def _limits(cfg: dict[str, Any]) -> RelayLimits:
    return RelayLimits(**cfg.get("limits", {}))


class Worker:
    def __init__(self, index: int, cfg: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        self.index = index
        self.cfg = cfg
        self.writer = writer
        self.totals: collections.Counter[str] = collections.Counter()
        pr = cfg.get("port_range")
        single = cfg.get("single_port")
        self.relay = Relay(
            bind_host=cfg["bind"],
            port_range=(int(pr[0]), int(pr[1])) if pr else None,
            limits=_limits(cfg),
            impl=cfg.get("impl"),
            advertise_host=cfg["ip"],
            # the single-port listener lives in worker 1 only: a pair's two sockets must
            # meet in one process, so every only443 session is placed there
            single_port=int(single) if single is not None and index == 1 else None,
            lookup=self.lookup,
        )
        self._lookups: dict[int, asyncio.Future[str | None]] = {}
        self._lookup_ids = 0
        if cfg.get("snoop"):
            from . import snoop

            self.relay.pump = snoop
        self.sessions: dict[str, Session] = {}
        self._watchers: set[asyncio.Task[None]] = set()

    def send(self, msg: dict[str, Any]) -> None:
        if not self.writer.is_closing():
            self.writer.write(ipc.encode(msg))

    async def lookup(self, key: str) -> str | None:
        """An ESCR signing key's published value, fetched by the control process."""
        self._lookup_ids += 1
        rid = self._lookup_ids
        fut: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._lookups[rid] = fut
        try:
            self.send({"op": "lookup", "rid": rid, "key": key})
            return await asyncio.wait_for(fut, LOOKUP_TIMEOUT)
        finally:
            self._lookups.pop(rid, None)

    async def start(self) -> None:
        await self.relay.start()
        try:  # the bind address must be ours: fail at start, not on every session
            probe = socket.socket(self.relay.family or socket.AF_INET, socket.SOCK_STREAM)
            try:
                probe.bind((self.cfg["bind"], 0))
            finally:
                probe.close()
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on --bind {self.cfg['bind']}: {exc.strerror}"
            ) from None
        from ..relay import raise_nofile_limit

        self.send(
            {
                "op": "ready",
                "pid": os.getpid(),
                "pump": getattr(self.relay.pump, "IMPLEMENTATION", "?"),
                "fd_limit": raise_nofile_limit(),
                "single_port": self.relay.single.port if self.relay.single else None,
            }
        )

    async def create(self, msg: dict[str, Any]) -> None:
        rid = msg.get("id")
        try:
            spec = ipc.spec_from_wire(msg["spec"])
            session = await self.relay.create_session(spec)
        except PortsExhaustedError as exc:
            self.send({"op": "error", "id": rid, "kind": "ports", "error": str(exc)})
            return
        except (NoPortsError, OSError, KeyError, ValueError) as exc:
            log.warning("cannot create a session: %s", exc)
            self.send(
                {
                    "op": "error",
                    "id": rid,
                    "kind": "internal",
                    "error": f"{type(exc).__name__}: {exc}",
                }
            )
            return
        self.sessions[spec.session_id] = session
        self.send(
            {
                "op": "created",
                "id": rid,
                "sid": spec.session_id,
                "port_a": session.port_a,
                "port_b": session.port_b,
                "rvd_nonce": session.rvd_nonce,
            }
        )
        task = asyncio.get_running_loop().create_task(self._watch(session))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _watch(self, session: Session) -> None:
        st = await session.wait_closed()
        self.sessions.pop(session.session_id, None)
        self._ended(st)
        self.send(
            {
                "op": "closed",
                "sid": session.session_id,
                "outcome": st.outcome,
                "pairs": st.pairs,
                "bytes_ab": st.bytes_a_to_b,
                "bytes_ba": st.bytes_b_to_a,
                "auth_ok": st.auth_ok,
                "auth_failed": st.auth_failed,
                "failures": st.failures,
                "refused": st.refused,
            }
        )

    def set_limits(self, limits: dict[str, Any]) -> None:
        """A reload: new limits for sessions created from now on (live ones keep theirs)."""
        try:
            new = RelayLimits(**limits)
        except (TypeError, ValueError) as exc:
            log.warning("reload: limits refused: %s", exc)
            return
        self.relay.limits = new
        self.relay.gate.resize(new.max_preauth, new.max_preauth_per_ip)
        log.info("worker %d: limits reloaded", self.index)

    def _ended(self, st: Any) -> None:
        """Fold an ended session's counters into the worker's totals (for metrics)."""
        t = self.totals
        t["bytes_ab"] += st.bytes_a_to_b
        t["bytes_ba"] += st.bytes_b_to_a
        t["pairs_total"] += st.pairs
        for reason, n in (st.failures or {}).items():
            t["fail:" + str(reason)] += int(n)

    def stats(self, rid: Any) -> None:
        pairs = sum(s.live_pairs for s in self.sessions.values())
        t = collections.Counter(self.totals)
        for s in self.sessions.values():  # live sessions: read the pumps' own counters
            st = s.stats
            t["bytes_ab"] += st.bytes_a_to_b
            t["bytes_ba"] += st.bytes_b_to_a
            t["pairs_total"] += st.pairs
            for reason, n in (st.failures or {}).items():
                t["fail:" + str(reason)] += int(n)
        self.send(
            {
                "op": "stats",
                "id": rid,
                "pid": os.getpid(),
                "sessions": len(self.sessions),
                "pairs": pairs,
                "single_port": self.relay.single.port if self.relay.single else None,
                "preauth": self.relay.gate.total,
                "preauth_refused": self.relay.gate.shed,
                "bytes_ab": t["bytes_ab"],
                "bytes_ba": t["bytes_ba"],
                "pairs_total": t["pairs_total"],
                "auth_failures": {k[5:]: v for k, v in t.items() if k.startswith("fail:")},
            }
        )

    async def serve(self, reader: asyncio.StreamReader) -> None:
        while True:
            msg = await ipc.read(reader)
            if msg is None:
                log.info("control link closed; exiting")
                return
            op = msg["op"]
            if op == "create":
                await self.create(msg)
            elif op == "cancel":
                s = self.sessions.get(str(msg.get("sid")))
                if s is not None:
                    s.close("cancelled")
            elif op == "stats":
                self.stats(msg.get("id"))
            elif op == "limits":
                self.set_limits(msg.get("limits") or {})
            elif op == "looked_up":
                fut = self._lookups.get(msg.get("rid"))  # type: ignore[arg-type]
                if fut is not None and not fut.done():
                    v = msg.get("value")
                    fut.set_result(v if isinstance(v, str) else None)
            elif op == "close":
                return
            else:
                log.warning("unknown control message %r", op[:40])
            await self.writer.drain()

    async def close(self) -> None:
        await self.relay.close()
        if self._watchers:
            await asyncio.wait(list(self._watchers), timeout=2.0)
        try:
            await self.writer.drain()
        except (ConnectionError, OSError):
            pass
        self.writer.close()


async def _main(fd: int, index: int) -> int:
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock, limit=ipc.MAX_FRAME + 8)
    cfg = await ipc.read(reader)
    if cfg is None or cfg.get("op") != "config":
        return 1
    _setup_logging(index, cfg)
    worker = Worker(index, cfg, writer)
    try:
        try:
            await worker.start()
        except (NoPortsError, OSError) as exc:
            worker.send({"op": "failed", "error": str(exc), "usage": isinstance(exc, ConfigError)})
            return 1
        await worker.serve(reader)
    except (ConnectionError, NoPortsError) as exc:
        log.warning("control link failed: %s", exc)
    finally:
        await worker.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="srvd-worker", description="srvd data worker (internal)")
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--loop", default=None)
    args = p.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # the control process answers it
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload is the control process's job
    return _compat.run(_main(args.fd, args.index), loop=args.loop)


if __name__ == "__main__":
    sys.exit(main())
