"""``at_activate onboard`` as a real subprocess against the real embedded server (T6 hygiene).

The secret comes from ``noports server add``; each test uses a fresh atSign and a fresh HOME.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from noports.at.connection import connect_atserver, connect_authenticated
from noports.at.onboard import parse_namespaces
from noports.crypto import rsa
from noports.crypto.atkeys import AtKeys
from noports.errors import ClientAuthFailedError, ConfigError
from tests.fixtures_at import REPO, AtServerProcess

pytestmark = pytest.mark.timeout(60)


def cli_env(srv: AtServerProcess, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NOPORTS_", "AT_ACTIVATE_"))}
    env.update(srv.env)
    env["HOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def cli(env: dict[str, str], *args: str, timeout: float = 30.0, umask: int | None = None,
        stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``at_activate`` as a child process (exactly what a user runs)."""
    pre = (lambda: os.umask(umask)) if umask is not None else None  # noqa: E731
    return subprocess.run([sys.executable, "-m", "noports.cli.at_activate", *args], env=env,
                          cwd=str(REPO), capture_output=True, text=True, timeout=timeout,
                          preexec_fn=pre, input=stdin)


def arun(coro: Coroutine[Any, Any, Any], timeout: float = 20.0) -> Any:
    async def guarded() -> Any:
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(guarded())


def new_atsign(prefix: str = "ob") -> str:
    return f"@{prefix}_{uuid.uuid4().hex[:10]}"


def mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    progress = ("[Information] ", "Submitting enrollment request", "Waiting for approval")
    lines = [ln for ln in proc.stderr.splitlines()
             if ln.strip() and "warning:" not in ln and not ln.startswith(progress)]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("at_activate: error: "), proc.stderr
    return lines[0]


# ---------------------------------------------------------------------------------------


