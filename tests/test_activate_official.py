"""``at_activate`` as the official docs use it, run as real processes against the embedded
server: the bare ``at_activate -a @x`` form with the secret typed at a terminal prompt, the
official long option names, ``status`` exit codes, ``spp``, ``list`` header, ``fetch``,
regex selection, ``unrevoke``, ``delete`` and ``auto``."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from noports.cli.activate_steps import dart_str, expiry_ms
from noports.cli.at_activate import normalise_argv
from noports.crypto.atkeys import AtKeys
from noports.errors import ConfigError
from tests.fixtures_at import REPO, AtServerProcess
from tests.test_activate_apkam import Owner
from tests.test_activate_onboard import cli, cli_env, new_atsign

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def owner(at_server: AtServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Owner:
    atsign = new_atsign("off")
    secret = at_server.add(atsign)
    assert secret
    home = tmp_path_factory.mktemp("offowner") / "home"
    env = cli_env(at_server, home, AT_ACTIVATE_SECRET=secret)
    p = cli(env, "-a", atsign)  # the bare official form means "onboard"
    assert p.returncode == 0, p.stderr
    env.pop("AT_ACTIVATE_SECRET")
    return Owner(atsign, env, home / ".atsign" / "keys" / f"{atsign}_key.atKeys", at_server)


def _read_until(fd: int, needle: bytes, timeout: float = 20.0) -> bytes:
    buf = b""
    end = time.monotonic() + timeout
    while needle not in buf:
        left = end - time.monotonic()
        assert left > 0, f"no {needle!r} in {buf!r}"
        r, _, _ = select.select([fd], [], [], left)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
    return buf


def _on_terminal(env: dict[str, str], args: list[str], answer: str) -> tuple[int, bytes]:
    """Run at_activate with a pseudo-terminal as its controlling tty; type ``answer``."""
    pid, fd = pty.fork()
    if pid == 0:  # child
        os.chdir(str(REPO))
        os.execve(sys.executable, [sys.executable, "-m", "noports.cli.at_activate", *args], env)
    try:
        seen = _read_until(fd, b": ")
        os.write(fd, answer.encode() + b"\n")
        rest = b""
        end = time.monotonic() + 30
        while time.monotonic() < end:
            r, _, _ = select.select([fd], [], [], 0.5)
            if r:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                rest += chunk
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status), seen + rest
        for _ in range(100):  # the terminal closed: the child is exiting
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status), seen + rest
            time.sleep(0.1)
        raise AssertionError(f"at_activate did not finish: {seen + rest!r}")
    finally:
        os.close(fd)
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def test_bare_form_prompts_for_the_secret_without_echo(
    at_server: AtServerProcess, tmp_path: Path
) -> None:
    atsign = new_atsign("tty")
    secret = at_server.add(atsign)
    assert secret
    home = tmp_path / "home"
    env = cli_env(at_server, home)
    rc, out = _on_terminal(env, ["-a", atsign], secret)
    assert b"Activation secret" in out
    assert secret.encode() not in out  # not echoed
    assert rc == 0, out
    keys = AtKeys.load(home / ".atsign" / "keys" / f"{atsign}_key.atKeys", strict_mode=True)
    assert keys.atsign == atsign
    # without a terminal there is no prompt: one precise line instead
    p = cli(env, "-a", new_atsign("notty"), stdin="")
    assert p.returncode == 2 and "run on a terminal to be asked" in p.stderr


def test_status_exit_codes(owner: Owner, at_server: AtServerProcess, tmp_path: Path) -> None:
    p = owner.cli("status")
    assert p.returncode == 0 and f"returning 0: found public:publickey{owner.atsign} OK" in p.stderr
    p = cli(owner.env, "status", "-a", new_atsign("nobody"))
    assert p.returncode == 3 and "returning 3: atDirectory has no record for" in p.stderr
    fresh = new_atsign("fresh")
    assert at_server.add(fresh)  # known to the root, never activated: no publickey
    p = cli(owner.env, "status", "-a", fresh)
    assert p.returncode == 1 and p.stderr.startswith("returning 1: "), p.stderr
    p = cli(owner.env, "status", "-a", owner.atsign, "--rootServer", "127.0.0.1:1")
    assert p.returncode == 4 and p.stderr.startswith("returning 4: Caught "), p.stderr


def _enroll_bg(owner: Owner, keys_file: Path, passcode: str, app: str, device: str
               ) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "noports.cli.at_activate", "enroll", "--atsign", owner.atsign,
            "--passcode", passcode, "--app", app, "--device", device,
            "--namespaces", '"sshnp":"rw"', "--keys", str(keys_file), "--expiry", "7d",
            "--rootServer", owner.srv.root, "--poll-interval", "0.2", "--wait-timeout", "40"]
    return subprocess.Popen(args, env=owner.env, cwd=str(REPO), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _enrollment_id(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    r, _, _ = select.select([proc.stdout], [], [], 20)
    assert r, "enroll printed nothing"
    line = proc.stdout.readline()
    if not line:
        proc.wait(10)
        assert proc.stderr is not None
        raise AssertionError(proc.stderr.read())
    assert line.startswith("Enrollment ID: "), line
    return line.split(": ", 1)[1].strip()


def test_spp_enroll_list_fetch_revoke_unrevoke_delete(owner: Owner, tmp_path: Path) -> None:
    p = owner.cli("spp", "-s", "bad!")
    assert p.returncode == 2 and "SPP must be alphanumeric and 6 to 16 characters" in p.stderr
    p = owner.cli("spp", "--spp", "Abc123xyz", "-e", "1h")
    assert p.returncode == 0 and p.stdout.startswith("Server response: data:"), p.stderr
    keys_file = tmp_path / "spp.atKeys"
    e = _enroll_bg(owner, keys_file, "Abc123xyz", "offapp", "offdev")
    eid = _enrollment_id(e)
    p = owner.cli("list", "--enrollmentStatus", "pending", "--arx", "^offapp$")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "Found 1 matching enrollment records"
    assert lines[1] == ("Enrollment ID".ljust(38) + "Status".ljust(10) + "AppName".ljust(20)
                        + "DeviceName".ljust(38) + "Namespaces")
    assert lines[2] == (eid.ljust(38) + "pending".ljust(10) + "offapp".ljust(20)
                        + "offdev".ljust(38) + "{sshnp: rw}")
    p = owner.cli("approve", "-D", "^offdev$")  # selected by device regex
    assert p.returncode == 0, p.stderr
    assert f'Approving enrollmentId {eid} with appName "offapp" and deviceName "offdev"' \
        in p.stdout
    out, err = e.communicate(timeout=40)
    assert e.returncode == 0, err
    assert AtKeys.load(keys_file).enrollment_id == eid
    p = owner.cli("fetch", "--enrollmentId", eid)
    assert p.returncode == 0 and p.stdout.startswith("Fetched enrollment OK: {appName: offapp")
    assert "status: approved" in p.stdout
    p = owner.cli("approve", "-A", "^no-such-app$")
    assert p.returncode == 4 and "No matching enrollment(s) found" in p.stderr
    p = owner.cli("delete", "-i", eid)  # approved: refused
    assert p.returncode != 0 and "AT0030" in p.stderr
    p = owner.cli("revoke", "-A", "^offapp$")
    assert p.returncode == 0 and f"Revoking enrollmentId {eid}" in p.stdout, p.stderr
    p = owner.cli("unrevoke", "-i", eid)
    assert p.returncode == 0 and f"Un-Revoking enrollmentId {eid}" in p.stdout, p.stderr
    assert '"status":"approved"' in p.stdout
    assert owner.cli("revoke", "-i", eid).returncode == 0
    p = owner.cli("delete", "-i", eid)
    assert p.returncode == 0 and "Sending delete request" in p.stdout, p.stderr
    p = owner.cli("fetch", "-i", eid)
    assert p.returncode == 4, p.stderr


def test_auto_approves_matching_requests_then_stops(owner: Owner, tmp_path: Path) -> None:
    p = owner.cli("revoke")
    assert p.returncode == 2 and "at least one of -i/--enrollmentId" in p.stderr
    auto = subprocess.Popen(
        [sys.executable, "-m", "noports.cli.at_activate", "auto", "-a", owner.atsign,
         "-A", "^autoapp$", "--limit", "1"],
        env=owner.env, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert auto.stdout is not None
        r, _, _ = select.select([auto.stdout], [], [], 20)
        assert r and auto.stdout.readline().strip() == "Listening for new enrollment requests"
        other = _enroll_bg(owner, tmp_path / "other.atKeys", owner.otp(), "otherapp", "d1")
        other_id = _enrollment_id(other)
        e = _enroll_bg(owner, tmp_path / "auto.atKeys", owner.otp(), "autoapp", "d2")
        eid = _enrollment_id(e)
        out, err = auto.communicate(timeout=40)
        assert auto.returncode == 0, err
        assert "Ignoring enrollment request" in out and other_id not in out.split("Approving")[-1]
        assert f'Got enrollment request ID {eid} with appName "autoapp"' in out
        assert "Approved 1 requests - limit was 1 - done." in out
        assert e.wait(40) == 0
        assert other.poll() is None  # still pending: not approved
        assert owner.cli("deny", "-i", other_id).returncode == 0
        assert other.wait(40) == 3
    finally:
        if auto.poll() is None:
            auto.kill()
            auto.wait(5)


def test_interactive_is_named_not_unknown(tmp_path: Path, at_server: AtServerProcess) -> None:
    p = cli(cli_env(at_server, tmp_path / "home"), "interactive", "-a", "@x")
    assert p.returncode == 2 and "interactive mode is not provided" in p.stderr


def test_helpers() -> None:
    assert normalise_argv(["-a", "@x"]) == ["onboard", "-a", "@x"]
    assert normalise_argv(["--help"]) == ["--help"]
    assert normalise_argv(["list", "-a", "@x"]) == ["list", "-a", "@x"]
    assert expiry_ms("2d,1h,10m,20s,999ms") == ((2 * 24 + 1) * 3600 + 620) * 1000 + 999
    assert expiry_ms("0ms") is None and expiry_ms(None) is None
    with pytest.raises(ConfigError):
        expiry_ms("soon")
    assert dart_str({"a": {"sshnp": "rw"}, "b": None, "c": [1, True]}) == \
        "{a: {sshnp: rw}, b: null, c: [1, true]}"


def test_pass_phrase_protected_keys(at_server: AtServerProcess, tmp_path: Path) -> None:
    atsign = new_atsign("pp")
    secret = at_server.add(atsign)
    assert secret
    env = cli_env(at_server, tmp_path / "home", AT_ACTIVATE_SECRET=secret,
                  AT_ACTIVATE_PASS_PHRASE="a long pass phrase")
    keys_file = tmp_path / "home" / ".atsign" / "keys" / f"{atsign}_key.atKeys"
    p = cli(env, "-a", atsign, "--hashingAlgoType", "argon2id")
    assert p.returncode == 0, p.stderr
    assert set(json.loads(keys_file.read_text())) == {"content", "iv", "hashingAlgoType"}
    env.pop("AT_ACTIVATE_SECRET")
    assert cli(env, "otp", "-a", atsign).returncode == 0  # opened with the pass phrase
    env.pop("AT_ACTIVATE_PASS_PHRASE")
    p = cli(env, "otp", "-a", atsign)
    assert p.returncode == 3 and "protected by a pass phrase" in p.stderr
    p = cli(env, "otp", "-a", atsign, "-P", "not the pass phrase")
    assert p.returncode == 3 and "wrong pass phrase" in p.stderr
    keys = AtKeys.load(keys_file, atsign, pass_phrase="a long pass phrase")
    assert keys.atsign == atsign


def test_another_atsigns_keys_get_a_precise_answer(
    owner: Owner, at_server: AtServerProcess, tmp_path: Path
) -> None:
    other = new_atsign("other")
    assert at_server.add(other)
    copy = tmp_path / "copy.atKeys"
    copy.write_bytes(owner.keys_file.read_bytes())
    copy.chmod(0o600)
    p = cli(owner.env, "otp", "-a", other, "-k", str(copy))
    assert p.returncode == 3, p.stderr
    assert f"the atServer of {other} does not know enrollment" in p.stderr
    assert "belong to another atSign" in p.stderr
