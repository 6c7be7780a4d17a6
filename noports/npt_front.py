"""The ``npt`` command: hand the request to a running ``noports agent``, else run npt here.

This is the console script's entry point, so it imports only ``os``, ``sys``, ``_signal`` and
:mod:`noports.npt.agentwire` (``_socket``, ``struct``): with an agent, an npt start
costs the interpreter and one round trip on a Unix socket instead of ~140 ms of imports and
an atServer connection (see :mod:`noports.cli.agent` for the agent, its trust model and
what it leaves to the in-process npt). Without an agent, or when the agent declines, this is
exactly ``python -m noports.cli.npt``, silently.
"""

from __future__ import annotations

import os
import sys


def _local_only(argv: list[str]) -> bool:
    """Flags the agent path never sees: ``--no-agent`` and a pass phrase (a secret: it is
    not sent over the socket). Conservative: a short-option cluster holding ``P`` counts."""
    for t in argv:
        if t.startswith("--"):
            name = t.split("=", 1)[0]
            if len(name) > 4 and "--pass-phrase".startswith(name):
                return True
            if len(name) > 6 and "--no-agent".startswith(name):
                return True
        elif t.startswith("-") and "P" in t:
            return True
    return False


def _via_agent(argv: list[str]) -> int | None:
    """The exit code of npt run by the agent; None: run it here (no agent, or declined)."""
    from .npt import agentwire as wire

    env = wire.request_env()
    if env is None:
        return None
    from . import __version__

    try:
        request = wire.encode_request(
            {
                "op": "npt",
                "v": wire.PROTOCOL,
                "version": __version__,
                "argv": argv,
                "cwd": os.getcwd(),
                "env": env,
                "columns": wire.columns(),
            }
        )
        sock = wire.connect(wire.default_socket_path())
    except (OSError, ValueError):  # no agent (or not ours); UnicodeEncodeError: odd argv
        return None
    answered = False
    try:
        sock.settimeout(wire.ANSWER_TIMEOUT)
        sock.sendall(request)
        frames = wire.Frames(sock)
        while True:
            got = frames.next()
            if got is None:
                break
            tag, text = got
            if not answered:
                if tag == "f":
                    return None
                answered = True
                sock.settimeout(None)  # the session may last; its end closes the socket
            if tag == "o":
                sys.stdout.write(text)
                sys.stdout.flush()
            elif tag == "e":
                sys.stderr.write(text)
                sys.stderr.flush()
            elif tag == "x":
                return int(text)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: closing the socket ends the session
        return 1
    except (OSError, ValueError):
        if not answered:
            return None
    finally:
        sock.close()
    if not answered:
        return None
    print("npt: error: lost the connection to the agent", file=sys.stderr)
    return 1


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if os.environ.get("NOPORTS_NO_AGENT", "") in ("", "0") and not _local_only(args):
        # not ``signal``: its enums cost more than the rest of this file
        import _signal  # type: ignore[import-not-found, unused-ignore]

        old = _signal.signal(_signal.SIGTERM, _terminate)  # as npt: SIGTERM is like SIGINT
        try:
            code = _via_agent(args)
        finally:
            _signal.signal(_signal.SIGTERM, old)
        if code is not None:
            return code
    from .cli import npt

    return npt.main(args)


if __name__ == "__main__":
    sys.exit(main())
