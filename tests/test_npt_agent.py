"""``noports agent`` and the thin ``npt`` front (noports/npt_front.py), real processes.

The embedded atServer, srvd, sshnpd and sshd of ``tests.test_sshnp_rig``; the agent runs as
``python -m noports.cli.agent``; the front as the console script runs it
(``python -m noports.npt_front``), pointed at the agent by ``$NOPORTS_AGENT_SOCKET``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from noports.npt import agentwire
from tests.fixtures_np import Proc
from tests.test_npt_e2e import EchoServer
from tests.test_sshnp_rig import Rig, banner_after_connect, module_rig

pytestmark = pytest.mark.timeout(120)


class AgentRig:
    def __init__(self, rig: Rig, echo: EchoServer) -> None:
        self.rig = rig
        self.echo = echo
        self.run_dir = rig.env.home / "run"
        self.sock = str(self.run_dir / "agent.sock")
        self.env = {**rig.env.env, "NOPORTS_AGENT_SOCKET": self.sock, "COLUMNS": "100"}
        rig.daemon("agentdev", permit=f"localhost:{rig.sshd.port},localhost:{echo.port}")
        self.agent = self.start_agent(self.sock)

    def start_agent(self, sock: str, *extra: str) -> Proc:
        p = Proc(
            [sys.executable, "-m", "noports.cli.agent", "--socket", sock, "--idle", "0", *extra],
            self.env,
            str(self.rig.env.home),
            None,
        )
        self.rig.env.procs.append(p)
        p.wait_for("listening on", 20)
        return p

    def front_argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "noports.npt_front", *self.rig.base("agentdev"), *args]

    def front(self, *args: str, env: dict[str, str] | None = None, timeout: float = 30.0):
        return subprocess.run(
            self.front_argv(*args),
            env={**self.env, **(env or {})},
            cwd=str(self.rig.env.home),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def spawn_front(self, *args: str) -> Proc:
        p = Proc(self.front_argv(*args), self.env, str(self.rig.env.home), None)
        self.rig.env.procs.append(p)
        return p

    def agent_cmd(self, *args: str, sock: str | None = None):
        return subprocess.run(
            [sys.executable, "-m", "noports.cli.agent", *args, "--socket", sock or self.sock],
            env=self.env,
            cwd=str(self.rig.env.home),
            capture_output=True,
            text=True,
            timeout=30,
        )

    def status(self) -> dict:
        r = self.agent_cmd("status")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)


@pytest.fixture(scope="module")
def arig(at_server, tmp_path_factory) -> Iterator[AgentRig]:
    echo = EchoServer()
    try:
        for rig in module_rig(at_server, tmp_path_factory):
            yield AgentRig(rig, echo)
    finally:
        echo.close()


def _echo_through(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.settimeout(10)
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return got
            got += chunk


def _closed_within(port: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return True
        time.sleep(0.1)
    return False


def test_socket_and_directory_are_private(arig: AgentRig) -> None:
    assert stat.S_IMODE(os.stat(arig.run_dir).st_mode) == 0o700
    st = os.lstat(arig.sock)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.getuid()
    s = arig.status()
    assert s["pid"] == arig.agent.pid and s["socket"] == arig.sock


def test_foreground_json_tunnel_and_front_killed_ends_session(arig: AgentRig) -> None:
    served = arig.status()["served"]
    p = arig.spawn_front("-p", str(arig.echo.port), "--output", "json", "-T", "30s")
    m = p.wait_for(r'^\{"event": "ready".*\}$', 30, stream="stdout")
    ev = json.loads(m.group(0))
    assert ev["mode"] == "aead" and ev["host"] == "127.0.0.1", ev
    p.wait_for(rf"npt is listening on 127\.0\.0\.1:{ev['port']} \(aead\)", 5, stream="stderr")
    payload = os.urandom(200_000)
    assert _echo_through(ev["port"], payload) == payload
    s = arig.status()
    assert s["served"] == served + 1 and s["sessions"] == 1, s  # it went through the agent
    p.signal(signal.SIGTERM)  # as npt: SIGTERM is Ctrl-C, exit 1
    assert p.wait(10) == 1
    assert _closed_within(ev["port"], 10), "the session outlived its npt"
    deadline = time.monotonic() + 10
    while arig.status()["sessions"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert arig.status()["sessions"] == 0


def test_exit_when_connected_leaves_the_tunnel_in_the_agent(arig: AgentRig) -> None:
    served = arig.status()["served"]
    r = arig.front("-p", str(arig.rig.sshd.port), "-x", "-T", "10s")
    assert r.returncode == 0, r.stderr
    port = int(r.stdout.strip())
    assert "npt is listening on 127.0.0.1:" in r.stderr
    banner_after_connect(port)
    s = arig.status()
    assert s["served"] == served + 1 and s["sessions"] >= 1, s


@pytest.mark.parametrize(
    "args",
    [
        ("-p", "0"),  # a check of ours (parser.error)
        ("-p", "22", "--bogus"),  # argparse's own
        ("-p", "22", "-T", "soon"),  # a duration
    ],
)
def test_usage_errors_read_the_same_with_and_without_the_agent(
    arig: AgentRig, args: tuple[str, ...]
) -> None:
    via = arig.front(*args)
    here = arig.front(*args, env={"NOPORTS_NO_AGENT": "1"})
    assert via.returncode == here.returncode == 2, (via.stderr, here.stderr)
    assert via.stderr == here.stderr and via.stdout == here.stdout
    assert "usage: npt" in via.stderr


def test_declined_requests_run_in_process(arig: AgentRig) -> None:
    """-v (the process's logging) and --no-agent run npt here: the agent serves nothing."""
    served = arig.status()["served"]
    r = arig.front("-p", str(arig.rig.sshd.port), "-x", "-v", "-T", "3s")
    assert r.returncode == 0, r.stderr
    banner_after_connect(int(r.stdout.strip()))
    r = arig.front("-p", "0", "--no-agent")
    assert r.returncode == 2
    assert arig.status()["served"] == served


def test_stale_socket_falls_back_silently(arig: AgentRig, tmp_path: Path) -> None:
    d = tmp_path / "stale"
    d.mkdir(mode=0o700)
    path = str(d / "agent.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.close()  # the file stays, no one listens
    r = arig.front(
        "-p", str(arig.rig.sshd.port), "-x", "-T", "3s", env={"NOPORTS_AGENT_SOCKET": path}
    )
    assert r.returncode == 0, r.stderr
    banner_after_connect(int(r.stdout.strip()))
    # and a new agent takes the stale path over
    p = arig.start_agent(path)
    assert arig.agent_cmd("stop", sock=path).returncode == 0
    assert p.wait(10) == 0 and not os.path.lexists(path)
    r = arig.agent_cmd("status", sock=path)
    assert r.returncode == 7 and "no agent" in r.stderr


def test_second_agent_on_a_live_socket_is_refused(arig: AgentRig) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "noports.cli.agent", "--socket", arig.sock],
        env=arig.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 1 and "already running" in r.stderr
    assert arig.status()["pid"] == arig.agent.pid  # the first one still serves


def test_paths_others_can_write_are_refused(arig: AgentRig, tmp_path: Path) -> None:
    d = tmp_path / "open"
    d.mkdir()
    d.chmod(0o777)
    path = str(d / "agent.sock")
    r = subprocess.run(
        [sys.executable, "-m", "noports.cli.agent", "--socket", path],
        env=arig.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 1 and "writable by others" in r.stderr, r.stderr
    assert not os.path.lexists(path)
    with pytest.raises(agentwire.AgentPathError):
        agentwire.connect(path)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to own a path as another uid")
def test_foreign_owned_socket_is_refused(arig: AgentRig, tmp_path: Path) -> None:
    d = tmp_path / "foreign"
    d.mkdir(mode=0o700)
    path = str(d / "agent.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen()
    try:
        os.chown(path, 65534, 65534)
        with pytest.raises(agentwire.AgentPathError, match="owned by uid 65534"):
            agentwire.connect(path)
        os.chown(path, 0, 0)
        os.chown(d, 65534, 65534)
        with pytest.raises(agentwire.AgentPathError, match="owned by uid 65534"):
            agentwire.connect(path)
    finally:
        srv.close()


def test_relative_paths_and_flag_variables_are_the_front_s(arig: AgentRig) -> None:
    """-k relative to the front's directory; NOPORTS_NPT_* from the front's environment."""
    served = arig.status()["served"]
    keys_dir = arig.rig.env.home / ".atsign"
    argv = arig.front_argv("-p", str(arig.rig.sshd.port), "-x", "-T", "3s")
    argv += ["-k", f"keys/{arig.rig.client}_key.atKeys"]
    r = subprocess.run(
        argv,
        env={**arig.env, "NOPORTS_NPT_OUTPUT": "json"},
        cwd=str(keys_dir),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    ev = json.loads(r.stdout)
    assert ev["event"] == "ready"
    banner_after_connect(ev["port"])
    assert arig.status()["served"] == served + 1


def test_another_environment_runs_in_process(arig: AgentRig) -> None:
    served = arig.status()["served"]
    r = arig.front("-p", str(arig.rig.sshd.port), "-x", "-T", "3s", env={"NOPORTS_OTHER": "1"})
    assert r.returncode == 0, r.stderr
    banner_after_connect(int(r.stdout.strip()))
    assert arig.status()["served"] == served


def test_idle_agent_exits(arig: AgentRig, tmp_path: Path) -> None:
    d = tmp_path / "idle"
    d.mkdir(mode=0o700)
    path = str(d / "agent.sock")
    p = Proc(
        [sys.executable, "-m", "noports.cli.agent", "--socket", path, "--idle", "1s"],
        arig.env,
        str(tmp_path),
        None,
    )
    arig.rig.env.procs.append(p)
    p.wait_for("listening on", 20)
    assert p.wait(15) == 0
    assert not os.path.lexists(path)


def test_a_changed_keys_file_is_not_served_from_a_spare(arig: AgentRig, tmp_path: Path) -> None:
    """The agent keeps a spare atClient per keys file; when the file goes away the next
    request fails as in-process npt does, not on the old keys."""
    import shutil

    keys = tmp_path / "client.atKeys"
    shutil.copy(arig.rig.env.home / ".atsign" / "keys" / f"{arig.rig.client}_key.atKeys", keys)
    keys.chmod(0o600)
    args = ("-p", str(arig.rig.sshd.port), "-x", "-T", "3s", "-k", str(keys))
    r = arig.front(*args)
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 10
    while arig.rig.client not in arig.status()["spares"] and time.monotonic() < deadline:
        time.sleep(0.1)
    keys.unlink()
    via = arig.front(*args)
    here = arig.front(*args, env={"NOPORTS_NO_AGENT": "1"})
    assert via.returncode == here.returncode != 0, (via.stderr, here.stderr)
    assert via.stderr == here.stderr and via.stdout == here.stdout == ""


def test_concurrent_requests(arig: AgentRig) -> None:
    """Several fronts at once: each gets its own session (one takes the spare, the others
    connect their own atClient), stdout and exit code."""
    served = arig.status()["served"]
    procs = [
        subprocess.Popen(
            arig.front_argv("-p", str(arig.echo.port), "-x", "-T", "5s", "--output", "json"),
            env=arig.env,
            cwd=str(arig.rig.env.home),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    ports = set()
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        ev = json.loads(out)
        ports.add(ev["port"])
        assert _echo_through(ev["port"], b"hello %d" % ev["port"]) == b"hello %d" % ev["port"]
    assert len(ports) == 3
    assert arig.status()["served"] == served + 3


def test_parse_lines_are_not_sent_before_a_fallback(arig: AgentRig) -> None:
    """--lh with a list prints "Will bind to local host" while parsing; -v then sends the
    request back to npt in-process, which prints it once."""
    r = arig.front(
        "-p", str(arig.rig.sshd.port), "-x", "-T", "3s", "-v", "--lh", "bogus.invalid,127.0.0.1"
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("Will bind to local host: 127.0.0.1") == 1, r.stderr
    banner_after_connect(int(r.stdout.strip()))
    r = arig.front(
        "-p", str(arig.rig.sshd.port), "-x", "-T", "3s", "--lh", "bogus.invalid,127.0.0.1"
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("Will bind to local host: 127.0.0.1") == 1, r.stderr


def test_the_front_imports_almost_nothing() -> None:
    """The npt console script's module stays light: no json, socket, signal, re, enum,
    asyncio (each costs milliseconds at every npt start)."""
    code = (
        "import sys; before = set(sys.modules)\n"
        "import noports.npt_front, noports.npt.agentwire\n"
        "print(' '.join(sorted(set(sys.modules) - before)))\n"
    )
    r = subprocess.run(
        [sys.executable, "-S", "-c", code],
        env={"PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    allowed = {
        "__future__", "_collections_abc", "_socket", "_stat", "_struct", "genericpath",
        "noports", "noports.npt", "noports.npt.agentwire", "noports.npt_front", "os",
        "os.path", "posixpath", "stat", "struct",
    }  # fmt: skip
    assert set(r.stdout.split()) <= allowed, set(r.stdout.split()) - allowed


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version_read_the_same(arig: AgentRig, flag: str) -> None:
    served = arig.status()["served"]
    via = arig.front(flag)
    here = arig.front(flag, env={"NOPORTS_NO_AGENT": "1"})
    assert via.returncode == here.returncode == 0, (via.stderr, here.stderr)
    assert via.stdout == here.stdout and via.stderr == here.stderr
    assert via.stdout.strip()
    assert arig.status()["served"] == served  # answered while parsing: no session


def test_a_wedged_agent_means_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An agent that accepts and never answers: the front gives up after ANSWER_TIMEOUT
    and runs npt in-process (here: the front's hand-over returns None)."""
    from noports import npt_front

    d = tmp_path / "wedged"
    d.mkdir(mode=0o700)
    path = str(d / "agent.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen()
    try:
        monkeypatch.setenv("NOPORTS_AGENT_SOCKET", path)
        monkeypatch.setattr(agentwire, "ANSWER_TIMEOUT", 0.3)
        assert npt_front._via_agent(["--help"]) is None  # (the test's timeout: no hang)
        conn, _ = srv.accept()  # it did connect and send its request
        with conn:
            conn.settimeout(5)
            assert b'"op":"npt"' in conn.recv(65536)
    finally:
        srv.close()


def test_default_socket_path() -> None:
    home = os.path.expanduser("~")
    assert agentwire.default_socket_path({"NOPORTS_AGENT_SOCKET": "/x/a.sock"}) == "/x/a.sock"
    assert (
        agentwire.default_socket_path({"XDG_RUNTIME_DIR": "/run/user/7"})
        == "/run/user/7/noports/agent.sock"
    )
    assert agentwire.default_socket_path({"XDG_RUNTIME_DIR": "relative"}) == os.path.join(
        home, ".atsign", "run", "agent.sock"
    )
    assert agentwire.default_socket_path({}) == os.path.join(home, ".atsign", "run", "agent.sock")


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to connect as another uid")
def test_agent_serves_only_its_own_uid(arig: AgentRig) -> None:
    """A socket opened up by mistake (0666 in a searchable directory): the agent still
    answers no other uid (SO_PEERCRED), while it answers us."""
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="npt-agent-", dir="/tmp"))  # pytest's tmp is 0700
    try:
        _probe_as_nobody(arig, d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _probe_as_nobody(arig: AgentRig, d: Path) -> None:
    path = str(d / "agent.sock")
    p = arig.start_agent(path)
    d.chmod(0o711)  # the agent made it 0700; "by mistake" opened up again
    os.chmod(path, 0o666)
    probe = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(sys.argv[1])\n"
        "try:\n"
        "    s.sendall(b'{\"op\":\"status\"}\\n')\n"
        "    print(repr(s.recv(65536)))\n"
        "except (BrokenPipeError, ConnectionResetError):\n"  # closed before our request
        "    print(repr(b''))\n"
    )
    r = subprocess.run(
        ["/usr/bin/python3", "-S", "-c", probe, path],
        user=65534,
        group=65534,
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
        env={},
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "b''", r.stdout  # closed without a word
    assert "refused a connection from uid 65534" in p.stderr
    assert arig.agent_cmd("status", sock=path).returncode == 0
    assert arig.agent_cmd("stop", sock=path).returncode == 0
    p.wait(10)
