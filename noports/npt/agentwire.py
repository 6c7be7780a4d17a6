"""The ``npt`` agent's socket: where it is, who may use it, and the messages on it.

Shared by the resident agent (:mod:`noports.cli.agent`) and the thin ``npt`` front
(:mod:`noports.npt_front`), so it imports only ``os``, ``stat``, ``_socket`` and ``_struct``
(not ``socket``, ``json`` or ``signal``: their ``enum`` and ``re`` imports alone cost more
than the rest of the front): an npt start through the agent must cost little more than the
interpreter.

Trust model (as ``ssh-agent``): the agent serves one user. Its socket lives in a directory
that we own and that no one else can write (0700 when we create it), the socket is 0600, and
both ends check the other's uid with ``SO_PEERCRED``: the agent answers only processes of its
own uid, and the front talks only to an agent of its own uid. A path that is not ours (a
directory or socket owned by someone else, or a directory others can write) is refused, never
"fixed". The agent holds the atKeys in memory like any running ``npt``; no secret crosses the
socket (a pass phrase, in argv or the environment, makes the front run ``npt`` in-process).

The front sends one request, a JSON object on one line (UTF-8)::

    {"op": "npt", "v": <PROTOCOL>, "version": <noports version>, "argv": [...],
     "cwd": "...", "env": {...}, "columns": <int>}

(``{"op": "status"}`` and ``{"op": "stop"}`` for ``noports agent status|stop``). The agent
answers with frames: one tag byte, a 4-byte big-endian length, that many bytes of UTF-8:
``a`` (empty) once it serves the request, ``o`` stdout text, ``e`` stderr text, then ``x``
the exit code (decimal); or, as its first and only frame, ``f`` (a reason): run ``npt``
in-process instead; ``s`` a JSON status object. The front waits :data:`ANSWER_TIMEOUT` for the
first frame (a wedged agent: npt runs in-process), then as long as the session lasts.
In the foreground the connection stays open while the tunnel runs: its end (the front exits
or is killed) ends the session.
"""

from __future__ import annotations

import _socket
import os
import stat
import struct

PROTOCOL = 1
ENV_SOCKET = "NOPORTS_AGENT_SOCKET"
ENV_NO_AGENT = "NOPORTS_NO_AGENT"
MAX_LINE = 1 << 20  # a request or a message larger than this is refused
ANSWER_TIMEOUT = 10.0  # seconds the front waits for the agent's first frame

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
    """Create the socket's directory 0700, or check an existing one (ours, writable by no
    one else: see :func:`check_dir`) and take its group and other bits away."""
    if not os.path.lexists(path):
        os.makedirs(path, mode=0o700, exist_ok=True)
    check_dir(path)
    if os.lstat(path).st_mode & 0o077:
        os.chmod(path, 0o700)


def check_socket(path: str) -> None:
    """An existing socket we own in a directory of ours (see :func:`check_dir`)."""
    check_dir(os.path.dirname(os.path.abspath(path)))
    st = os.lstat(path)
    if not stat.S_ISSOCK(st.st_mode):
        raise AgentPathError(f"{path} is not a socket")
    if st.st_uid != os.getuid():
        raise AgentPathError(f"{path} is owned by uid {st.st_uid}, not by us")


def peer_uid(sock: _socket.socket) -> int:
    """The uid of the process at the other end of a connected AF_UNIX socket."""
    creds = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


def connect(path: str, timeout: float = 2.0) -> _socket.socket:
    """A connection to the agent at ``path`` after the path and uid checks; OSError (or
    :class:`AgentPathError`) when there is none or it is not ours."""
    check_socket(path)
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
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


_JSON_ESCAPES = {ord('"'): '\\"', ord("\\"): "\\\\"} | {i: f"\\u{i:04x}" for i in range(32)}


def _json(value: object) -> str:
    """JSON for the request's types (str, int, list, dict) without importing ``json``."""
    if isinstance(value, str):
        return '"' + value.translate(_JSON_ESCAPES) + '"'
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_json(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(_json(str(k)) + ":" + _json(v) for k, v in value.items()) + "}"
    raise TypeError(f"cannot encode {type(value).__name__}")


def encode_request(msg: dict[str, object]) -> bytes:
    """One request line; UnicodeEncodeError for text that is not valid UTF-8 (e.g. an
    undecodable argv byte: the front then runs npt in-process)."""
    return _json(msg).encode("utf-8") + b"\n"


_HEAD = struct.Struct("!cI")


def frame(tag: str, text: str) -> bytes:
    data = text.encode("utf-8", "replace")
    return _HEAD.pack(tag.encode("ascii"), len(data)) + data


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


class Frames:
    """Frames from a blocking socket."""

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self, n: int) -> bool:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                return False
            self.buf += chunk
        return True

    def next(self) -> tuple[str, str] | None:
        """The next ``(tag, text)``; None at the end of the stream."""
        if not self._fill(_HEAD.size):
            return None
        tag, n = _HEAD.unpack_from(self.buf)
        if n > MAX_LINE:
            raise ValueError("agent frame too long")
        if not self._fill(_HEAD.size + n):
            return None
        data, self.buf = self.buf[_HEAD.size : _HEAD.size + n], self.buf[_HEAD.size + n :]
        return tag.decode("ascii", "replace"), data.decode("utf-8", "replace")
