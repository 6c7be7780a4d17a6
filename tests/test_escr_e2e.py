"""Our client <-> our relay <-> our daemon with ESCR relay auth, real processes: npt and
sshnp in escr mode (the default between our programs), npt over the 443 single port, and a
relay that refuses payload-mode auth (``--refuse-payload-auth``)."""

from __future__ import annotations

import json
import secrets
import socket
from collections.abc import Iterator

import pytest

from tests.fixtures_np import NpEnv
from tests.test_sshnp_rig import CHECK, RELAY_READY, Rig

pytestmark = pytest.mark.timeout(180)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EscrRig(Rig):
    """The sshnp rig with a relay that has the 443 listener and refuses payload auth."""

    def __init__(self, env: NpEnv) -> None:  # noqa: D107 - Rig's fields, another srvd
        self.env = env
        self.client = env.atsign("client")
        self.device_atsign = env.atsign("device")
        self.relay = env.atsign("relay")
        self.sshd = env.sshd()
        self.user = self.sshd.user
        self.port443 = free_port()
        self.srvd = env.spawn(
            "srvd", "-a", self.relay, "-i", "127.0.0.1", "--bind", "127.0.0.1",
            "--drain-seconds", "0", "-v", "--workers", "2", "--443", "--443-bind-port",
            str(self.port443), "--443-advertise-port", str(self.port443),
            "--refuse-payload-auth", ready=RELAY_READY, timeout=30,
        )
        self.daemons = {}


@pytest.fixture(scope="module")
def rig(at_server, tmp_path_factory) -> Iterator[EscrRig]:
    home = tmp_path_factory.mktemp("escr") / "home"
    home.mkdir(mode=0o700)
    env = NpEnv(at_server, home, secrets.token_hex(3))
    try:
        yield EscrRig(env)
    finally:
        env.close()


def _ssh_check(rig: Rig, port: int) -> None:
    out = rig.run_cmd([*rig.sshd.ssh_args(*CHECK, port=port)])
    assert out.returncode == 0 and "TEST PASSED" in out.stdout, out.stderr


def test_npt_escr_two_port_and_443(rig: EscrRig) -> None:
    rig.daemon("dev1")
    r = rig.npt("dev1", "-p", str(rig.sshd.port), "-x", "--output", "json")
    assert r.returncode == 0, r.stderr
    ev = json.loads(r.stdout)
    _ssh_check(rig, ev["port"])
    _ssh_check(rig, ev["port"])  # a second connection: its own challenges on both sides
    r = rig.npt("dev1", "-p", str(rig.sshd.port), "-x", "--443", "--output", "json")
    assert r.returncode == 0, r.stderr
    ev = json.loads(r.stdout)
    _ssh_check(rig, ev["port"])
    _ssh_check(rig, ev["port"])
    err = rig.srvd.wait_for(r"relayAuthMode escr only443 True", 10)
    assert err
    assert "relayAuthMode escr only443 False" in rig.srvd.stderr
    assert "relayAuthMode payload" not in rig.srvd.stderr
    d = rig.daemons["dev1"]
    assert "relay auth escr" in d.stderr


def test_sshnp_escr(rig: EscrRig) -> None:
    rig.daemon("dev1")
    key = ["-i", str(rig.sshd.client_key)]
    r = rig.sshnp("dev1", "-u", rig.user, *key, "-o", "BatchMode=yes", "--", "echo TEST PASSED")
    assert r.returncode == 0 and "TEST PASSED" in r.stdout, r.stderr
    r = rig.sshnp("dev1", "-u", rig.user, *key, "--443", "-o", "BatchMode=yes", "--",
                  "echo TEST PASSED")
    assert r.returncode == 0 and "TEST PASSED" in r.stdout, r.stderr


def test_payload_mode_is_refused_by_this_relay(rig: EscrRig) -> None:
    rig.daemon("dev1")
    r = rig.npt("dev1", "-p", str(rig.sshd.port), "-x", "--ram", "payload", timeout=60)
    assert r.returncode != 0
    assert "refuse-payload-auth" in r.stderr, r.stderr
    r = rig.npt("dev1", "-p", str(rig.sshd.port), "-x", "--443", "--ram", "payload")
    assert r.returncode == 2 and "--443 needs escr" in r.stderr, r.stderr
