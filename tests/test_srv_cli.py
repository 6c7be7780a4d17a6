"""``srv`` as real subprocesses (``python -m noports.cli.srv``), client and daemon mode,
through the real relay engine to a real local echo service; plus the process contract
(readiness line, exit 1 on missing environment, exit 200 on failure)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from typing import Any

import pytest

from noports.crypto import records as R
from noports.crypto.encoding import b64e
from noports.crypto.stream import CtrKeys
from noports.tunnel import AeadKeys, ControlChannel
from noports.tunnel.bridge import bridge
from noports.tunnel.control import format_connect
from noports.tunnel.net import connect_relay, connect_tcp

from .test_tunnel_helpers import EchoServer, free_port, pattern, relay_session, roundtrip, sha

READY = "rv started successfully"


@pytest.fixture
def run() -> Any:
    """Process tests: the subprocesses choose their own loop, so one test loop suffices."""
    from noports import _compat

    def _run(coro: Any, timeout: float = 60.0) -> Any:
        async def guarded() -> Any:
            return await asyncio.wait_for(coro, timeout)

        return _compat.run(guarded())

    return _run


class Srv:
    """A running srv subprocess whose stderr is collected continuously."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.err = bytearray()
        self.ready = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while True:
            line = await self.proc.stderr.readline()
            if not line:
                return
            self.err += line
            if READY.encode() in line:
                self.ready.set()

    async def wait(self, timeout: float = 20) -> int:
        rc = await asyncio.wait_for(self.proc.wait(), timeout)
        await asyncio.wait_for(self._reader, 5)
        return rc

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self._reader.cancel()

    @property
    def stderr(self) -> str:
        return self.err.decode("utf-8", "replace")


def srv_env(extra: dict[str, str], impl: str = "c") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RV_", "NOPORTS_"))}
    env.update(extra)
    if impl == "py":
        env["NOPORTS_NO_EXTENSIONS"] = "1"
    return env


async def start_srv(args: list[str], env: dict[str, str], *, wait_ready: bool = True) -> Srv:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "noports.cli.srv",
        *args,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    s = Srv(proc)
    if wait_ready:
        try:
            await asyncio.wait_for(s.ready.wait(), 20)
        except asyncio.TimeoutError:
            await s.kill()
            raise AssertionError(f"srv never became ready: {s.stderr}") from None
    return s


def crypto_env(mode: str) -> tuple[list[str], dict[str, str]]:
    if mode == "clear":
        return [], {}
    if mode == "legacy":
        k = CtrKeys.generate(twin=False)
        return ["--rv-e2ee"], {"RV_AES": b64e(k.key_c2d), "RV_IV": b64e(k.iv_c2d)}
    if mode == "twin":
        k = CtrKeys.generate(twin=True)
        f = k.connect_fields()
        return ["--rv-e2ee"], {
            "RV_AES_C2D": f[0],
            "RV_IV_C2D": f[1],
            "RV_AES_D2C": f[2],
            "RV_IV_D2C": f[3],
        }
    return ["--rv-aead"], {"RV_AEAD_SECRET": b64e(os.urandom(32))}


async def _single(keys: Any, mode: str, impl: str) -> None:
    flags, cenv = crypto_env(mode)
    async with relay_session(keys) as rc:
        echo = await EchoServer().start(banner=b"SSH-2.0-test\r\n")
        lport = free_port()
        daemon = await start_srv(
            [
                "-h",
                rc.host,
                "-p",
                str(rc.port_b),
                "--local-port",
                str(echo.port),
                "--local-host",
                "127.0.0.1",
                "--rv-auth",
                *flags,
            ],
            srv_env({"RV_AUTH": rc.auth_b, **cenv}, impl),
        )
        client = await start_srv(
            [
                "-h",
                rc.host,
                "-p",
                str(rc.port_a),
                "--local-port",
                str(lport),
                "--bind-local-port",
                "--rv-auth",
                *flags,
            ],
            srv_env({"RV_AUTH": rc.auth_a, **cenv}, impl),
        )
        try:
            data = pattern(3_000_000, seed=1)
            got = await roundtrip(lport, data)
            assert got == b"SSH-2.0-test\r\n" + data
            assert await client.wait() == 0, client.stderr
            assert await daemon.wait() == 0, daemon.stderr
            assert READY in client.stderr and READY in daemon.stderr
            assert "Exception" not in client.stderr + daemon.stderr
        finally:
            await client.kill()
            await daemon.kill()
            await echo.close()