def test_onboard_env_secret_publishes_key_and_consumes_secret(
    at_server: AtServerProcess, tmp_path: Path
) -> None:
    atsign = new_atsign()
    secret = at_server.add(atsign)
    assert secret
    env = cli_env(at_server, tmp_path / "home", AT_ACTIVATE_SECRET=secret)
    p = cli(env, "onboard", "-a", atsign, "--device-name", "laptop", "--debug", "--output", "json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    keys_file = tmp_path / "home" / ".atsign" / "keys" / f"{atsign}_key.atKeys"
    assert out["keysFile"] == str(keys_file) and out["status"] == "activated"
    assert mode(keys_file) == 0o600 and mode(keys_file.parent) == 0o700
    keys = AtKeys.load(keys_file, strict_mode=True)
    assert keys.atsign == atsign and keys.enrollment_id == out["enrollmentId"]
    assert keys.apkam_symmetric_key
    # nothing secret reached the (DEBUG) log or stdout
    for needle in (secret, keys.self_encryption_key, rsa.private_to_b64(keys.pkam_private)[:40],
                   rsa.private_to_b64(keys.encrypt_private)[:40]):
        assert needle not in p.stderr and needle not in p.stdout

    async def check() -> None:
        # APKAM (enrollmentId) and legacy PKAM both work with the written keys
        conn = await connect_authenticated(keys, root=at_server.root, ca_file=at_server.ca_file)
        try:
            assert conn.authenticated
            assert f"public:publickey{atsign}" in json.loads(await conn.execute("scan"))
        finally:
            await conn.close()
        legacy = AtKeys.load(keys_file)
        legacy.enrollment_id = None
        conn = await connect_authenticated(legacy, root=at_server.root, ca_file=at_server.ca_file)
        await conn.close()
        # the encryption public key is published for everyone
        anon = await connect_atserver(atsign, root=at_server.root, ca_file=at_server.ca_file)
        try:
            published = (await anon.execute(f"lookup:publickey{atsign}")).strip()
            assert published == keys.encrypt_public_b64
            with pytest.raises(ClientAuthFailedError):  # the secret was deleted
                await anon.authenticate_cram(atsign, secret)
        finally:
            await anon.close()

    arun(check())
    # a second onboard with the same secret fails clearly (another target, so not the file check)
    p2 = cli(env, "onboard", "-a", atsign, "-k", str(tmp_path / "second.atKeys"))
    assert p2.returncode == 3
    assert "refused" in one_line_error(p2) and "already activated" in p2.stderr
    assert not (tmp_path / "second.atKeys").exists()


def test_onboard_secret_file_under_umask_000(at_server: AtServerProcess, tmp_path: Path) -> None:
    atsign = new_atsign()
    secret = at_server.add(atsign)
    assert secret
    home = tmp_path / "home"
    env = cli_env(at_server, home)
    loose = tmp_path / "loose_secret"
    loose.write_text(f"added {atsign}; activation secret:\n{secret}\n")
    loose.chmod(0o644)
    p = cli(env, "onboard", "-a", atsign, "--secret-file", str(loose))
    assert p.returncode == 3 and "chmod 600" in one_line_error(p)
    assert not (home / ".atsign").exists()
    tight = tmp_path / "secret"
    tight.write_text(secret + "\n")
    tight.chmod(0o600)
    p = cli(env, "onboard", "-a", atsign, "--secret-file", str(tight), umask=0)
    assert p.returncode == 0, p.stderr
    keys_file = home / ".atsign" / "keys" / f"{atsign}_key.atKeys"
    assert mode(keys_file) == 0o600
    assert mode(keys_file.parent) == 0o700 and mode(home / ".atsign") == 0o700
    assert [x.name for x in keys_file.parent.iterdir()] == [keys_file.name]  # no temp left over
    AtKeys.load(keys_file, strict_mode=True)


def test_onboard_stdin_secret(at_server: AtServerProcess, tmp_path: Path) -> None:
    atsign = new_atsign()
    secret = at_server.add(atsign)
    target = tmp_path / "k" / "stdin.atKeys"
    p = cli(cli_env(at_server, tmp_path / "home"), "onboard", "-a", atsign, "--secret-file", "-",
            "-k", str(target), stdin=f"{secret}\n")
    assert p.returncode == 0, p.stderr
    assert str(target) in p.stdout and mode(target) == 0o600


def test_onboard_refuses_existing_file_before_using_the_secret(
    at_server: AtServerProcess, tmp_path: Path
) -> None:
    atsign = new_atsign()
    secret = at_server.add(atsign)
    assert secret
    target = tmp_path / "keys" / "mine.atKeys"
    target.parent.mkdir(mode=0o700)
    target.write_text("precious")
    env = cli_env(at_server, tmp_path / "home", AT_ACTIVATE_SECRET=secret)
    p = cli(env, "onboard", "-a", atsign, "-k", str(target))
    assert p.returncode == 2 and "already exists" in one_line_error(p)
    assert target.read_text() == "precious"
    # the secret is still valid (nothing was sent), and --force overwrites; --secret warns
    env.pop("AT_ACTIVATE_SECRET")
    p = cli(env, "onboard", "-a", atsign, "-k", str(target), "--force", "--secret", secret)
    assert p.returncode == 0, p.stderr
    assert "warning: -c/--cramkey is visible" in p.stderr
    assert AtKeys.load(target).atsign == atsign and mode(target) == 0o600


@pytest.mark.parametrize("dangling", [False, True])
def test_onboard_refuses_planted_symlink(
    at_server: AtServerProcess, tmp_path: Path, dangling: bool
) -> None:
    atsign = new_atsign()
    secret = at_server.add(atsign)
    assert secret
    victim = tmp_path / "victim.txt"
    if not dangling:
        victim.write_text("do not touch")
    link = tmp_path / "home" / ".atsign" / "keys" / f"{atsign}_key.atKeys"
    link.parent.mkdir(parents=True, mode=0o700)
    link.symlink_to(victim)
    env = cli_env(at_server, tmp_path / "home", AT_ACTIVATE_SECRET=secret)
    p = cli(env, "onboard", "-a", atsign, "--force")
    assert p.returncode == 3 and "symlink" in one_line_error(p)
    assert link.is_symlink()
    if dangling:
        assert not victim.exists()
    else:
        assert victim.read_text() == "do not touch"


def test_usage_errors(tmp_path: Path, at_server: AtServerProcess) -> None:
    env = cli_env(at_server, tmp_path / "home")
    p = cli(env, "onboard", "-a", "@nobody_here")
    assert p.returncode == 2 and "no activation secret" in one_line_error(p)
    p = cli(env, "--version")
    assert p.returncode == 0 and "at_activate" in p.stdout
    p = cli(env, "enroll", "-a", "@x", "-p", "a", "-d", "d", "-n", "sshnp:rwx", "--otp", "ABCDEF")
    assert p.returncode == 2 and "bad namespace" in one_line_error(p)
    # an atSign the root does not know
    p = cli(cli_env(at_server, tmp_path / "home", AT_ACTIVATE_SECRET="abc"),
            "onboard", "-a", new_atsign("unknown"))
    assert p.returncode == 4, p.stderr
    one_line_error(p)


def test_parse_namespaces() -> None:
    assert parse_namespaces("sshnp:rw, sshrvd:r") == {"sshnp": "rw", "sshrvd": "r"}
    assert parse_namespaces("SSHNP") == {"sshnp": "rw"}
    for bad in ("", ",", "sshnp:x", "a b:rw", "x@y:r", "sshnp:rw,sshnp:r"):
        with pytest.raises(ConfigError):
            parse_namespaces(bad)
