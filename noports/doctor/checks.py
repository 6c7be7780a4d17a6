"""The doctor checks: install, prerequisites, keys, root / TLS / atServer, clock, a local
port, the device daemon's version. No printing here: each check returns :class:`Check`
results (``status`` one of :data:`OK`, :data:`WARN`, :data:`FAIL`, :data:`SKIP`), and
``noports doctor`` and ``sshnpd --doctor`` render them in their own layouts.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import _compat
from ..errors import NoPortsError

__all__ = [
    "OK",
    "WARN",
    "FAIL",
    "SKIP",
    "Check",
    "install",
    "ssh_keygen",
    "keys",
    "connectivity",
    "clock",
    "local_port",
    "daemon_version",
]

OK, WARN, FAIL, SKIP = "ok", "warning", "failure", "skipped"


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


def _tls_problem(exc: BaseException) -> bool:
    """The error, or what caused it, is a certificate/TLS failure."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError) or "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def install() -> Check:
    """Compiled or pure install, event loop, cryptography path."""
    from ..crypto import cryptography_text

    impl = _compat.implementation()
    detail = f"implementation {impl}; event loop {_compat.loop_name()}; {cryptography_text()}"
    if impl != "compiled":
        return Check("install", WARN, detail, "install a compiled wheel, or build from the "
                     "sdist with a C compiler (the pure twins are several times slower)")
    return Check("install", OK, detail)


def ssh_keygen() -> Check:
    """The daemon makes ephemeral ssh keys with OpenSSH's ssh-keygen."""
    kg = shutil.which("ssh-keygen")
    if kg:
        return Check("ssh-keygen", OK, f"ssh-keygen found at {kg}")
    return Check("ssh-keygen", FAIL, "ssh-keygen not found on PATH",
                 "install openssh-client")


def keys(
    atsign: str | None, key_file: str | None = None, pass_phrase: str | None = None
) -> tuple[Check, Any]:
    """The keys file: present, mode 0600 (as the daemons require), loads for ``atsign``.
    Returns the check and the loaded AtKeys (None unless the check passed)."""
    from ..crypto.atkeys import AtKeys, default_keys_path

    if not atsign:
        return Check("keys", SKIP, "no atSign given", "pass -a @you"), None
    path = Path(key_file or default_keys_path(atsign))
    if not path.exists():
        return Check("keys", FAIL, f"{path} does not exist",
                     f"activate {atsign} (at_activate -a {atsign}) or pass -k FILE"), None
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        return Check("keys", FAIL, f"{path} has mode {mode:04o}: others can read the secret "
                     "keys", f"chmod 600 {path}"), None
    try:
        loaded = AtKeys.load(path, atsign, strict_mode=True, pass_phrase=pass_phrase or None)
    except (NoPortsError, OSError, ValueError) as exc:
        fix = ("give the pass phrase with -P" if "pass phrase" in str(exc)
               else "use the keys file of this atSign (-k FILE)")
        return Check("keys", FAIL, f"{path}: {exc}", fix), None
    return Check("keys", OK, f"{path} (mode {mode:04o}) loads for {loaded.atsign}"), loaded


