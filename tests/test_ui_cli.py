"""``noports ui`` as a program: loopback only, login link, the second instance finds the first,
a busy port is one line, SIGTERM stops it and removes its state file (issue 13)."""

from __future__ import annotations

import json
import re
import signal
import socket
import urllib.error
import urllib.request

import pytest

pytest.importorskip("aiohttp")

pytestmark = pytest.mark.timeout(90)
LOGIN = r"noports ui: open (http://127\.0\.0\.1:(\d+)/login\?token=(\S+))"


def test_bind_must_be_loopback(np_env) -> None:
    for bind in ("0.0.0.0", "192.0.2.1", "example.com"):
        r = np_env.run("noports", "ui", "--bind", bind, "--no-browser")
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip().splitlines() == [
            f"noports ui: error: --bind {bind!r} is not a loopback address; the UI serves "
            "loopback only"
        ]


def test_login_second_instance_busy_port_and_stop(np_env, tmp_path) -> None:
    home = tmp_path / "uihome"
    home.mkdir(mode=0o700)
    env = {"HOME": str(home)}
    p = np_env.spawn("noports", "ui", "--no-browser", "--port", "0", env=env, ready=LOGIN)
    url, port, token = re.search(LOGIN, p.stdout).groups()
    state = home / ".config" / "noports" / "ui.json"
    assert state.stat().st_mode & 0o777 == 0o600
    st = json.loads(state.read_text())
    assert st["port"] == int(port) and st["pid"] == p.pid
    assert token not in state.read_text() and st["api_secret"] not in p.stdout + p.stderr
    # the link signs a browser in once
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    with opener.open(url, timeout=10) as resp:
        assert resp.status == 200 and "atSigns" in resp.read().decode()
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url, timeout=10)
    assert err.value.code == 403
    # a second `noports ui` does not start a server: it hands out a fresh link to the first
    r = np_env.run("noports", "ui", "--no-browser", env=env, timeout=30)
    assert r.returncode == 0, r.stderr
    assert f"already running (pid {p.pid})" in r.stdout
    url2 = re.search(LOGIN, r.stdout).group(1)
    assert url2 != url and f":{port}/" in url2
    with opener.open(url2, timeout=10) as resp:
        assert resp.status == 200
    # a port in use: one line, usage exit code (a different HOME: no running instance there)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        other = tmp_path / "other"
        other.mkdir()
        r = np_env.run("noports", "ui", "--no-browser", "--port", str(busy),
                       env={"HOME": str(other)}, timeout=30)  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith(
        f"noports ui: error: cannot listen on 127.0.0.1:{busy}"
    )
    # SIGTERM with a browser's event stream open: the stream ends, the server stops
    stream = opener.open(f"http://127.0.0.1:{port}/events", timeout=30)
    assert stream.headers["Content-Type"] == "text/event-stream"
    p.signal(signal.SIGTERM)
    assert p.wait(15) == 0
    stream.close()
    assert not state.exists()


def test_install_service_writes_a_user_unit(np_env, tmp_path) -> None:
    home = tmp_path / "svc"
    home.mkdir()
    r = np_env.run("noports", "ui", "--install-service", "--port", "8799", env={"HOME": str(home)})
    assert r.returncode == 0, r.stderr
    unit = (home / ".config" / "systemd" / "user" / "noports-ui.service").read_text()
    assert "-m noports.cli.noports ui --no-browser --port 8799 --bind 127.0.0.1" in unit
    assert "WantedBy=default.target" in unit and "systemctl --user enable" in r.stdout
    r = np_env.run("noports", "ui", "--install-service", "--port", "0", env={"HOME": str(home)})
    assert r.returncode == 2


def test_core_stays_lean(np_env) -> None:
    """The umbrella command and the profile layer do not import the web stack."""
    code = (
        "import sys, noports.cli.noports, noports.profiles, noports.profiles.store, "
        "noports.profiles.runner, noports.cli.ui\n"
        "heavy = {'aiohttp', 'jinja2', 'yaml'} & set(sys.modules)\n"
        "print(sorted(heavy))"
    )
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", code], env=np_env.env, capture_output=True,
                       text=True, timeout=30)  # fmt: skip
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_ipv6_loopback_bind(np_env, tmp_path) -> None:
    """--bind ::1: the login link and the second instance use [::1], not 127.0.0.1."""
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    home = tmp_path / "v6"
    home.mkdir(mode=0o700)
    env = {"HOME": str(home)}
    rx = r"noports ui: open (http://\[::1\]:(\d+)/login\?token=\S+)"
    p = np_env.spawn("noports", "ui", "--no-browser", "--port", "0", "--bind", "::1", env=env,
                     ready=rx)  # fmt: skip
    url = re.search(rx, p.stdout).group(1)
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    with opener.open(url, timeout=10) as resp:
        assert resp.status == 200
    r = np_env.run("noports", "ui", "--no-browser", env=env, timeout=30)
    assert r.returncode == 0 and re.search(rx, r.stdout), r.stdout + r.stderr
    p.signal(signal.SIGTERM)
    assert p.wait(15) == 0
