"""sshnp flows (spec 3.1, 3.2): set up a session, start the tunnel in-process, run ssh.

* **v5** (default, ``--et``): single-mode client end on ``127.0.0.1:-l`` with the session's
  crypto (AEAD, twin or legacy CTR); OpenSSH connects to it. Without ``-x`` we run ``ssh`` as
  a child with our stdio and exit with its code (the tunnel lives in this process, so we
  cannot ``exec``). With ``-x`` the ssh command is printed and a detached child keeps the
  tunnel waiting for one connection (30 s).
* **v4** (``--no-et``): the daemon hands us an ephemeral private key; we write it 0600 to
  ``~/.sshnp/ephemeral_<sid>``, run the tunnel ssh (``-L <local>:localhost:<sshd port> -f``)
  through a clear tunnel, delete the key, and the user session goes to the forwarded port.
* ``--stdio``: see :mod:`.stdio`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shlex
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..at.client import AtClient
from ..errors import ConfigError, NoPortsError, PeerTimeoutError, RemoteError
from ..fsutil import secure_dir, write_secret
from ..session.background import Reporter
from ..session.client import (
    Established,
    NoAnswerError,
    SessionSpec,
    connect_client,
    establish_any,
    start_ephemeral_keygen,
)
from ..session.features import FEATURE_CHECK_TIMEOUT_MESSAGE, sshnp_required_features
from ..tunnel import open_client_single

log = logging.getLogger("noports.sshnp")
TUNNEL_WAIT = 30.0  # the client end waits this long for ssh to connect
V4_SSH_TIMEOUT = 10.0


class TunnelSshError(RemoteError):
    """The v4 tunnel ssh failed."""


def progress_fn(args: argparse.Namespace):
    def say(msg: str) -> None:
        if not args.quiet and not args.verbose and not args.debug and not args.stdio:
            print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} : {msg}", file=sys.stderr, flush=True)

    return say


def session_spec(args: argparse.Namespace) -> SessionSpec:
    return SessionSpec(
        kind="ssh",
        daemon=args.to,
        device=args.device,
        relay=args.srvd,
        relay_candidates=getattr(args, "relay_candidates", None),
        root=args.root_domain,
        auth_client=args.auth_client,
        auth_device=args.auth_device,
        encrypt=args.encrypt,
        offer_aead=args.aead,
        require_aead=args.require_aead,
        required=sshnp_required_features(
            authenticate_device_to_rvd=args.auth_device,
            encrypt_rvd_traffic=args.encrypt,
            send_ssh_public_key=args.send_ssh_public_key,
        ),
        ping_timeout=args.dpt,
        fetch_username=args.remote_user_name is None and not args.stdio,
        public_key=getattr(args, "public_key_text", None) if args.send_ssh_public_key else None,
        relay_auth_mode=getattr(args, "relay_auth_mode", None) or "escr",
        ram_fallback=getattr(args, "relay_auth_mode", None) is None,
        only443=getattr(args, "only443", False),
    )


async def open_session(args: argparse.Namespace) -> tuple[AtClient, Established]:
    # --require-aead: an X25519 key in the request instead (session.client)
    eph = start_ephemeral_keygen() if args.encrypt and not args.require_aead else None
    t_connect = time.monotonic()
    client = await connect_client(
        args.from_,
        keys_file=args.key_file,
        root=args.root or args.root_domain,
        ca_file=args.ca_file,
    )
    connect_ms = round((time.monotonic() - t_connect) * 1000, 1)
    try:
        try:
            est = await establish_any(
                client, session_spec(args), progress=progress_fn(args), ephemeral=eph
            )
        except NoAnswerError as exc:
            if not str(exc).startswith(FEATURE_CHECK_TIMEOUT_MESSAGE):
                raise
            from .listing import explain_no_answer

            await explain_no_answer(client, exc, args.to, args.device)
            raise
    except BaseException:
        await client.close()
        raise
    est.timings["atConnect"] = connect_ms  # keys file, root lookup, TLS and PKAM
    return client, est


def host_key_alias(args: argparse.Namespace) -> str:
    return f"{args.device}.{args.to}"


def ssh_command(args: argparse.Namespace, port: int, user: str | None) -> list[str]:
    """The user-session ssh command (official shape plus a pinned HostKeyAlias)."""
    cmd = [
        "ssh",
        "-p",
        str(port),
        "-o",
        "StrictHostKeyChecking=accept-new",
        "-o",
        f"HostKeyAlias={host_key_alias(args)}",
    ]
    if args.identity_file:
        cmd += ["-o", "IdentitiesOnly=yes"]
    if not args.add_forwards_to_tunnel or args.encrypt:
        cmd += getattr(args, "local_ssh_argv", [])
    cmd.append(f"{user}@localhost" if user else "localhost")
    if args.identity_file:
        cmd += ["-i", args.identity_file]
    return cmd


def _user(args: argparse.Namespace, est: Established) -> str | None:
    return args.remote_user_name or est.username


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _run_ssh(cmd: list[str]) -> int:
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, lambda: None)  # ssh handles them; we wait for it
            installed.append(sig)
    try:
        proc = await asyncio.create_subprocess_exec(*cmd)
        return await proc.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def _v4_tunnel_ssh(
    args: argparse.Namespace, est: Established, rv_port: int, local_port: int, user: str | None
) -> None:
    pem = est.payload.get("ephemeralPrivateKey")
    if not isinstance(pem, str) or "PRIVATE KEY" not in pem:
        raise NoPortsError(
            "the device daemon sent no ephemeral key for the v4 flow "
            "(it needs --no-et daemons' double-ssh support)"
        )
    d = secure_dir(Path.home() / ".sshnp")
    key_path = d / f"ephemeral_{est.session_id}"
    write_secret(
        key_path, pem.encode() if pem.endswith("\n") else (pem + "\n").encode(), overwrite=False
    )
    tunnel_user = args.tunnel_user_name or user
    err_fd, err_path = tempfile.mkstemp(prefix="tunnel_ssh_", dir=d)
    try:
        cmd = [
            "ssh",
            f"{tunnel_user}@localhost" if tunnel_user else "localhost",
            "-p",
            str(rv_port),
            "-i",
            str(key_path),
            "-L",
            f"{local_port}:localhost:{args.remote_sshd_port}",
            "-o",
            "LogLevel=ERROR",
            "-t",
            "-t",
            "-o",
            "StrictHostKeyChecking=accept-new",
            "-o",
            f"HostKeyAlias={host_key_alias(args)}",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ExitOnForwardFailure=yes",
            "-n",
            "-f",
        ]
        if args.add_forwards_to_tunnel:
            cmd += getattr(args, "local_ssh_argv", [])
        cmd += ["sleep", "15"]
        log.info("tunnel ssh: %s", shlex.join(cmd))
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=err_fd
        )
        try:
            rc = await asyncio.wait_for(proc.wait(), V4_SSH_TIMEOUT)
        except (TimeoutError, asyncio.TimeoutError):
            proc.kill()
            raise PeerTimeoutError(
                f"the tunnel ssh did not finish within {V4_SSH_TIMEOUT:g} s"
            ) from None
        if rc != 0:
            os.lseek(err_fd, 0, 0)
            text = os.read(err_fd, 4000).decode("utf-8", "replace").strip().splitlines()
            raise TunnelSshError(
                f"the tunnel ssh failed (exit {rc}): {text[-1] if text else 'no message'}"
            )
    finally:
        os.close(err_fd)
        for p in (key_path, Path(err_path)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def _result(args: argparse.Namespace, est: Established, port: int, cmd: list[str]) -> str:
    if args.output == "json":
        return json.dumps(
            {
                "event": "ready",
                "command": shlex.join(cmd),
                "argv": cmd,
                "port": port,
                "sessionId": est.session_id,
                "mode": est.mode,
                "timingsMs": est.timings,
                "waitSeconds": TUNNEL_WAIT,
            }
        )
    return shlex.join(cmd)


async def run(args: argparse.Namespace, report: Reporter | None, command: list[str]) -> int:
    """The v5 / v4 flows. ``report`` is set with ``-x`` (print and stay in background)."""
    client, est = await open_session(args)
    say = progress_fn(args)
    try:
        user = _user(args, est)
        say("Creating connection to socket rendezvous")
        if args.encrypt:
            tunnel = await open_client_single(
                est.relay_host,
                est.relay_port,
                auth_line=est.auth_line,
                crypto=est.crypto,
                local_host="127.0.0.1",
                local_port=args.local_port,
                timeout=TUNNEL_WAIT,
            )
            port = tunnel.port
        else:
            port = args.local_port or _free_port()
            tunnel = await open_client_single(
                est.relay_host,
                est.relay_port,
                auth_line=est.auth_line,
                crypto=None,
                local_host="127.0.0.1",
                local_port=0,
                timeout=TUNNEL_WAIT,
            )
            say("Starting tunnel session")
            await _v4_tunnel_ssh(args, est, tunnel.port, port, user)
        await client.close()
        cmd = ssh_command(args, port, user)
        if report is not None:
            if args.output == "text" and not args.quiet:
                print(
                    f"sshnp: the tunnel waits {TUNNEL_WAIT:g} s for one connection: "
                    "run this command within that time",
                    file=sys.stderr,
                    flush=True,
                )
            report(_result(args, est, port, cmd))
            with contextlib.suppress(NoPortsError, OSError):
                await tunnel.wait()
            await tunnel.close()
            return 0
        say("Starting user session")
        try:
            rc = await _run_ssh(cmd + command)
        finally:
            await tunnel.close()
        return rc
    finally:
        await client.close()


def check_command(command: list[str]) -> list[str]:
    for c in command:
        if "\x00" in c:
            raise ConfigError("NUL in the remote command")
    return command


async def run_and_measure(args: argparse.Namespace) -> dict[str, Any]:
    """Set-up only (used by --output json diagnostics): returns the timings."""
    client, est = await open_session(args)
    await client.close()
    return est.timings
