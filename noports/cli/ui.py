"""``noports ui``: the local web app (profiles, one-click tunnels, onboarding, approvals).

    noports ui [--port N] [--bind 127.0.0.1] [--no-browser]
    noports ui --install-service [--port N]   (a systemd user unit: start at login)

Serves on loopback only and runs the tunnels in this process, so they outlive the browser tab.
Opens the browser with a one-time login link (printed instead with ``--no-browser``). A second
``noports ui`` finds the running one and opens it. Needs ``pip install 'noports[ui]'``.

Exit codes: 0 stopped; 1 error; 2 usage (a non-loopback --bind, a busy port, no ui extra).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .. import _compat
from ..errors import EXIT_USAGE, NoPortsError
from .common import fail

PROG = "noports ui"
DEFAULT_PORT = 8765


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0].split(": ", 1)[1])
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any)"
    )
    p.add_argument("--bind", default="127.0.0.1", help="loopback address (default 127.0.0.1)")
    p.add_argument("--no-browser", action="store_true", help="print the login link only")
    p.add_argument(
        "--install-service",
        action="store_true",
        help="write a systemd user unit (~/.config/systemd/user/noports-ui.service) and exit",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


UNIT = """\
[Unit]
Description=NoPorts local web app (noports ui): profiles and tunnels
After=network-online.target

[Service]
ExecStart={python} -m noports.cli.noports ui --no-browser --port {port} --bind {bind}
Restart=on-failure
RestartSec=5

[Install]
WantedBy=default.target
"""


def install_service(port: int, bind: str) -> int:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    path = Path(base) / "systemd" / "user" / "noports-ui.service"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(UNIT.format(python=sys.executable, port=port, bind=bind))
    print(f"{PROG}: wrote {path}")
    print(
        "enable it with: systemctl --user daemon-reload && systemctl --user enable --now noports-ui"
    )
    print(f"then run `{PROG}` to open it (it finds the running service)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        print(f"{PROG}: --port must be 0..65535", file=sys.stderr)
        return EXIT_USAGE
    if args.install_service:
        if args.port == 0:
            print(f"{PROG}: --install-service needs a fixed --port", file=sys.stderr)
            return EXIT_USAGE
        return install_service(args.port, args.bind)
    try:
        from ..ui import server
    except ImportError as exc:
        print(
            f"{PROG}: the web app needs its extra: pip install 'noports[ui]' ({exc.name} missing)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )

    def say(msg: str) -> None:
        print(msg, flush=True)

    browser = not args.no_browser
    try:
        server.check_bind(args.bind)
        if server.find_running(browser, say):
            return 0
        return _compat.run(server.serve(bind=args.bind, port=args.port, browser=browser, say=say))
    except KeyboardInterrupt:
        return 0
    except NoPortsError as exc:
        return fail(PROG, exc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
