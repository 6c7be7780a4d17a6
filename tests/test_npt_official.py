"""npt's official flags: ``--lh`` lists (first usable address, the official error and exit 1
when none is), ``-H/--heartbeat`` (sent on the control channel of a real session to our real
daemon, which must keep the tunnel up), and the parser living in ``noports.cli.npt``."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest

from noports.cli import npt as npt_cli
from tests.test_sshnp_rig import Rig, module_rig

pytestmark = pytest.mark.timeout(120)
BASE = ["-f", "@alice", "-t", "@bob", "-r", "@relay", "-d", "dev1", "-p", "22"]


@pytest.fixture(scope="module")
def rig(at_server, tmp_path_factory) -> Iterator[Rig]:
    yield from module_rig(at_server, tmp_path_factory)


def test_local_host_lists_and_heartbeat_parsing() -> None:
    assert npt_cli.resolve_local_host("no-such-host.invalid, 127.0.0.3") == "127.0.0.3"
    assert npt_cli.resolve_local_host("0") == "0.0.0.0"
    assert npt_cli.resolve_local_host("localhost") == "127.0.0.1"
    with pytest.raises(npt_cli.NoLocalHostError, match="No valid IP addresses found in: a.invalid"):
        npt_cli.resolve_local_host("a.invalid")
    a = npt_cli.parse([*BASE])
    assert a.heartbeat_s == 300 and a.bind_host == "127.0.0.1"  # 5 min, as official since 5.14.5
    assert npt_cli.parse([*BASE, "-H", "0"]).heartbeat_s is None
    assert npt_cli.parse([*BASE, "--heartbeat", "1m,30s"]).heartbeat_s == 90
    with pytest.raises(SystemExit) as e:
        npt_cli.parse([*BASE, "-H", "often"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        npt_cli.parse([*BASE, "--lh", "x.invalid,y.invalid"])
    assert e.value.code == 1


def test_heartbeats_and_local_host_list_on_a_real_tunnel(rig: Rig) -> None:
    rig.daemon("dev1")
    r = rig.npt("dev1", "-p", str(rig.sshd.port), "--lh", "no-such-host.invalid,127.0.0.4",
                "-H", "1s", "-T", "30s", "-x", "--output", "json")
    assert r.returncode == 0, r.stderr
    assert "Will bind to local host: 127.0.0.4" in r.stderr
    ev = json.loads(r.stdout)
    assert ev["host"] == "127.0.0.4"
    time.sleep(3.5)  # three heartbeats go to the daemon; the tunnel must still work
    with socket.create_connection(("127.0.0.4", ev["port"]), timeout=10) as s:
        s.settimeout(10)
        assert s.recv(8).startswith(b"SSH-")
    r = rig.npt("dev1", "-p", str(rig.sshd.port), "--lh", "nope.invalid", "-x")
    assert r.returncode == 1 and r.stderr.strip() == \
        "Error: No valid IP addresses found in: nope.invalid"


def test_no_answer_is_explained(rig: Rig) -> None:
    """Wrong device name, daemon down, not a manager: told apart by what the daemon shares."""
    rig.daemon("dev1")
    rig.daemon("devdown").stop()
    r = rig.npt("devx", "-p", str(rig.sshd.port), "--dpt", "2", "-x")
    assert r.returncode == 4, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "has no device 'devx'" in last and "wrong -d?" in last and "dev1" in last, last
    r = rig.sshnp("devdown", "--dpt", "2", "-x")
    assert r.returncode == 5, r.stderr
    assert "its daemon is probably not running" in r.stderr.strip().splitlines()[-1]
    stranger = rig.env.atsign("stranger2")
    r = rig.npt("dev1", "-p", str(rig.sshd.port), "--dpt", "2", "-x", frm=stranger)
    assert r.returncode == 5, r.stderr
    assert "probably not in the daemon's managers list" in r.stderr.strip().splitlines()[-1]


def test_busy_local_port_is_refused_before_any_network_step() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(SystemExit) as e:
            npt_cli.parse([*BASE, "-l", str(port)])
    assert e.value.code == 2


def test_password_protected_client_keys(rig: Rig, tmp_path) -> None:
    from noports.crypto.atkeys import AtKeys

    rig.daemon("dev1")
    plain = rig.env.home / ".atsign" / "keys" / f"{rig.client}_key.atKeys"
    protected = tmp_path / "client.atKeys"
    AtKeys.load(plain).save(protected, pass_phrase="client pass phrase")
    args = [*rig.base("dev1"), "-p", str(rig.sshd.port), "-k", str(protected), "-x"]
    r = rig.env.run("npt", *args, env={"NOPORTS_NPT_PASS_PHRASE": "client pass phrase"})
    assert r.returncode == 0, r.stderr
    with socket.create_connection(("127.0.0.1", int(r.stdout.strip())), timeout=10) as s:
        s.settimeout(10)
        assert s.recv(8).startswith(b"SSH-")
    r = rig.env.run("sshnp", *rig.base("dev1"), "-k", str(protected), "-x")
    assert r.returncode == 3 and "protected by a pass phrase" in r.stderr, r.stderr
