"""``noports quickstart``: the server, three atSigns, srvd, sshnpd, an npt tunnel and an sshnp
session on this machine, checked end to end; then the commands to type next.

    noports quickstart [--data-dir DIR] [--exit] [--ssh auto|yes|no] [--timeout S]

Without ``--data-dir`` everything lives in a temporary directory that is removed on exit.
``--exit`` stops right after the checks (for CI). Ctrl-C or SIGTERM stops every child.
Exit codes: 0 checks passed (and stopped); 1 a step failed; 2 usage; 4 a tool is missing
(``--ssh yes`` without OpenSSH); 5 a step timed out; 130 interrupted before the checks passed.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType

from ..errors import NoPortsError
from ..log import setup_logging
from .common import add_common, fail

PROG = "noports quickstart"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.split("\n\n")[0].replace("``", ""),
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(p)
    p.add_argument("--data-dir", default=None, help="keep state here (default: a temporary dir)")
    p.add_argument("--exit", action="store_true", help="stop right after the checks (CI)")
    p.add_argument(
        "--ssh",
        choices=("auto", "yes", "no"),
        default="auto",
        help="the sshd + sshnp check: auto = when OpenSSH is installed",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds each step may take (default %(default)s)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    from ..quickstart import Interrupted, Quickstart, check_data_dir

    args = build_parser().parse_args(argv)
    setup_logging(args)
    state = {"passed": False}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # once: the teardown that follows must not be interrupted by a second signal
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Interrupted(signal.Signals(signum).name)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    def say(line: str) -> None:
        if line.startswith("[ok] all checks passed"):
            state["passed"] = True
        print(line, flush=True)

    try:
        data_dir: Path | None = check_data_dir(args.data_dir) if args.data_dir else None
        qs = Quickstart(data_dir, ssh=args.ssh, timeout=args.timeout, say=say)
        return qs.run(exit_after=args.exit)
    except Interrupted as exc:
        print(f"{PROG}: stopped ({exc}); every child process is stopped", file=sys.stderr)
        return 0 if state["passed"] else 130
    except (NoPortsError, OSError) as exc:
        return fail(PROG, exc)
    finally:
        for s, h in old.items():
            signal.signal(s, h)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
