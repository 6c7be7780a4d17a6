"""``npt``: tunnel a local port to a TCP service on a NoPorts device (see ``noports.npt``)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    # the session key is generated on another core while the rest of the program imports
    from ..crypto import ephemeral

    ephemeral.prestart(sys.argv[1:] if argv is None else argv)
    from ..npt.run import main as _main

    return _main(argv)


if __name__ == "__main__":
    sys.exit(main())
