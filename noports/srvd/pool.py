"""The control process's side of the data workers: start, place sessions, notice deaths.

Workers are separate interpreter processes (``python -m noports.srvd.worker``) started with
``subprocess`` and one end of a ``socketpair`` passed by file descriptor. That is the
"spawn" model without ``multiprocessing``'s helpers (no resource-tracker process, no
pickling of the main module): the only children srvd ever has are its workers, each
visible in ``ps`` by its command line.

``--workers 1`` still runs one separate worker rather than the relay in the control
process: the control loop does RSA and AES work for every notification and may block on the
atServer, and none of that may stall a byte of relayed traffic; a crash in the data plane
is contained and restarted; and there is one code path to test. The cost is one process
(about 35 MB resident) and one local round trip (well under a millisecond) per session request.

Placement: a new session goes to the live worker with the fewest sessions (live plus
being created). A worker that dies (EOF on its link) takes its sessions with it; the pool
reports them through ``on_lost`` so the control process can forget them, and starts a
replacement unless the pool is closing or workers keep dying (more than ``MAX_RESTARTS``
in ``RESTART_WINDOW`` seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

from .._compat import python_module_argv
from ..errors import ConfigError, LocalError, NoPortsError, PortsExhaustedError
from ..relay import SessionSpec
from . import ipc

log = logging.getLogger("noports.srvd")

START_TIMEOUT = 30.0
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0


class WorkerGone(LocalError):
    """The worker died (or was closed) before it answered."""


class WorkerHandle:
    """One running worker process and its control link."""

    def __init__(
        self,
        index: int,
        proc: subprocess.Popen[bytes],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.index = index
        self.proc = proc
        self.reader = reader
        self.writer = writer
        self.sessions: set[str] = set()
        self.creating = 0
        self.alive = True
        self.ready: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self.task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def load(self) -> int:
        return len(self.sessions) + self.creating

    def send(self, msg: dict[str, Any]) -> None:
        if not self.alive or self.writer.is_closing():
            raise WorkerGone(f"worker {self.index} is gone")
        self.writer.write(ipc.encode(msg))

    async def call(self, msg: dict[str, Any], timeout: float) -> dict[str, Any]:
        rid = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        try:
            self.send({**msg, "id": rid})
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._waiting.pop(rid, None)

    def _answer(self, msg: dict[str, Any]) -> None:
        fut = self._waiting.get(msg.get("id"))  # type: ignore[arg-type]
        if fut is not None and not fut.done():
            fut.set_result(msg)

    def _fail_all(self) -> None:
        exc = WorkerGone(f"worker {self.index} (pid {self.pid}) is gone")
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(exc)
        if not self.ready.done():
            self.ready.set_exception(exc)
        self._waiting.clear()


class WorkerPool:
    """``count`` workers running ``config``; see the module docstring."""

    def __init__(
        self,
        count: int,
        config: dict[str, Any],
        *,
        on_closed: Callable[[WorkerHandle, dict[str, Any]], None],
        on_lost: Callable[[WorkerHandle, set[str]], None],
        loop_kind: str | None = None,
        on_lookup: Callable[[WorkerHandle, dict[str, Any]], None] | None = None,
    ) -> None:
        if count < 1:
            raise LocalError("srvd needs at least one worker")
        self.count = count
        self.config = config
        self.on_closed = on_closed
        self.on_lost = on_lost
        self.on_lookup = on_lookup
        self.loop_kind = loop_kind
        self.workers: dict[int, WorkerHandle] = {}
        self.closing = False
        self.deaths: list[float] = []
        self._restarts: set[asyncio.Task[None]] = set()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        handles = [await self._spawn(i) for i in range(1, self.count + 1)]
        results = await asyncio.gather(
            *(self._await_ready(h) for h in handles), return_exceptions=True
        )
        for r in results:
            if isinstance(r, BaseException):
                raise r

    async def _spawn(self, index: int) -> WorkerHandle:
        parent, child = socket.socketpair()
        try:
            argv = python_module_argv(
                "noports.srvd.worker", "--fd", str(child.fileno()), "--index", str(index)
            )
            if self.loop_kind:
                argv += ["--loop", self.loop_kind]
            proc = subprocess.Popen(
                argv, pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, close_fds=True
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        parent.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=parent, limit=ipc.MAX_FRAME + 8)
        handle = WorkerHandle(index, proc, reader, writer)
        self.workers[index] = handle
        handle.send({"op": "config", **self.config})
        handle.task = asyncio.get_running_loop().create_task(self._read_loop(handle))
        return handle

    async def _await_ready(self, h: WorkerHandle) -> None:
        try:
            info = await asyncio.wait_for(asyncio.shield(h.ready), START_TIMEOUT)
        except ConfigError:
            raise
        except (asyncio.TimeoutError, LocalError) as exc:
            raise LocalError(f"srvd worker {h.index} did not start: {exc or 'timeout'}") from None
        log.info(
            "worker %d ready (pid %s, pump %s, fd limit %s)",
            h.index,
            info.get("pid"),
            info.get("pump"),
            info.get("fd_limit"),
        )

    async def _read_loop(self, h: WorkerHandle) -> None:
        try:
            while True:
                msg = await ipc.read(h.reader)
                if msg is None:
                    break
                op = msg["op"]
                if op == "ready":
                    if not h.ready.done():
                        h.ready.set_result(msg)
                elif op == "failed":
                    err = str(msg.get("error"))
                    exc = ConfigError(err) if msg.get("usage") else LocalError(err)
                    if not h.ready.done():
                        h.ready.set_exception(exc)
                elif op == "created":
                    h.sessions.add(str(msg.get("sid")))
                    h._answer(msg)
                elif op == "closed":
                    h.sessions.discard(str(msg.get("sid")))
                    self.on_closed(h, msg)
                elif op == "lookup":
                    if self.on_lookup is not None:
                        self.on_lookup(h, msg)
                    else:
                        h.send({"op": "looked_up", "rid": msg.get("rid"), "value": None})
                else:
                    h._answer(msg)
        except (NoPortsError, ConnectionError, OSError) as exc:
            log.error("worker %d link failed: %s", h.index, exc)
        h.alive = False
        h._fail_all()
        h.writer.close()
        code = await self._reap(h, 5.0)
        if self.workers.get(h.index) is h:
            del self.workers[h.index]
        lost = set(h.sessions)
        h.sessions.clear()
        if self.closing:
            return
        log.error(
            "worker %d (pid %d) died (exit %s); %d live session(s) lost",
            h.index,
            h.pid,
            code,
            len(lost),
        )
        self.on_lost(h, lost)
        now = time.monotonic()
        self.deaths = [t for t in self.deaths if now - t < RESTART_WINDOW] + [now]
        if len(self.deaths) > MAX_RESTARTS:
            log.error(
                "workers died %d times in %.0fs; not restarting worker %d",
                len(self.deaths),
                RESTART_WINDOW,
                h.index,
            )
            return
        task = asyncio.get_running_loop().create_task(self._restart(h.index))
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)

    async def _restart(self, index: int) -> None:
        try:
            h = await self._spawn(index)
            await self._await_ready(h)
            log.warning("worker %d restarted (pid %d)", index, h.pid)
        except (LocalError, OSError) as exc:
            log.error("could not restart worker %d: %s", index, exc)

    @staticmethod
    async def _reap(h: WorkerHandle, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while h.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if h.proc.poll() is None:
            log.warning("worker %d (pid %d) did not exit; killing it", h.index, h.pid)
            with contextlib.suppress(ProcessLookupError):
                h.proc.kill()
            await asyncio.sleep(0)
            with contextlib.suppress(subprocess.TimeoutExpired):
                h.proc.wait(2.0)
        return h.proc.returncode

    async def close(self, timeout: float = 5.0) -> None:
        """Tell every worker to close its sessions and exit; wait for all of them."""
        self.closing = True
        for t in list(self._restarts):
            t.cancel()
        handles = list(self.workers.values())
        for h in handles:
            with contextlib.suppress(WorkerGone, ConnectionError, OSError):
                h.send({"op": "close"})
        tasks = [h.task for h in handles if h.task is not None]
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=timeout + 6.0)
            for t in pending:
                t.cancel()
        for h in handles:  # belt and braces: nothing may outlive srvd
            if h.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    h.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    h.proc.wait(2.0)
        self.workers.clear()

    # -- placement -------------------------------------------------------------------------

    def pick(self, index: int | None = None) -> WorkerHandle:
        live = [
            h
            for h in self.workers.values()
            if (index is None or h.index == index)
            and h.alive
            and h.ready.done()
            and not h.ready.cancelled()
            and h.ready.exception() is None
        ]
        if not live:
            raise WorkerGone("no data worker is running")
        return min(live, key=lambda h: (h.load, h.index))

    async def create_session(
        self, spec: SessionSpec, timeout: float = 10.0
    ) -> tuple[WorkerHandle, dict[str, Any]]:
        # single-port sessions live where the single-port listener is: worker 1
        h = self.pick(1 if spec.only443 else None)
        h.creating += 1
        try:
            reply = await h.call({"op": "create", "spec": ipc.spec_to_wire(spec)}, timeout)
        except asyncio.TimeoutError:
            self.cancel(h, spec.session_id)  # it may exist there after all: end it
            raise LocalError(f"worker {h.index} did not answer within {timeout:g}s") from None
        finally:
            h.creating -= 1
        if reply["op"] == "created":
            return h, reply
        if reply.get("kind") == "ports":
            raise PortsExhaustedError(str(reply.get("error")))
        raise LocalError(f"worker {h.index} could not create the session: {reply.get('error')}")

    def cancel(self, h: WorkerHandle, sid: str) -> None:
        with contextlib.suppress(WorkerGone, ConnectionError, OSError):
            h.send({"op": "cancel", "sid": sid})

    async def stats(self, timeout: float = 5.0) -> list[dict[str, Any]]:
        out = []
        for h in list(self.workers.values()):
            try:
                out.append({"index": h.index, **await h.call({"op": "stats"}, timeout)})
            except (WorkerGone, asyncio.TimeoutError):
                continue
        return out
