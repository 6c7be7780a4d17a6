"""What a session loop calls when it runs detached (``sshnp -x``, ``npt -x``).

A loop given a :data:`Reporter` calls it once, with the line to print, as soon as its tunnel
listens; the process side of detaching (fork before any event loop, setsid, stdio on
/dev/null) is the command line's business: :mod:`noports.cli.detach`.
"""

from __future__ import annotations

from collections.abc import Callable

Reporter = Callable[[str], None]
"""``report(text)``: the tunnel listens; ``text`` is what the program prints before detaching."""
