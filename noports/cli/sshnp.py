"""``sshnp``: ssh to a NoPorts device (see ``noports.sshnp``). ``sshnp ssh-config ...`` writes
an ssh config Host block. Anything after ``--`` is the remote command for the user session."""

from __future__ import annotations

import signal
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..session.background import Reporter


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # the session key is generated on another core while the rest of the program imports
    from ..crypto import ephemeral

    ephemeral.prestart(argv)
    from .. import _compat
    from ..errors import NoPortsError
    from ..log import setup_logging
    from ..session.background import run_detached
    from ..sshnp import args as sshnp_args
    from .common import fail

    if argv and argv[0] == "ssh-config":
        from ..sshnp import sshconfig

        return sshconfig.main(argv[1:])
    command: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, command = argv[:i], argv[i + 1 :]
    args = sshnp_args.parse(argv)
    setup_logging(args)
    if args.save_profile:
        try:
            print(f"saved profile {sshnp_args.save_profile(args)}", file=sys.stderr)
        except (NoPortsError, OSError) as exc:
            return fail("sshnp", exc)
        return 0

    def work(report: Reporter | None) -> int:
        from ..sshnp import run

        try:
            if args.list_devices:
                from ..sshnp.listing import list_devices

                return _compat.run(list_devices(args))
            if args.stdio:
                from ..sshnp.stdio import run_stdio

                return _compat.run(run_stdio(args))
            return _compat.run(run.run(args, report, run.check_command(command)))
        except KeyboardInterrupt:
            return 1
        except Exception as exc:  # noqa: BLE001 - one line and a documented exit code
            if args.debug:
                import logging

                logging.getLogger("noports.sshnp").exception("sshnp failed")
            return fail("sshnp", exc)

    signal.signal(signal.SIGTERM, _terminate)  # SIGTERM ends us like SIGINT: exit 1
    if args.print_command and not args.list_devices:
        return run_detached(work)
    return work(None)


if __name__ == "__main__":
    sys.exit(main())
