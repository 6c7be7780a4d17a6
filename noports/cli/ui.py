"""``noports ui``: the local web app (profiles, one-click tunnels, onboarding, approvals).

    noports ui [--port N] [--bind 127.0.0.1] [--no-browser]

Serves on loopback only and runs the tunnels in this process, so they outlive the browser tab.
Opens the browser with a one-time login link (printed instead with ``--no-browser``). A second
``noports ui`` finds the running one and opens it. Needs ``pip install 'noports[ui]'``.

Exit codes: 0 stopped; 1 error; 2 usage (a non-loopback --bind, a busy port, no ui extra).
"""

from __future__ import annotations

import argparse
import logging
import sys

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
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        print(f"{PROG}: --port must be 0..65535", file=sys.stderr)
        return EXIT_USAGE
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
