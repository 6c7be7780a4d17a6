"""``noports doctor``: why can't this machine use NoPorts? One line per check, with the fix.

Checks, in the order a failure makes the next ones pointless: this install (compiled or pure,
cryptography path), the keys file (present, mode 0600, loads for the atSign, pass phrase), the
root directory (reachable, knows the atSign), the TLS chain (trusted with the CA in use) and
PKAM authentication to the atServer, the clock (NTP synchronised, when systemd says), a local
service port (sshd by default) and, given ``--daemon``/``--device``, the device daemon's
version from the ``device_info`` record it shares with us. ``--output json`` prints one object.

Exit codes: 0 nothing failed (warnings allowed), 1 at least one check failed, 2 usage.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .. import _compat
from ..crypto import cryptography_text
from ..errors import NoPortsError
from .common import add_common

PROG = "noports doctor"


def _tls_problem(exc: BaseException) -> bool:
    """The error, or what caused it, is a certificate/TLS failure."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError) or "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
OK, WARN, FAIL, SKIP = "ok", "warning", "failure", "skipped"


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


class Doctor:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.checks: list[Check] = []

    def add(self, name: str, status: str, detail: str, fix: str = "") -> Check:
        c = Check(name, status, detail, fix)
        self.checks.append(c)
        if self.args.output == "text":
            mark = {OK: "ok  ", WARN: "WARN", FAIL: "FAIL", SKIP: "skip"}[status]
            line = f"[{mark}] {name}: {detail}"
            if fix and status in (WARN, FAIL):
                line += f" -> fix: {fix}"
            print(line, flush=True)
        return c

    # -- checks ----------------------------------------------------------------------------

    def install(self) -> None:
        impl = _compat.implementation()
        crypto = cryptography_text()
        detail = f"implementation {impl}; event loop {_compat.loop_name()}; {crypto}"
        if impl != "compiled":
            self.add("install", WARN, detail, "install a compiled wheel, or build from the sdist "
                     "with a C compiler (the pure twins are several times slower)")
        else:
            self.add("install", OK, detail)

    def keys(self) -> Any:
        from ..crypto.atkeys import AtKeys, default_keys_path

        a = self.args
        if not a.atsign:
            self.add("keys", SKIP, "no atSign given", "pass -a @you")
            return None
        path = Path(a.key_file or default_keys_path(a.atsign))
        if not path.exists():
            self.add("keys", FAIL, f"{path} does not exist",
                     f"activate {a.atsign} (at_activate -a {a.atsign}) or pass -k FILE")
            return None
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            self.add("keys", FAIL, f"{path} has mode {mode:04o}: others can read the secret keys",
                     f"chmod 600 {path}")
            return None
        try:
            keys = AtKeys.load(path, a.atsign, strict_mode=True,
                               pass_phrase=a.pass_phrase or None)
        except (NoPortsError, OSError, ValueError) as exc:
            self.add("keys", FAIL, f"{path}: {exc}",
                     "give the pass phrase with -P" if "pass phrase" in str(exc) else
                     "use the keys file of this atSign (-k FILE)")
            return None
        self.add("keys", OK, f"{path} (mode {mode:04o}) loads for {keys.atsign}")
        return keys

    def root_and_server(self, keys: Any) -> bool:
        from ..at.config import root_address, ssl_context
        from ..at.connection import connect_authenticated, find_atserver

        a = self.args
        try:
            ra = root_address(a.root)
        except NoPortsError as exc:
            self.add("root", FAIL, str(exc), "--root host:port or NOPORTS_ROOT")
            return False
        try:
            with socket.create_connection((ra.host, ra.port), timeout=a.timeout):
                pass
        except OSError as exc:
            self.add("root", FAIL, f"{ra.host}:{ra.port} unreachable ({exc})",
                     "check the network/firewall, or point --root / NOPORTS_ROOT at your root")
            return False
        if keys is None:
            self.add("root", OK, f"{ra.host}:{ra.port} reachable")
            return False
        try:
            ctx = ssl_context(a.ca_file)
        except NoPortsError as exc:
            self.add("tls", FAIL, str(exc), "--ca-file FILE or NOPORTS_CA_FILE")
            return False
        try:
            host, port = _compat.run(
                find_atserver(keys.atsign, root=ra, ssl_ctx=ctx, timeout=a.timeout)
            )
        except (NoPortsError, OSError) as exc:
            if _tls_problem(exc):
                self.add("tls", FAIL, f"root {ra.host}:{ra.port}: certificate not trusted ({exc})",
                         "trust the server's CA: --ca-file FILE or NOPORTS_CA_FILE "
                         "(`noports server` prints it)")
                return False
            self.add("root", FAIL, f"{ra.host}:{ra.port} does not know {keys.atsign} ({exc})",
                     "check the atSign, or that its atServer is registered with this root")
            return False
        self.add("root", OK, f"{ra.host}:{ra.port} says {keys.atsign} is at {host}:{port}")
        t0 = time.monotonic()
        async def login() -> None:
            conn = await connect_authenticated(keys, root=ra, ssl_ctx=ctx, timeout=a.timeout)
            await conn.close()

        try:
            _compat.run(login())
        except (NoPortsError, OSError) as exc:
            if _tls_problem(exc):
                self.add("tls", FAIL, f"atServer {host}:{port}: certificate not trusted ({exc})",
                         "trust the server's CA: --ca-file FILE or NOPORTS_CA_FILE")
                return False
            self.add("atserver", FAIL, f"authentication at {host}:{port} failed: {exc}",
                     "use the keys of an approved enrollment of this atSign")
            return False
        ms = (time.monotonic() - t0) * 1000
        self.add("tls", OK, "certificate chain trusted")
        self.add("atserver", OK, f"PKAM authentication as {keys.atsign} in {ms:.0f} ms")
        return True

    def clock(self) -> None:
        tdc = shutil.which("timedatectl")
        if tdc is None:
            self.add("clock", SKIP, "timedatectl not available; cannot tell NTP state",
                     "make sure the clock is synchronised (chrony, ntpd or systemd-timesyncd)")
            return
        try:
            out = subprocess.run([tdc, "show", "-p", "NTPSynchronized", "--value"],
                                 capture_output=True, text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        if out == "yes":
            self.add("clock", OK, "NTP synchronised")
        elif out == "no":
            self.add("clock", WARN, "the clock is not NTP synchronised (notification TTLs and "
                     "APKAM expiries use it)", "timedatectl set-ntp true")
        else:
            self.add("clock", SKIP, "systemd does not report the NTP state here",
                     "make sure the clock is synchronised")

    def service_port(self) -> None:
        port = self.args.service_port
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=3):
                self.add("service", OK, f"something answers on localhost:{port}")
        except OSError as exc:
            self.add("service", WARN, f"nothing answers on localhost:{port} ({exc.strerror})",
                     "start sshd (or the service npt should reach), or pass --service-port")

    def daemon(self, keys: Any) -> None:
        a = self.args
        if not (a.daemon and a.device):
            return
        if keys is None:
            self.add("daemon", SKIP, "no usable keys")
            return
        from ..at.client import AtClient

        async def fetch() -> str | None:
            client = await AtClient.connect(keys.atsign, keys=keys, root=a.root,
                                            ca_file=a.ca_file)
            try:
                return await client.get(f"device_info.{a.device}.sshnp", shared_by=a.daemon)
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
            self.add("daemon", WARN, f"{a.daemon} shares no device_info for {a.device!r} with "
                     f"{keys.atsign} ({err})",
                     f"check -d, that the daemon runs, and that {keys.atsign} is a manager")
            return
        try:
            info = json.loads(value)
        except ValueError:
            info = {}
        ver = info.get("version", "?")
        core = info.get("corePackageVersion", "?")
        self.add("daemon", OK, f"{a.device}{a.daemon} runs version {ver} (core {core})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Check this machine's NoPorts set-up: install, keys, root, TLS, atServer, "
        "clock, local service, device daemon. One line per check with the fix.",
        epilog="exit codes: 0 nothing failed, 1 a check failed, 2 usage",
    )
    p.add_argument("-a", "--atsign", default=None, help="the atSign whose keys to check")
    p.add_argument("-k", "--key-file", default=None, help="atKeys file (default ~/.atsign/keys)")
    p.add_argument("-P", "--pass-phrase", default=None, help="pass phrase of protected atKeys "
                   "(prefer NOPORTS_DOCTOR_PASS_PHRASE_FILE)")
    p.add_argument("--root", default=None, help="root directory host:port (env NOPORTS_ROOT)")
    p.add_argument("--ca-file", default=None, help="extra CA bundle (env NOPORTS_CA_FILE)")
    p.add_argument("--service-port", type=int, default=22, help="local port to probe (22)")
    p.add_argument("--daemon", default=None, help="device daemon atSign to ask for its version")
    p.add_argument("--device", default=None, help="device name (with --daemon)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per network step")
    p.add_argument("--output", choices=("text", "json"), default="text")
    add_common(p)
    return p


def main(argv: list[str] | None = None) -> int:
    from ..config import parse_args

    parser = build_parser()
    args = parse_args(parser, "doctor", argv)
    if args.atsign:
        a = args.atsign.strip().lower()
        args.atsign = a if a.startswith("@") else "@" + a
    if args.daemon:
        d = args.daemon.strip().lower()
        args.daemon = d if d.startswith("@") else "@" + d
    doc = Doctor(args)
    doc.install()
    keys = doc.keys()
    doc.root_and_server(keys)
    doc.clock()
    doc.service_port()
    doc.daemon(keys)
    failed = sum(c.status == FAIL for c in doc.checks)
    warned = sum(c.status == WARN for c in doc.checks)
    if args.output == "json":
        print(json.dumps({"ok": not failed, "failures": failed, "warnings": warned,
                          "checks": [asdict(c) for c in doc.checks]}, ensure_ascii=True))
    else:
        print(f"{len(doc.checks)} checks: {failed} failed, {warned} warnings", flush=True)
    sys.stdout.flush()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
