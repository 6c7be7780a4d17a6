"""APKAM with real ``at_activate`` processes on the real embedded server: OTP, enroll in the
background, list / approve / deny / revoke, and what the enrolled device can then do."""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from noports.at.client import AtClient
from noports.at.connection import connect_authenticated
from noports.crypto.atkeys import AtKeys
from noports.errors import ApkamRevokedError, AtError, ClientAuthFailedError
from tests.fixtures_at import REPO, AtServerProcess
from tests.test_activate_onboard import arun, cli, cli_env, mode, new_atsign, one_line_error

pytestmark = pytest.mark.timeout(90)


@dataclass
class Owner:
    atsign: str
    env: dict[str, str]
    keys_file: Path
    srv: AtServerProcess

    def cli(self, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return cli(self.env, args[0], "-a", self.atsign, *args[1:], **kw)  # type: ignore[arg-type]

    def otp(self) -> str:
        p = self.cli("otp", "--output", "json")
        assert p.returncode == 0, p.stderr
        code = json.loads(p.stdout)["otp"]
        assert len(code) >= 6 and "0" not in code and "O" not in code
        return str(code)

    async def client(self, keys: AtKeys) -> AtClient:
        return await AtClient.connect(self.atsign, keys=keys, root=self.srv.root,
                                      ca_file=self.srv.ca_file)


@pytest.fixture(scope="module")
def owner(at_server: AtServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Owner:
    """An atSign activated with ``at_activate onboard`` (its first, __manage device)."""
    atsign = new_atsign("apk")
    secret = at_server.add(atsign)
    assert secret
    home = tmp_path_factory.mktemp("owner") / "home"
    env = cli_env(at_server, home, AT_ACTIVATE_SECRET=secret)
    p = cli(env, "onboard", "-a", atsign)
    assert p.returncode == 0, p.stderr
    env.pop("AT_ACTIVATE_SECRET")
    return Owner(atsign, env, home / ".atsign" / "keys" / f"{atsign}_key.atKeys", at_server)


class Enroller:
    """``at_activate enroll`` running in the background."""

    def __init__(self, owner: Owner, keys_file: Path, otp: str, *extra: str) -> None:
        args = [sys.executable, "-m", "noports.cli.at_activate", "enroll", "-a", owner.atsign,
                "-p", "sshnp", "-d", "dev1", "-n", "sshnp:rw,sshrvd:rw", "-k", str(keys_file),
                "--poll-interval", "0.2", "--wait-timeout", "40", "--output", "json", *extra]
        env = dict(owner.env, AT_ACTIVATE_OTP=otp)
        self.proc = subprocess.Popen(args, env=env, cwd=str(REPO), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)

    def first_line(self, timeout: float = 20.0) -> dict[str, object]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, "enroll printed nothing"
        line = self.proc.stdout.readline()
        assert line, f"enroll exited early: {self.proc.stderr.read() if self.proc.stderr else ''}"
        return dict(json.loads(line))

    def finish(self, timeout: float = 30.0) -> tuple[int, str, str]:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode, out, err


@pytest.fixture
def enrollers() -> Iterator[Callable[..., Enroller]]:
    made: list[Enroller] = []

    def make(*a: object) -> Enroller:
        e = Enroller(*a)  # type: ignore[arg-type]
        made.append(e)
        return e

    yield make
    for e in made:
        if e.proc.poll() is None:
            e.proc.kill()
            e.proc.wait(5)


def enroll_and_approve(owner: Owner, make: Callable[..., Enroller], keys_file: Path) -> str:
    e = make(owner, keys_file, owner.otp())
    eid = str(e.first_line()["enrollmentId"])
    p = owner.cli("approve", "-i", eid, "--output", "json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"enrollmentId": eid, "status": "approved",
                                    "namespaces": {"sshnp": "rw", "sshrvd": "rw"}}
    rc, out, err = e.finish()
    assert rc == 0, err
    assert json.loads(out.splitlines()[-1]) == {"enrollmentId": eid, "status": "approved",
                                                "keysFile": str(keys_file)}
    return eid


# ---------------------------------------------------------------------------------------


def test_enroll_list_approve_then_device_reads_shared_data(
    owner: Owner, at_server: AtServerProcess, enrollers: Callable[..., Enroller],
    keys: Callable[[str], AtKeys], tmp_path: Path
) -> None:
    # data the first device and another atSign wrote before the new device existed
    first = AtKeys.load(owner.keys_file)
    bob_keys = keys("@activate_bob")
    at_server.add(bob_keys.atsign, keys=bob_keys)

    async def write() -> None:
        async with await owner.client(first) as c:
            await c.put("motd.sshnp", "self data from the first device")
        async with await AtClient.connect(bob_keys.atsign, keys=bob_keys, root=at_server.root,
                                          ca_file=at_server.ca_file) as bob:
            await bob.put("hello.sshnp", "for alice's devices", shared_with=owner.atsign)

    arun(write())

    keys_file = tmp_path / "dev" / "dev1.atKeys"
    e = enrollers(owner, keys_file, owner.otp())
    pending = e.first_line()
    eid = str(pending["enrollmentId"])
    assert pending["status"] == "pending"
    p = owner.cli("list", "--status", "pending", "--output", "json")
    assert p.returncode == 0, p.stderr
    listed = [x for x in json.loads(p.stdout) if x["enrollmentId"] == eid]
    assert listed == [{"enrollmentId": eid, "appName": "sshnp", "deviceName": "dev1",
                       "namespaces": {"sshnp": "rw", "sshrvd": "rw"}, "status": "pending"}]
    assert e.proc.poll() is None  # still waiting
    p = owner.cli("approve", "-i", eid)
    assert p.returncode == 0 and f"Approving enrollmentId {eid}" in p.stdout, p.stderr
    rc, out, err = e.finish()
    assert rc == 0, err
    assert json.loads(out.splitlines()[-1])["keysFile"] == str(keys_file)
    assert mode(keys_file) == 0o600 and mode(keys_file.parent) == 0o700

    dev = AtKeys.load(keys_file, strict_mode=True)
    assert dev.enrollment_id == eid and dev.atsign == owner.atsign
    assert dev.encrypt_public_b64 == first.encrypt_public_b64
    assert dev.self_encryption_key == first.self_encryption_key
    assert dev.pkam_public_b64 != first.pkam_public_b64  # its own APKAM key
    async def device() -> None:
        async with await owner.client(dev) as d:
            assert await d.get("motd.sshnp") == "self data from the first device"
            assert await d.get("hello.sshnp", shared_by=bob_keys.atsign) == "for alice's devices"
            await d.put("ok.sshrvd", "inside the enrolled namespaces")
            with pytest.raises(AtError) as refused:  # outside sshnp/sshrvd
                await d.put("x.other_ns", "nope")
            assert refused.value.code == "AT0009"
        async with await owner.client(first) as c:  # the first device (*:rw) may
            await c.put("x.other_ns", "fine")

    arun(device())
    # the device cannot manage: no OTPs, no listing
    dev_env = dict(owner.env)
    p = cli(dev_env, "otp", "-a", owner.atsign, "-k", str(keys_file))
    assert p.returncode == 3 and "AT0009" in one_line_error(p)
    p = owner.cli("list", "--status", "approved", "--output", "json")
    assert eid in [x["enrollmentId"] for x in json.loads(p.stdout)]
    p = owner.cli("list")
    assert p.returncode == 0 and eid in p.stdout and "approved" in p.stdout


def test_deny_ends_the_enroller_with_a_reason(
    owner: Owner, enrollers: Callable[..., Enroller], tmp_path: Path
) -> None:
    keys_file = tmp_path / "denied.atKeys"
    e = enrollers(owner, keys_file, owner.otp())
    eid = str(e.first_line()["enrollmentId"])
    p = owner.cli("deny", "-i", eid, "--output", "json")
    assert p.returncode == 0 and json.loads(p.stdout)["status"] == "denied", p.stderr
    rc, _, err = e.finish()
    assert rc == 3
    assert "denied" in one_line_error(e_result(err))
    assert not keys_file.exists()
    p = owner.cli("approve", "-i", eid)  # too late
    assert p.returncode != 0 and "denied" in one_line_error(p)


def e_result(stderr: str) -> subprocess.CompletedProcess[str]:
    return subprocess.CompletedProcess([], 0, "", stderr)


def test_revoke_locks_the_device_out(
    owner: Owner, enrollers: Callable[..., Enroller], tmp_path: Path
) -> None:
    keys_file = tmp_path / "rev.atKeys"
    eid = enroll_and_approve(owner, enrollers, keys_file)
    dev = AtKeys.load(keys_file)
    async def login() -> None:
        conn = await connect_authenticated(dev, root=owner.srv.root, ca_file=owner.srv.ca_file)
        await conn.close()

    arun(login())
    p = owner.cli("revoke", "-i", eid)
    assert p.returncode == 0 and "revoked" in p.stdout, p.stderr
    with pytest.raises(ApkamRevokedError):
        arun(login())
    p = owner.cli("list", "--status", "revoked", "--output", "json")
    assert eid in [x["enrollmentId"] for x in json.loads(p.stdout)]
    # our own enrollment is protected unless --force
    own = AtKeys.load(owner.keys_file).enrollment_id
    assert own
    p = owner.cli("revoke", "-i", own)
    assert p.returncode != 0 and "AT0031" in one_line_error(p)
    # revoking twice / unknown ids are clear errors
    p = owner.cli("revoke", "-i", eid)
    assert p.returncode != 0 and "AT0030" in one_line_error(p)
    p = owner.cli("approve", "-i", "0b0e7c8e-0000-4000-8000-000000000000")
    assert p.returncode == 4 and "no enrollment" in one_line_error(p)


def test_bad_and_reused_otp_are_refused(owner: Owner, tmp_path: Path) -> None:
    env = dict(owner.env)
    base = ["enroll", "-a", owner.atsign, "-p", "sshnp", "-d", "dev9", "-n", "sshnp:rw",
            "-k", str(tmp_path / "x.atKeys"), "--wait-timeout", "1", "--poll-interval", "0.2",
            "--output", "json"]
    t0 = time.monotonic()
    p = cli(env, *base, "--otp", "WRONG1")
    assert p.returncode == 3 and "refused the OTP" in one_line_error(p)
    assert time.monotonic() - t0 < 20
    code = owner.otp()
    p = cli(env, *base, "--otp", code)  # accepted, then times out waiting (nobody approves)
    assert p.returncode == 5 and "not approved within" in one_line_error(p), p.stderr
    assert json.loads(p.stdout.splitlines()[0])["status"] == "pending"
    p = cli(env, *base, "--otp", code)  # single use
    assert p.returncode == 3 and "refused the OTP" in one_line_error(p)
    assert not (tmp_path / "x.atKeys").exists()


def test_enroll_refuses_existing_keys_file_before_requesting(owner: Owner, tmp_path: Path) -> None:
    target = tmp_path / "exists.atKeys"
    target.write_text("keep")
    before = owner.cli("list", "--output", "json")
    p = cli(dict(owner.env, AT_ACTIVATE_OTP="ABCDEF"), "enroll", "-a", owner.atsign, "-p", "a",
            "-d", "d", "-n", "sshnp:rw", "-k", str(target))
    assert p.returncode == 2 and "already exists" in one_line_error(p)
    assert target.read_text() == "keep"
    after = owner.cli("list", "--output", "json")
    assert len(json.loads(after.stdout)) == len(json.loads(before.stdout))


def test_manager_refuses_wrong_keys(owner: Owner, tmp_path: Path,
                                    keys: Callable[[str], AtKeys]) -> None:
    stranger = keys("@activate_stranger").replace(atsign=owner.atsign)  # wrong pair
    path = stranger.save(tmp_path / "wrong.atKeys")
    p = cli(dict(owner.env), "list", "-a", owner.atsign, "-k", str(path))
    assert p.returncode == 3 and "AT0401" in one_line_error(p)
    loose = tmp_path / "loose.atKeys"
    loose.write_bytes(owner.keys_file.read_bytes())
    loose.chmod(0o644)
    p = cli(dict(owner.env), "list", "-a", owner.atsign, "-k", str(loose))
    assert p.returncode == 3 and "0644" in one_line_error(p)

    async def login() -> None:
        conn = await connect_authenticated(AtKeys.load(path), root=owner.srv.root,
                                           ca_file=owner.srv.ca_file)
        await conn.close()

    with pytest.raises(ClientAuthFailedError):
        arun(login())


def test_enroller_survives_a_server_restart(
    make_at_server: Callable[..., AtServerProcess], enrollers: Callable[..., Enroller],
    tmp_path: Path
) -> None:
    """The pending request lives in the server's store: the waiting enroller reconnects."""
    srv = make_at_server()
    atsign = new_atsign("rst")
    secret = srv.add(atsign)
    assert secret
    home = tmp_path / "home"
    env = cli_env(srv, home, AT_ACTIVATE_SECRET=secret)
    assert cli(env, "onboard", "-a", atsign).returncode == 0
    env.pop("AT_ACTIVATE_SECRET")
    own = Owner(atsign, env, home / ".atsign" / "keys" / f"{atsign}_key.atKeys", srv)
    keys_file = tmp_path / "after_restart.atKeys"
    e = enrollers(own, keys_file, own.otp())
    eid = str(e.first_line()["enrollmentId"])
    srv.restart()
    time.sleep(0.5)  # the enroller sees the connection drop while the server is back
    assert e.proc.poll() is None
    p = own.cli("approve", "-i", eid)
    assert p.returncode == 0, p.stderr
    rc, out, err = e.finish()
    assert rc == 0, err
    assert AtKeys.load(keys_file).enrollment_id == eid
    # --force revokes even the enrollment we are connected with; afterwards it is locked out
    own_eid = AtKeys.load(own.keys_file).enrollment_id
    assert own_eid
    p = own.cli("revoke", "-i", own_eid, "--force", "--output", "json")
    assert p.returncode == 0 and json.loads(p.stdout)["status"] == "revoked", p.stderr
    p = own.cli("list")
    assert p.returncode == 3 and "revoked" in one_line_error(p)