@pytest.mark.parametrize("mode", ["legacy", "twin"])
def test_srv_single(keys, mode, run) -> None:
    run(_single(keys, mode, "c"), timeout=60)


def test_srv_single_aead(keys, impl, run) -> None:
    run(_single(keys, "aead", impl), timeout=60)


async def _multi(keys: Any, mode: str, n: int = 20) -> None:
    flags, cenv = crypto_env(mode)
    async with relay_session(keys) as rc:
        echo = await EchoServer().start()
        lport = free_port()
        daemon = await start_srv(
            [
                "-h",
                rc.host,
                "-p",
                str(rc.port_b),
                "--local-port",
                str(echo.port),
                "--local-host",
                "127.0.0.1",
                "--rv-auth",
                "--multi",
                "--timeout",
                "3",
                *flags,
            ],
            srv_env({"RV_AUTH": rc.auth_b, **cenv}),
        )
        client = await start_srv(
            [
                "-h",
                rc.host,
                "-p",
                str(rc.port_a),
                "--local-port",
                str(lport),
                "--bind-local-port",
                "--rv-auth",
                "--multi",
                "--timeout",
                "3",
                *flags,
            ],
            srv_env({"RV_AUTH": rc.auth_a, **cenv}),
        )
        try:
            datas = [pattern(100_000 + 997 * i, seed=100 + i) for i in range(n)]
            results = await asyncio.gather(*(roundtrip(lport, d) for d in datas))
            assert [sha(r) for r in results] == [sha(d) for d in datas]
            assert echo.connections == n
            # idle for --timeout seconds: both ends finish on their own, exit 0
            assert await client.wait(30) == 0, client.stderr
            assert await daemon.wait(30) == 0, daemon.stderr
        finally:
            await client.kill()
            await daemon.kill()
            await echo.close()


@pytest.mark.parametrize("mode", ["legacy", "twin", "aead", "clear"])
def test_srv_multi_20_parallel_connections(keys, mode, run) -> None:
    run(_multi(keys, mode), timeout=90)


async def _raw_client_to_daemon_srv(keys: Any, mode: str, messages_as_one_write: bool) -> None:
    """We play an *old* client against the srv daemon: newline-less connect messages, all
    written at once on the control channel, or ``connect:no:encrypt``."""
    async with relay_session(keys) as rc:
        echo = await EchoServer().start()
        if mode == "legacy":
            session = CtrKeys.generate(twin=False)
            flags = ["--rv-e2ee"]
            env = {"RV_AES": b64e(session.key_c2d), "RV_IV": b64e(session.iv_c2d)}
        else:
            session, flags, env = None, [], {}
        daemon = await start_srv(
            [
                "-h",
                rc.host,
                "-p",
                str(rc.port_b),
                "--local-port",
                str(echo.port),
                "--local-host",
                "127.0.0.1",
                "--rv-auth",
                "--multi",
                "--timeout",
                "2",
                *flags,
            ],
            srv_env({"RV_AUTH": rc.auth_b, **env}),
        )
        try:
            ctl = ControlChannel(
                await connect_relay(rc.host, rc.port_a, rc.auth_a), session, is_client=True
            )
            n = 3
            relays, keysets, msgs = [], [], b""
            for _ in range(n):
                relays.append(await connect_relay(rc.host, rc.port_a, rc.auth_a))
                k = CtrKeys.generate(twin=False) if mode == "legacy" else None
                keysets.append(k)
                m = format_connect(k)
                msgs += m.rstrip(b"\n") if mode == "legacy" else m
                if not messages_as_one_write:
                    await ctl.send(msgs)
                    msgs = b""
            if msgs:
                await ctl.send(msgs)
            datas = [pattern(50_000, seed=i) for i in range(n)]

            async def one(i: int) -> bytes:
                a, b = await _socketpair_tcp()
                t = asyncio.ensure_future(bridge(b, relays[i], keysets[i], is_client=True))
                got = await _send_recv(a, datas[i])
                await t
                return got

            got = await asyncio.gather(*(one(i) for i in range(n)))
            assert got == datas
            assert echo.connections == n
            await ctl.close()
            assert await daemon.wait(20) == 0, daemon.stderr
        finally:
            await daemon.kill()
            await echo.close()


async def _socketpair_tcp() -> tuple[Any, Any]:
    from noports.tunnel.net import listen

    lst = listen("127.0.0.1", 0)
    loop = asyncio.get_running_loop()
    a = await connect_tcp("127.0.0.1", lst.getsockname()[1])
    b, _ = await loop.sock_accept(lst)
    lst.close()
    return a, b


