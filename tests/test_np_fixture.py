"""The end-to-end fixture: isolated HOME with key files, programs spawned and cleaned up."""

import subprocess

from noports.crypto.atkeys import AtKeys


def test_np_env_provides_keys_programs_and_sshd(np_env):
    a = np_env.atsign("alice")
    path = np_env.home / ".atsign" / "keys" / f"{a}_key.atKeys"
    assert (
        AtKeys.load(path, strict_mode=True).encrypt_public_b64 == np_env.keys(a).encrypt_public_b64
    )
    p = np_env.spawn("noports", "--version", ready=r"implementation")
    assert p.wait(30) == 0
    s = np_env.sshd()
    out = subprocess.run(
        s.ssh_args("echo", "TEST", "PASSED"), capture_output=True, text=True, timeout=30
    )
    assert out.stdout.strip() == "TEST PASSED", out.stderr
    assert (np_env.home / ".ssh" / "authorized_keys").read_text().count("noports-test") == 1
