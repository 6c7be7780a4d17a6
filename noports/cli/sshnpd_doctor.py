"""``sshnpd --doctor [-o [FILE]]``: check what a device needs before starting the daemon.

Runs before argument validation (as the official doctor), with whatever of the usual flags and
config file is given: prerequisites (ssh-keygen), configuration, keys, connectivity (root,
TLS and atServer), the local sshd port, version. Prints each check, a system block and a
summary in the official layout; ``-o`` also saves the summary. Exit 0 when nothing failed,
else 1. The checks themselves are those of ``noports doctor`` (:mod:`noports.doctor.checks`).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from ..crypto.atkeys import default_keys_path
from ..doctor import checks

RULE = "-" * 60


@dataclass
class Report:
    results: list[tuple[str, str, str]] = field(default_factory=list)  # (check, status, msg)

    def add(self, check: str, status: str, msg: str) -> None:
        self.results.append((check, status, msg))
        mark = {"success": "OK", "failure": "FAIL", "warning": "WARN", "skipped": "SKIP"}[status]
        print(f"   [{mark}] {msg}")

    def check(self, section: str, c: checks.Check) -> None:
        """One shared check under ``section``, its fix appended when it did not pass."""
        status = "success" if c.status == checks.OK else c.status
        msg = c.detail
        if c.fix and c.status in (checks.FAIL, checks.WARN):
            msg += f" (fix: {c.fix})"
        self.add(section, status, msg)


def _run(check: str) -> None:
    print(f" Running: {check}")


def run_doctor(
    parser: argparse.ArgumentParser,
    argv: Sequence[str],
    *,
    default_config: str,
    yaml_keys: Mapping[str, str],
) -> int:
    from ..config import parse_args

    t0 = time.monotonic()
    out_file = None
    rest = [a for a in argv if a != "--doctor"]
    print(RULE)
    print("Welcome to the SSHNPD Doctor - Diagnostic Tool")
    print(RULE)
    rep = Report()

    _run("Prerequisites")
    rep.check("Prerequisites", checks.ssh_keygen())

    _run("Config")
    for a in parser._actions:  # noqa: SLF001 - the doctor checks what is missing itself
        a.required = False
    args: argparse.Namespace | None = None
    try:
        args = parse_args(
            parser,
            "sshnpd",
            rest,
            default_config=default_config,
            yaml_keys=yaml_keys,
            config_env=("SSHNPD_CONFIG",),
        )
    except SystemExit:
        rep.add("Config", "failure", "the command line or config file is invalid (see above)")
    if args is not None:
        out_file = args.output
        where = args.config or "no config file"
        if not args.atsign:
            rep.add("Config", "failure", f"no atSign (-a or atsign.atsign in {where})")
        elif not (args.managers or args.policy_manager):
            rep.add("Config", "failure", f"neither managers nor policy manager set ({where})")
        else:
            rep.add("Config", "success", f"configuration complete ({where})")

    _run("Keys")
    keys = None
    atsign = getattr(args, "atsign", None)
    keys_path = None
    if args is None or not atsign:
        rep.add("Keys", "skipped", "no atSign to look for keys of")
    else:
        atsign = atsign.strip().lower()
        atsign = atsign if atsign.startswith("@") else "@" + atsign
        keys_path = Path(args.key_file or default_keys_path(atsign))
        c, keys = checks.keys(atsign, str(keys_path), args.pass_phrase)
        rep.check("Keys", c)

    _run("Connectivity")
    if keys is None or args is None:
        rep.add("Connectivity", "skipped", "no usable keys")
    else:
        from .options import root_of

        for c in checks.connectivity(keys, root_of(args), args.ca_file, timeout=10.0):
            rep.check("Connectivity", c)

    _run("Service Status")
    port = getattr(args, "local_sshd_port", 22) or 22
    rep.check("Service Status", checks.local_port(
        port, name="sshd", what="sshd", fix="start sshd, or set --local-sshd-port"))

    _run("Version")
    rep.add("Version", "success", f"sshnpd (noports) {__version__}")

    lines = [
        RULE,
        "SYSTEM INFORMATION",
        RULE,
        f"Platform: {platform.system()} {platform.release()}",
        f"Architecture: {platform.machine()}",
        f"Version: {__version__}",
        f"Home Dir: {Path.home()}",
        f"Keys Path: {keys_path or '-'}",
        RULE,
        "DIAGNOSTIC SUMMARY",
        RULE,
    ]
    count = {s: sum(1 for r in rep.results if r[1] == s) for s in
             ("success", "failure", "warning", "skipped")}  # fmt: skip
    lines += [
        f"Total Tests: {len(rep.results)}",
        f"Success: {count['success']}",
        f"Failures: {count['failure']}",
        f"Warnings: {count['warning']}",
        f"Skipped: {count['skipped']}",
    ]
    for title, status in (("Problems", "failure"), ("Warnings", "warning"), ("Passed", "success")):
        items = [r for r in rep.results if r[1] == status]
        if items:
            lines.append(f"{title}:")
            lines += [f"  \u2022 {c}: {m}" for c, _, m in items]
    lines.append(f"Total duration: {int((time.monotonic() - t0) * 1000)}ms")
    text = "\n".join(lines)
    print(text)
    if out_file:
        fd = os.open(out_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
        print(f"Summary saved to {out_file}")
    sys.stdout.flush()
    return 1 if count["failure"] else 0