async def _send_recv(sock: Any, data: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    out = bytearray()

    async def rd() -> None:
        while True:
            d = await loop.sock_recv(sock, 65536)
            if not d:
                return
            out.extend(d)

    t = asyncio.ensure_future(rd())
    await loop.sock_sendall(sock, data)
    sock.shutdown(1)
    await t
    sock.close()
    return bytes(out)


@pytest.mark.parametrize("one_write", [False, True])
def test_srv_daemon_accepts_old_newline_less_connects(keys, one_write, run) -> None:
    run(_raw_client_to_daemon_srv(keys, "legacy", one_write), timeout=60)


def test_srv_daemon_connect_no_encrypt(keys, run) -> None:
    run(_raw_client_to_daemon_srv(keys, "clear", False), timeout=60)


# ---- the process contract -----------------------------------------------------------------


@pytest.mark.parametrize(
    "flags,env,message",
    [
        (["--rv-auth"], {}, "--rv-auth required, but RV_AUTH is not in environment"),
        (["--rv-e2ee"], {}, "--rv-e2ee required, but RV_AES is not in environment"),
        (
            ["--rv-e2ee"],
            {"RV_AES": "A" * 43 + "="},
            "--rv-e2ee required, but RV_IV is not in environment",
        ),
        (["--rv-aead"], {}, "--rv-aead required, but RV_AEAD_SECRET is not in environment"),
    ],
)
def test_missing_environment_exits_1(flags, env, message, run) -> None:
    async def go() -> None:
        s = await start_srv(["-h", "127.0.0.1", "-p", "1", *flags], srv_env(env), wait_ready=False)
        assert await s.wait() == 1
        assert message in s.stderr
        assert READY not in s.stderr

    run(go(), timeout=30)


def test_bad_relay_exits_200(run) -> None:
    async def go() -> None:
        echo = await EchoServer().start()
        port = free_port()  # nothing listens there
        s = await start_srv(
            [
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "--local-port",
                str(echo.port),
                "--local-host",
                "127.0.0.1",
            ],
            srv_env({}),
            wait_ready=False,
        )
        assert await s.wait() == 200
        assert "Exception running srv :" in s.stderr
        await echo.close()

    run(go(), timeout=30)


def test_aead_client_refuses_tampered_daemon_stream_exit_200(keys, run) -> None:
    """A client srv whose peer speaks the wrong session: integrity failure -> exit 200."""

    async def go() -> None:
        async with relay_session(keys) as rc:
            lport = free_port()
            secret = b64e(os.urandom(32))
            client = await start_srv(
                [
                    "-h",
                    rc.host,
                    "-p",
                    str(rc.port_a),
                    "--local-port",
                    str(lport),
                    "--bind-local-port",
                    "--rv-auth",
                    "--rv-aead",
                ],
                srv_env({"RV_AUTH": rc.auth_a, "RV_AEAD_SECRET": secret}),
            )
            try:
                # the "daemon" uses another session id: its records cannot verify
                wrong = AeadKeys(os.urandom(32), "other")
                relay = await connect_relay(rc.host, rc.port_b, rc.auth_b)
                a, b = await _socketpair_tcp()
                t = asyncio.ensure_future(bridge(b, relay, wrong, is_client=False))
                app_r, app_w = await asyncio.open_connection("127.0.0.1", lport)
                await asyncio.get_running_loop().sock_sendall(a, b"hello from the wrong daemon")
                with contextlib.suppress(ConnectionError):
                    got = await asyncio.wait_for(app_r.read(100), 10)
                    assert got == b""
                assert await client.wait(20) == 200
                assert "Exception running srv :" in client.stderr
                assert "authentication" in client.stderr
                app_w.close()
                a.close()
                t.cancel()
                with contextlib.suppress(BaseException):
                    await t
            finally:
                await client.kill()

    run(go(), timeout=60)


def test_help_and_version() -> None:
    import subprocess

    out = subprocess.run(
        [sys.executable, "-m", "noports.cli.srv", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0
    for word in (
        "--rv-aead",
        "RV_AEAD_SECRET",
        "RV_AES_C2D",
        "--bind-local-port",
        "--multi",
        "-h HOST",
    ):
        assert word in out.stdout
    v = subprocess.run(
        [sys.executable, "-m", "noports.cli.srv", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert v.returncode == 0 and "srv (noports)" in v.stdout
    assert R.MAX_PLAINTEXT == 65536
