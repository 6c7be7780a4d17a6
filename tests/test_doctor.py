"""``noports doctor`` against the real embedded server: each check passes, or fails with the fix."""

from __future__ import annotations

import json
import os

import pytest

pytestmark = pytest.mark.timeout(120)


def doctor(np_env, *args: str, env: dict[str, str] | None = None):
    r = np_env.run("noports", "doctor", *args, "--output", "json", "--timeout", "5", env=env)
    assert r.stdout.strip(), r.stderr
    return r.returncode, json.loads(r.stdout.strip().splitlines()[-1]), r


def by_name(report: dict) -> dict:
    return {c["name"]: c for c in report["checks"]}


def test_doctor_passes_then_names_each_failure_and_its_fix(np_env, tmp_path):
    alice = np_env.atsign("alice")
    code, rep, r = doctor(np_env, "-a", alice)
    checks = by_name(rep)
    assert code == 0 and rep["ok"], r.stdout + r.stderr
    for name in ("install", "keys", "root", "tls", "atserver"):
        assert checks[name]["status"] == "ok", checks[name]
    assert checks["clock"]["status"] in ("ok", "warning", "skipped")

    # keys readable by others: a failure naming chmod 600, and nothing network-side is tried
    keys = np_env.home / ".atsign" / "keys" / f"{alice}_key.atKeys"
    os.chmod(keys, 0o644)
    try:
        code, rep, _ = doctor(np_env, "-a", alice)
    finally:
        os.chmod(keys, 0o600)
    k = by_name(rep)["keys"]
    assert code == 1 and k["status"] == "failure" and f"chmod 600 {keys}" == k["fix"]

    # an untrusted server certificate: the TLS check fails and names --ca-file
    env = {"NOPORTS_CA_FILE": ""}
    code, rep, r = doctor(np_env, "-a", alice, env=env)
    t = by_name(rep).get("tls") or {}
    assert code == 1 and t.get("status") == "failure" and "--ca-file" in t["fix"], rep

    # an atSign with no keys on this machine
    code, rep, _ = doctor(np_env, "-a", "@nobody_here")
    k = by_name(rep)["keys"]
    assert code == 1 and k["status"] == "failure" and "at_activate" in k["fix"]

    # the root unreachable
    code, rep, _ = doctor(np_env, "-a", alice, "--root", "127.0.0.1:1")
    assert code == 1 and by_name(rep)["root"]["status"] == "failure"


def test_doctor_text_output_is_one_line_per_check(np_env):
    r = np_env.run("noports", "doctor", "-a", np_env.atsign("alice"), "--timeout", "5")
    lines = r.stdout.strip().splitlines()
    assert r.returncode == 0
    assert lines[-1].endswith("0 failed, " + lines[-1].split(", ")[1])
    assert all(line.startswith("[") for line in lines[:-1])


def test_sshnpd_doctor_runs_the_same_checks(np_env, tmp_path):
    """``sshnpd --doctor`` keeps its layout but its keys, connectivity and port checks are
    noports doctor's: the same keys problem gives the same words and fix in both."""
    alice = np_env.atsign("alice")
    sshd = np_env.sshd()
    r = np_env.run(
        "sshnpd", "--doctor", "-a", alice, "-m", "@mgr", "--local-sshd-port", str(sshd.port)
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Welcome to the SSHNPD Doctor - Diagnostic Tool" in r.stdout
    assert f"authenticated to the atServer of {alice}" in r.stdout
    assert "certificate chain trusted" in r.stdout
    assert f"sshd answers on localhost:{sshd.port}" in r.stdout
    assert "Failures: 0" in r.stdout and "DIAGNOSTIC SUMMARY" in r.stdout

    keys = np_env.home / ".atsign" / "keys" / f"{alice}_key.atKeys"
    os.chmod(keys, 0o644)
    try:
        code, rep, _ = doctor(np_env, "-a", alice)
        r = np_env.run("sshnpd", "--doctor", "-a", alice, "-m", "@mgr")
    finally:
        os.chmod(keys, 0o600)
    k = by_name(rep)["keys"]
    assert code == 1 and r.returncode == 1
    assert f"   [FAIL] {k['detail']} (fix: {k['fix']})" in r.stdout.splitlines(), r.stdout
    assert "Connectivity" in r.stdout and "[SKIP] no usable keys" in r.stdout


def test_both_doctors_leave_the_checking_to_the_shared_module():
    """No probing code of their own in the two command modules (socket, ssl, subprocess,
    key loading): every check lives once, in noports.doctor.checks."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "noports" / "cli"
    for name in ("doctor.py", "sshnpd_doctor.py"):
        tree = ast.parse((root / name).read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                imported |= {f"{node.module}.{a.name}" for a in node.names}
                imported.add(node.module or "")
        assert not imported & {"socket", "ssl", "subprocess", "shutil"}, (name, imported)
        assert not any("connection" in m or m.endswith("AtKeys") for m in imported), imported
        assert "doctor" in imported or "doctor.checks" in imported, (name, imported)
