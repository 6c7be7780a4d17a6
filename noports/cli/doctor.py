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
import sys
from dataclasses import asdict
from typing import Any

from ..doctor import checks
from ..doctor.checks import FAIL, OK, SKIP, WARN, Check
from .common import add_common

PROG = "noports doctor"
__all__ = ["Check", "Doctor", "OK", "WARN", "FAIL", "SKIP", "build_parser", "main"]


class Doctor:
    """Runs the shared checks (:mod:`noports.doctor.checks`), one printed line each."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.checks: list[Check] = []

    def add(self, name: str, status: str, detail: str, fix: str = "") -> Check:
        return self.record(Check(name, status, detail, fix))

    def record(self, c: Check) -> Check:
        self.checks.append(c)
        if self.args.output == "text":
            mark = {OK: "ok  ", WARN: "WARN", FAIL: "FAIL", SKIP: "skip"}[c.status]
            line = f"[{mark}] {c.name}: {c.detail}"
            if c.fix and c.status in (WARN, FAIL):
                line += f" -> fix: {c.fix}"
            print(line, flush=True)
        return c

    # -- checks ----------------------------------------------------------------------------

    def install(self) -> None:
        self.record(checks.install())

    def keys(self) -> Any:
        a = self.args
        c, loaded = checks.keys(a.atsign, a.key_file, a.pass_phrase)
        self.record(c)
        return loaded

    def root_and_server(self, keys: Any) -> bool:
        a = self.args
        results = checks.connectivity(keys, a.root, a.ca_file, a.timeout)
        for c in results:
            self.record(c)
        return keys is not None and all(c.status == OK for c in results)

    def clock(self) -> None:
        self.record(checks.clock())

    def service_port(self) -> None:
        self.record(checks.local_port(self.args.service_port))

    def daemon(self, keys: Any) -> None:
        a = self.args
        if a.daemon and a.device:
            self.record(checks.daemon_version(keys, a.daemon, a.device, a.root, a.ca_file))


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
