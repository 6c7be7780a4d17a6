"""``npt``: tunnel a local port to a TCP service on a NoPorts device (see ``noports.npt``)."""

from __future__ import annotations

import sys

from ..npt.run import main as _main


def main(argv: list[str] | None = None) -> int:
    return _main(argv)


if __name__ == "__main__":
    sys.exit(main())
