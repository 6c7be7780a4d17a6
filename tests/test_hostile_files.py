"""Issue 10 break 8: open key files refused, server.db private, deep JSON a normal error,
and no "Task exception was never retrieved" when the daemon does not answer."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from noports.at.client import AtClient
from noports.crypto.atkeys import AtKeys
from noports.session.client import NoAnswerError, SessionSpec, establish
from noports.session.features import DaemonFeature
from tests.fixtures_at import AtServerProcess, Wire

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "tool,args",
    [
        ("sshnpd", ["-a", "@alice", "-m", "@bob", "-d", "dev"]),
        ("srvd", ["-a", "@alice", "-i", "127.0.0.1"]),
        ("npt", ["-f", "@alice", "-t", "@bob", "-d", "dev", "-r", "@rv", "-p", "22"]),
        ("sshnp", ["-f", "@alice", "-t", "@bob", "-d", "dev", "-r", "@rv"]),
    ],
)
def test_group_or_world_readable_keys_are_refused(
    tool: str, args: list[str], tmp_path: Path, keys: Callable[[str], AtKeys]
) -> None:
    path = keys("@alice").save(tmp_path / "@alice_key.atKeys")
    os.chmod(path, 0o644)
    env = dict(os.environ, NOPORTS_ROOT="127.0.0.1:1", PYTHONPATH=str(REPO))
    p = subprocess.run(
        [sys.executable, "-m", f"noports.cli.{tool}", *args, "-k", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=str(tmp_path),
    )
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith(f"{tool}: error:")]
    assert p.returncode == 3, p.stderr
    assert len(errors) == 1 and "0644" in errors[0] and "chmod 600" in errors[0], p.stderr


def test_server_db_is_private(make_at_server) -> None:
    old = os.umask(0o022)
    try:
        srv = make_at_server()
    finally:
        os.umask(old)
    for name in ("server.db", "server.db-wal", "server.db-shm"):
        f = srv.data_dir / name
        if f.exists():
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, name


def test_deep_json_is_a_normal_syntax_error(at_server: AtServerProcess, keys) -> None:
    name = f"@deep_{uuid.uuid4().hex[:8]}"
    k = keys("@alice").replace(atsign=name)
    at_server.add_fast(name, k)
    w = Wire(at_server.root, at_server.ca_file)
    try:
        deep = "[" * 5000 + "]" * 5000
        w.data(f"from:{name}")
        resp = w.cmd("enroll:request:" + '{"otp":' + deep + "}")
        assert resp.startswith("error:AT0003") and "nested" in resp, resp
        assert w.cmd("noop:0") == "data:ok"
        w2 = Wire(at_server.root, at_server.ca_file)
        assert w2.pkam(k) == "data:success"
        resp = w2.cmd("update:json:" + '{"key":"x' + name + '","value":' + deep + "}")
        assert resp.startswith("error:AT0003") and "nested" in resp, resp
        # ordinary JSON still works
        assert w2.data("update:json:" + '{"key":"x' + name + '","value":"v"}')
        w2.close()
    finally:
        w.close()
    log = at_server.log_path.read_text(errors="replace")
    assert "RecursionError" not in log


def test_no_unretrieved_task_exception_when_nobody_answers(
    run, at_server: AtServerProcess, keys, caplog: pytest.LogCaptureFixture
) -> None:
    me = keys("@alice").replace(atsign=f"@np_{uuid.uuid4().hex[:8]}")
    at_server.add_fast(me.atsign, me)

    async def main() -> None:
        client = await AtClient.connect(
            me.atsign, keys=me, root=at_server.root, ca_file=at_server.ca_file
        )
        try:
            spec = SessionSpec(
                kind="npt",
                daemon=me.atsign,  # hosted, but no daemon and no relay will answer
                device="nobody",
                relay=me.atsign,
                required=[DaemonFeature.SUPPORTS_PORT_CHOICE],
                ping_timeout=0.3,
                relay_timeout=1.0,
            )
            with pytest.raises(NoAnswerError):
                await establish(client, spec)
            gc.collect()
            await asyncio.sleep(0.05)
        finally:
            await client.close()

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        run(main(), timeout=30)
        gc.collect()
    assert "never retrieved" not in caplog.text, caplog.text
