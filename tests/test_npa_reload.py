"""``npa`` reload (SIGHUP) and ``--check-config``: a real npa process on the embedded server.

The configuration comes from a TOML ``--config`` file. SIGHUP re-reads it: a new policy
file and a new audit log apply to the next request; a broken config file or a broken policy
is one logged line and the running configuration keeps answering. Changing the policy file
in place still reloads it without a signal (covered in test_npa_service).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import pytest

from tests.test_npa_service import Daemon, connect, policy_text, write_policy

pytestmark = pytest.mark.timeout(120)


def write_config(path: Path, npa: str, policy: Path, audit: Path, extra: str = "") -> None:
    path.write_text(
        f'atsign = "{npa}"\npolicy = "{policy}"\naudit-log = "{audit}"\nverbose = true\n{extra}'
    )


def test_npa_check_config_exit_codes(np_env, tmp_path: Path) -> None:
    npa = np_env.atsign("npa")
    pol, cfg = tmp_path / "p.toml", tmp_path / "npa.toml"
    write_policy(pol, policy_text("@carol", '"localhost:22"'))
    write_config(cfg, npa, pol, tmp_path / "audit.jsonl")
    r = np_env.run("npa", "--config", str(cfg), "--check-config")
    assert r.returncode == 0 and "configuration is valid" in r.stdout, r.stderr
    # a broken policy file: exit 2, one line naming the problem
    write_policy(pol, "[groups.x]\nmembers = []\n")
    r = np_env.run("npa", "--config", str(cfg), "--check-config")
    assert r.returncode == 2 and "unknown key 'members'" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    # a missing policy file, an unknown config key, a bad daemon atSign
    r = np_env.run("npa", "-a", npa, "--policy", str(tmp_path / "none.toml"), "--check-config")
    assert r.returncode == 2 and "none.toml" in r.stderr and "Traceback" not in r.stderr
    write_policy(pol, policy_text("@carol", '"localhost:22"'))
    write_config(cfg, npa, pol, tmp_path / "audit.jsonl", "max-rat = 3\n")
    r = np_env.run("npa", "--config", str(cfg), "--check-config")
    assert r.returncode == 2 and "max-rat" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = np_env.run(
        "npa", "-a", npa, "--policy", str(pol), "--daemon-atsigns", "@a b", "--check-config"
    )
    assert r.returncode == 2 and "--daemon-atsigns" in r.stderr


def test_npa_sighup_reloads_config_and_keeps_it_on_errors(np_env, tmp_path: Path) -> None:
    npa, dev = np_env.atsign("npa"), np_env.atsign("dev")
    carol, dave = "@carol_" + np_env.tag, "@dave_" + np_env.tag
    p1, p2 = tmp_path / "p1.toml", tmp_path / "p2.toml"
    write_policy(p1, policy_text(carol, '"localhost:22"'))
    write_policy(p2, policy_text(dave, '"localhost:3389"'))
    a1, a2 = tmp_path / "a1.jsonl", tmp_path / "a2.jsonl"
    cfg = tmp_path / "npa.toml"
    write_config(cfg, npa, p1, a1)
    proc = np_env.spawn(
        "npa", "--config", str(cfg), "--no-self-audit", ready="monitor started", timeout=30
    )
    rid = [int(time.time() * 1_000_000)]

    async def decide(d: Daemon, who: str) -> dict:
        rid[0] += 1
        got = await d.ask(rid[0], d.request(rid[0], who))
        assert got and got[-1]["respType"] == "success", got
        return got[-1]["payload"]

    def hup_and_wait(pattern: str, n: int) -> None:
        proc.signal(signal.SIGHUP)
        proc.wait_for(rf"(?s)(?:{pattern}.*){{{n - 1}}}{pattern}", 20)

    async def scenario() -> None:
        async with await connect(np_env, dev) as dc:
            d = Daemon(dc, npa)
            await d.start()
            assert (await decide(d, carol))["authorized"] is True
            assert (await decide(d, dave))["authorized"] is False
            # a new policy file and a new audit log, from the config file
            write_config(cfg, npa, p2, a2)
            await asyncio.to_thread(hup_and_wait, "configuration reloaded", 1)
            assert (await decide(d, carol))["authorized"] is False
            got = await decide(d, dave)
            assert got["authorized"] is True and got["permitOpen"] == ["localhost:3389"]
            # a broken config file: one line, the running configuration (p2) kept
            write_config(cfg, npa, p1, a1, "max-rat = 3\n")
            await asyncio.to_thread(hup_and_wait, "configuration reload failed", 1)
            assert (await decide(d, dave))["authorized"] is True
            # a broken policy file named by a valid config: also refused as a whole
            write_config(cfg, npa, p2, a2)
            write_policy(p2, "[groups.x]\nmembers = []\n")
            await asyncio.to_thread(hup_and_wait, "configuration reload failed", 2)
            write_policy(p2, policy_text(dave, '"localhost:3389"'))  # as it was
            assert (await decide(d, dave))["authorized"] is True

    asyncio.run(asyncio.wait_for(scenario(), 90))
    assert "configuration reloaded: policy, audit_log" in proc.stderr
    failed = [ln for ln in proc.stderr.splitlines() if "configuration reload failed" in ln]
    assert len(failed) == 2, proc.stderr
    assert "max-rat" in failed[0] and "unknown key 'members'" in failed[1]
    proc.signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    # read after a clean exit: a decision's audit line may be written just after its answer
    first = [json.loads(ln) for ln in a1.read_text().splitlines()]
    after = [json.loads(ln) for ln in a2.read_text().splitlines()]
    assert len(first) == 2 and len(after) == 4  # the new audit log took every later decision


def test_npa_unit_checks_config_before_start_and_reload(tmp_path: Path) -> None:
    import os
    import subprocess

    from tests.test_sshnpd_reload import unit_commands

    pol, cfg = tmp_path / "p.toml", tmp_path / "npa.toml"
    write_policy(pol, policy_text("@carol", '"localhost:22"'))
    write_config(cfg, "@policy", pol, tmp_path / "audit.jsonl")
    subst = {"/etc/noports/npa.toml": str(cfg)}
    pre = unit_commands("noports-npa.service", "ExecStartPre", subst)
    reload = unit_commands("noports-npa.service", "ExecReload", subst)
    assert len(pre) == 1 and "--check-config" in pre[0]
    assert reload[0] == pre[0] and reload[-1] == ["/bin/kill", "-HUP", "$MAINPID"]
    env = {"HOME": str(tmp_path), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    r = subprocess.run(pre[0], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    write_policy(pol, "[groups.x]\nmembers = []\n")
    r = subprocess.run(pre[0], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and "members" in r.stderr
