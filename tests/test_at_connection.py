"""The asyncio adapter over TLS, against a scripted peer.

These cover what a well-behaved server never does on purpose (stay silent, send an endless
line, hang up mid-request). Everything a real server does is tested against the embedded
server in test_at_client.py.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from noports.at import commands
from noports.at.config import ssl_context
from noports.at.connection import AtConnection, connect_atserver, find_atserver
from noports.crypto import rsa
from noports.errors import (
    BufferLimitError,
    ClientAuthFailedError,
    ConnectError,
    KeyNotFoundError,
    PeerTimeoutError,
    SecondaryNotFoundError,
)


def make_ca(tmp: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a leaf for IP:127.0.0.1: (ca.pem, leaf.pem, leaf.key)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem, leaf_pem, key_pem = tmp / "ca.pem", tmp / "leaf.pem", tmp / "leaf.key"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    leaf_pem.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_pem, leaf_pem, key_pem


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, Path]:
    ca, leaf, key = make_ca(tmp_path_factory.mktemp("ca"))
    sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    sctx.load_cert_chain(leaf, key)
    return sctx, ca


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve(sctx: ssl.SSLContext, handler: Handler) -> tuple[asyncio.AbstractServer, int]:
    async def wrapped(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            await handler(r, w)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            w.close()

    server = await asyncio.start_server(wrapped, "127.0.0.1", 0, ssl=sctx)
    return server, server.sockets[0].getsockname()[1]


def test_execute_errors_and_close(run, tls) -> None:
    sctx, ca = tls
    seen: list[str] = []

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"@")
        while line := await r.readline():
            cmd = line.decode().strip()
            seen.append(cmd)
            if cmd == "@exit":
                return
            if cmd.startswith("llookup"):
                w.write(b"error:AT0015-key not found : x@alice does not exist in keystore\n@")
            else:
                w.write(b"data:ok\n@")

    async def main() -> None:
        server, port = await serve(sctx, handler)
        async with server:
            conn = await AtConnection.open("127.0.0.1", port, ssl_context(str(ca), env={}))
            assert await conn.execute("noop:0") == "ok"
            with pytest.raises(KeyNotFoundError):
                await conn.execute("llookup:x@alice")
            # the lock serialises concurrent callers; replies are matched in order
            got = await asyncio.gather(*(conn.execute("noop:0") for _ in range(5)))
            assert got == ["ok"] * 5
            await conn.close()
            assert conn.closed
            with pytest.raises(ConnectError):
                await conn.execute("noop:0")
        assert seen[-1] == "@exit"

    run(main())


def test_untrusted_certificate_is_refused(run, tls) -> None:
    sctx, _ = tls

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"@")
        await r.read()

    async def main() -> None:
        server, port = await serve(sctx, handler)
        async with server:
            with pytest.raises(ConnectError):
                await AtConnection.open("127.0.0.1", port, ssl_context(env={}))

    run(main())


def test_timeout_closes_the_connection(run, tls) -> None:
    sctx, ca = tls

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"@")
        await r.readline()
        await asyncio.sleep(0.5)  # too slow
        w.write(b"data:late\n@")
        await r.read()

    async def main() -> None:
        server, port = await serve(sctx, handler)
        async with server:
            conn = await AtConnection.open("127.0.0.1", port, ssl_context(str(ca), env={}))
            with pytest.raises(PeerTimeoutError):
                await conn.execute("noop:0", timeout=0.1)
            assert conn.closed  # the late reply can never be taken for the next command's
            with pytest.raises(ConnectError):
                await conn.execute("noop:0")

    run(main())


def test_silent_server_times_out_on_greeting(run, tls) -> None:
    sctx, ca = tls

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.read()

    async def main() -> None:
        server, port = await serve(sctx, handler)
        async with server:
            with pytest.raises(PeerTimeoutError):
                await AtConnection.open(
                    "127.0.0.1", port, ssl_context(str(ca), env={}), connect_timeout=0.3
                )

    run(main())


def test_hangup_mid_request_and_endless_line(run, tls) -> None:
    sctx, ca = tls

    async def hangup(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"@")
        await r.readline()

    async def flood(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"@")
        await r.readline()
        for _ in range(100):
            w.write(b"x" * 10_000)
            await w.drain()
        await r.read()

    async def main() -> None:
        ctx = ssl_context(str(ca), env={})
        server, port = await serve(sctx, hangup)
        async with server:
            conn = await AtConnection.open("127.0.0.1", port, ctx)
            with pytest.raises(ConnectError):
                await conn.execute("noop:0")
        server, port = await serve(sctx, flood)
        async with server:
            conn = await AtConnection.open("127.0.0.1", port, ctx, max_buffer=100_000)
            with pytest.raises(BufferLimitError):
                await conn.execute("noop:0")
            await conn.wait_closed()

    run(main())


def test_root_lookup_and_pkam_wire_format(run, tls, keys) -> None:
    """Root then atServer, PKAM as the Dart SDK sends it, verified by the scripted peer."""
    sctx, ca = tls
    alice = keys("@alice")
    lookups: list[str] = []

    async def atserver(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"@")
        challenge = "_sess@alice:uuid-1"
        authed = False
        while line := await r.readline():
            cmd = line.decode().strip()
            if cmd == "from:@alice":
                w.write(f"data:{challenge}\n@".encode())
            elif cmd.startswith("pkam:"):
                parts = cmd.split(":")
                assert parts[1:5] == ["signingAlgo", "rsa2048", "hashingAlgo", "sha256"]
                try:
                    rsa.verify(alice.pkam_public, challenge.encode(), parts[-1])
                    authed = True
                    w.write(b"data:success\n@alice@")
                except Exception:
                    w.write(b"error:AT0401-Exception: pkam authentication failed\n@")
            elif cmd == "@exit":
                return
            else:
                w.write(b"data:ok\n" + (b"@alice@" if authed else b"@"))

    async def main() -> None:
        server, port = await serve(sctx, atserver)

        async def root(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.write(b"@")
            while line := await r.readline():
                name = line.decode().strip()
                if name == "@exit":
                    return
                lookups.append(name)
                w.write(f"127.0.0.1:{port}\r\n@".encode() if name == "alice" else b"null\r\n@")

        rserver, rport = await serve(sctx, root)
        ctx = ssl_context(str(ca), env={})
        async with server, rserver:
            assert await find_atserver("@alice", root=f"127.0.0.1:{rport}", ssl_ctx=ctx) == (
                "127.0.0.1",
                port,
            )
            with pytest.raises(SecondaryNotFoundError):
                await find_atserver("@nobody", root=f"127.0.0.1:{rport}", ssl_ctx=ctx)
            conn = await connect_atserver("alice", root=f"127.0.0.1:{rport}", ssl_ctx=ctx)
            await conn.authenticate(alice)
            assert conn.authenticated and conn.atsign == "@alice"
            assert await conn.execute(commands.noop()) == "ok"
            await conn.close()
            conn = await AtConnection.open("127.0.0.1", port, ctx)
            with pytest.raises(ClientAuthFailedError):
                await conn.authenticate_pkam("@alice", keys("@mallory").pkam_private)
            await conn.close()
        assert lookups == ["alice", "nobody", "alice"]

    run(main())
