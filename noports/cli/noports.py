"""``noports``: the umbrella command. Subcommands live in their own modules and are imported
only when used, so ``noports --version`` stays fast."""

from __future__ import annotations

import argparse
import importlib
import sys

from .common import VersionAction

SUBCOMMANDS = {
    # name: (module under noports.cli, one-line help)
    "demo": ("demo", "local encrypted tunnel demo through the relay engine"),
    "server": ("server", "embedded control plane: root directory + atServer (TLS, SQLite)"),
    "quickstart": ("quickstart", "server, atSigns, srvd, sshnpd, npt and sshnp checked locally"),
    "service": ("service", "install a hardened systemd unit, its config file and the user"),
    "ui": ("ui", "local web app: profiles, one-click tunnels, onboarding, approvals"),
    "doctor": ("doctor", "check keys, root, TLS, atServer, clock, local service, daemon"),
    "profile": ("profile", "desktop-app profiles: list, import, export, run"),
    "agent": ("agent", "resident npt agent: tunnels start in tens of ms (stop, status)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="noports", description="NoPorts in Python.")
    parser.add_argument("--version", action=VersionAction)
    parser.add_argument("command", nargs="?", choices=sorted(SUBCOMMANDS), help="subcommand")
    if not argv or argv[0].startswith("-"):
        parser.parse_args(argv)
        parser.print_help()
        return 2
    name = argv[0]
    if name not in SUBCOMMANDS:
        parser.error(f"unknown command {name!r} (choose from {', '.join(sorted(SUBCOMMANDS))})")
    mod = importlib.import_module(f"noports.cli.{SUBCOMMANDS[name][0]}")
    return int(mod.main(argv[1:]))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
