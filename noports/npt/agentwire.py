"""The ``npt`` agent's socket: where it is, who may use it, and the messages on it.

Shared by the resident agent (:mod:`noports.cli.agent`) and the thin ``npt`` front
(:mod:`noports.npt_front`), so it imports only ``os``, ``socket``, ``struct`` and ``json``: the
front must start in a few milliseconds.

Trust model (as ``ssh-agent``): the agent serves one user. Its socket lives in a directory
that we own and that no one else can write or search (0700), the socket is 0600, and both
ends check the other's uid with ``SO_PEERCRED``: the agent answers only processes of its own
uid, and the front talks only to an agent of its own uid. A path that is not ours (a
directory or socket owned by someone else, or a directory others can write) is refused, never
"fixed". The agent holds the atKeys in memory like any running ``npt``; no secret crosses the
socket (a pass phrase, in argv or the environment, makes the front run ``npt`` in-process).

Messages are JSON objects, one a line (UTF-8). The front sends one request::

    {"op": "npt", "v": <PROTOCOL>, "version": <noports version>, "argv": [...],
     "cwd": "...", "env": {...}, "columns": <int>}

and the agent answers with any number of ``{"o": text}`` (stdout) and ``{"e": text}``
(stderr) messages, then ``{"x": <exit code>}``; or, as its first and only message,
``{"fallback": reason}``: run ``npt`` in-process instead. In the foreground the connection
stays open while the tunnel runs: its end (the front exits or is killed) ends the session.
``{"op": "status"}`` and ``{"op": "stop"}`` get one ``{"status": {...}}`` / ``{"stopping":
true}`` answer.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import struct

PROTOCOL = 1
ENV_SOCKET = "NOPORTS_AGENT_SOCKET"
ENV_NO_AGENT = "NOPORTS_NO_AGENT"
MAX_LINE = 1 << 20  # a request or a message larger than this is refused

#: environment variables the front sends besides ``NOPORTS_*`` (what npt reads)
ENV_EXTRA = ("HOME", "XDG_CONFIG_HOME", "SSL_CERT_FILE", "SSL_CERT_DIR")


class AgentPathError(OSError):
    """The socket path is not safely ours (owner, mode, type)."""


def default_socket_path(environ: dict[str, str] | None = None) -> str:
    """``$NOPORTS_AGENT_SOCKET``, else ``$XDG_RUNTIME_DIR/noports/agent.sock``, else
    ``~/.atsign/run/agent.sock``."""
    env = os.environ if environ is None else environ
    if env.get(ENV_SOCKET):
        return env[ENV_SOCKET]
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        return os.path.join(runtime, "noports", "agent.sock")
    return os.path.join(os.path.expanduser("~"), ".atsign", "run", "agent.sock")


def check_dir(path: str) -> None:
    """The socket's directory: a directory (not a link) we own, writable by no one else."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise AgentPathError(f"{path} is not a directory")
    if st.st_uid != os.getuid():
        raise AgentPathError(f"{path} is owned by uid {st.st_uid}, not by us")
    if st.st_mode & 0o022:
        raise AgentPathError(f"{path} is writable by others (mode {st.st_mode & 0o777:o})")


def make_dir(path: str) -> None:
    """Create the socket's directory 0700 (parents 0700 as well) or check an existing one."""
    if not os.path.lexists(path):
        os.makedirs(path, mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)
    check_dir(path)


def check_socket(path: str) -> None:
    """An existing socket we own in a directory of ours (see :func:`check_dir`)."""
    check_dir(os.path.dirname(os.path.abspath(path)))
    st = os.lstat(path)
    if not stat.S_ISSOCK(st.st_mode):
        raise AgentPathError(f"{path} is not a socket")
    if st.st_uid != os.getuid():
        raise AgentPathError(f"{path} is owned by uid {st.st_uid}, not by us")


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a connected AF_UNIX socket."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


def connect(path: str, timeout: float = 2.0) -> socket.socket:
    """A connection to the agent at ``path`` after the path and uid checks; OSError (or
    :class:`AgentPathError`) when there is none or it is not ours."""
    check_socket(path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.settimeout(timeout)
        s.connect(path)
        uid = peer_uid(s)
        if uid != os.getuid():
            raise AgentPathError(f"the agent at {path} runs as uid {uid}, not as us")
        s.settimeout(None)
    except BaseException:
        s.close()
        raise
    return s


def encode(msg: dict[str, object]) -> bytes:
    return json.dumps(msg, separators=(",", ":")).encode() + b"\n"


def request_env(environ: dict[str, str] | None = None) -> dict[str, str] | None:
    """What npt reads from the environment: ``NOPORTS_*`` and :data:`ENV_EXTRA`. None when
    a pass phrase is among them (secrets never cross the socket: npt runs in-process)."""
    env = os.environ if environ is None else environ
    out: dict[str, str] = {}
    for k, v in env.items():
        if k.startswith("NOPORTS_"):
            if "PASS_PHRASE" in k and v:
                return None
            out[k] = v
        elif k in ENV_EXTRA:
            out[k] = v
    return out


def columns() -> int:
    """The terminal width npt's help and usage would use (``noports.config._columns``)."""
    try:
        n = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        n = 0
    if n <= 0:
        try:
            n = os.get_terminal_size(1).columns
        except (ValueError, OSError):
            n = 0
    return n or 80


class Lines:
    """JSON messages from a blocking socket, one a line."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def next(self) -> dict[str, object] | None:
        """The next message; None at the end of the stream."""
        while b"\n" not in self.buf:
            if len(self.buf) > MAX_LINE:
                raise ValueError("agent message too long")
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        msg = json.loads(line)
        if not isinstance(msg, dict):
            raise ValueError("agent message is not an object")
        return msg