def connectivity(
    loaded: Any, root: str | None = None, ca_file: str | None = None, timeout: float = 10.0
) -> list[Check]:
    """``root`` (reachable; knows the atSign), ``tls`` (chain trusted) and ``atserver`` (PKAM
    authentication), stopping at the first failure. Without keys only the root is probed."""
    from ..at.config import root_address, ssl_context
    from ..at.connection import connect_authenticated, find_atserver

    out: list[Check] = []
    try:
        ra = root_address(root)
    except NoPortsError as exc:
        return [Check("root", FAIL, str(exc), "--root host:port or NOPORTS_ROOT")]
    try:
        with socket.create_connection((ra.host, ra.port), timeout=timeout):
            pass
    except OSError as exc:
        return [Check("root", FAIL, f"{ra.host}:{ra.port} unreachable ({exc})",
                      "check the network/firewall, or point --root / NOPORTS_ROOT at your root")]
    if loaded is None:
        return [Check("root", OK, f"{ra.host}:{ra.port} reachable")]
    try:
        ctx = ssl_context(ca_file)
    except NoPortsError as exc:
        return [Check("tls", FAIL, str(exc), "--ca-file FILE or NOPORTS_CA_FILE")]
    try:
        host, port = _compat.run(
            find_atserver(loaded.atsign, root=ra, ssl_ctx=ctx, timeout=timeout)
        )
    except (NoPortsError, OSError) as exc:
        if _tls_problem(exc):
            return [Check("tls", FAIL, f"root {ra.host}:{ra.port}: certificate not trusted "
                          f"({exc})", "trust the server's CA: --ca-file FILE or "
                          "NOPORTS_CA_FILE (`noports server` prints it)")]
        return [Check("root", FAIL, f"{ra.host}:{ra.port} does not know {loaded.atsign} "
                      f"({exc})", "check the atSign, or that its atServer is registered with "
                      "this root")]
    out.append(Check("root", OK, f"{ra.host}:{ra.port} says {loaded.atsign} is at {host}:{port}"))
    t0 = time.monotonic()

    async def login() -> None:
        conn = await connect_authenticated(loaded, root=ra, ssl_ctx=ctx, timeout=timeout)
        await conn.close()

    try:
        _compat.run(login())
    except (NoPortsError, OSError) as exc:
        if _tls_problem(exc):
            out.append(Check("tls", FAIL, f"atServer {host}:{port}: certificate not trusted "
                             f"({exc})", "trust the server's CA: --ca-file FILE or "
                             "NOPORTS_CA_FILE"))
        else:
            out.append(Check("atserver", FAIL, f"authentication at {host}:{port} failed: {exc}",
                             "use the keys of an approved enrollment of this atSign"))
        return out
    ms = (time.monotonic() - t0) * 1000
    out.append(Check("tls", OK, "certificate chain trusted"))
    out.append(Check("atserver", OK, f"authenticated to the atServer of {loaded.atsign} at "
                     f"{host}:{port} (PKAM, {ms:.0f} ms)"))
    return out


def clock() -> Check:
    """NTP state as systemd reports it (notification TTLs and APKAM expiries use the clock)."""
    tdc = shutil.which("timedatectl")
    if tdc is None:
        return Check("clock", SKIP, "timedatectl not available; cannot tell NTP state",
                     "make sure the clock is synchronised (chrony, ntpd or systemd-timesyncd)")
    try:
        out = subprocess.run([tdc, "show", "-p", "NTPSynchronized", "--value"],
                             capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    if out == "yes":
        return Check("clock", OK, "NTP synchronised")
    if out == "no":
        return Check("clock", WARN, "the clock is not NTP synchronised (notification TTLs and "
                     "APKAM expiries use it)", "timedatectl set-ntp true")
    return Check("clock", SKIP, "systemd does not report the NTP state here",
                 "make sure the clock is synchronised")


def local_port(port: int, *, name: str = "service", what: str = "something",
               fix: str = "start sshd (or the service npt should reach), or pass "
               "--service-port") -> Check:
    """Something accepts TCP connections on localhost:``port`` (a warning otherwise)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3):
            return Check(name, OK, f"{what} answers on localhost:{port}")
    except OSError as exc:
        return Check(name, WARN, f"nothing answers on localhost:{port} ({exc.strerror})", fix)


def daemon_version(
    loaded: Any, daemon: str, device: str, root: str | None = None, ca_file: str | None = None
) -> Check:
    """The device daemon's version, from the device_info record it shares with a manager."""
    if loaded is None:
        return Check("daemon", SKIP, "no usable keys")
    from ..at.client import AtClient

    async def fetch() -> str | None:
        client = await AtClient.connect(loaded.atsign, keys=loaded, root=root, ca_file=ca_file)
        try:
            return await client.get(f"device_info.{device}.sshnp", shared_by=daemon)
        finally:
            await client.close()

    try:
        value = _compat.run(fetch())
    except (NoPortsError, OSError) as exc:
        value = None
        err = str(exc)
    else:
        err = "no device_info record"
    if not value:
        return Check("daemon", WARN, f"{daemon} shares no device_info for {device!r} with "
                     f"{loaded.atsign} ({err})",
                     f"check -d, that the daemon runs, and that {loaded.atsign} is a manager")
    try:
        info = json.loads(value)
    except ValueError:
        info = {}
    if not isinstance(info, dict):
        info = {}
    ver, core = info.get("version", "?"), info.get("corePackageVersion", "?")
    return Check("daemon", OK, f"{device}{daemon} runs version {ver} (core {core})")
