"""sshnpd started the official ways, as real processes against the embedded server: the
official systemd unit's ExecStart line (with its empty ``"$delegate_policy"`` argument), an
official-schema YAML config found through ``SSHNPD_CONFIG`` with a password-protected atKeys
file written by our writer, ``--doctor``; and the precise errors for bad ones."""

from __future__ import annotations

import json

import pytest

from noports.cli.sshnpd import YAML_KEYS, build_parser, config_from_args
from noports.config import drop_empty, parse_args
from noports.crypto.atkeys import AtKeys
from tests.test_sshnpd_e2e import READY
from tests.test_sshnpd_support import NpClient, arun

pytestmark = pytest.mark.timeout(90)


async def _ping(np_env, client: str, daemon: str, device: str) -> dict:
    async with NpClient(np_env, client, daemon, device) as c:
        info = await c.ping()
    assert info is not None
    return info


def test_official_systemd_unit_execstart_line(np_env):
    daemon, client = np_env.atsign("device"), np_env.atsign("client")
    # ExecStart=/usr/local/bin/sshnpd -a "$device_atsign" -m "$manager_atsign"
    #   -d "$device_name" "$delegate_policy" "$s" "$u" "$v"   (delegate_policy="" by default)
    unit_env = {"device_atsign": daemon, "manager_atsign": client, "device_name": "default",
                "delegate_policy": "", "s": "-s", "u": "-u", "v": "-v"}
    argv = ["-a", unit_env["device_atsign"], "-m", unit_env["manager_atsign"],
            "-d", unit_env["device_name"], unit_env["delegate_policy"], unit_env["s"],
            unit_env["u"], unit_env["v"]]
    assert "" in argv
    proc = np_env.spawn("sshnpd", *argv, ready=READY)
    info = arun(_ping(np_env, client, daemon, "default"))
    assert info["devicename"] == "default"
    assert info["supportedFeatures"]["acceptsPublicKeys"] is True  # "$s" = -s took effect
    assert proc.stop() == 0


def test_yaml_config_with_protected_keys(np_env, tmp_path):
    daemon, client = np_env.atsign("device"), np_env.atsign("client")
    plain = np_env.home / ".atsign" / "keys" / f"{daemon}_key.atKeys"
    protected = tmp_path / "protected.atKeys"
    AtKeys.load(plain).save(protected, pass_phrase="correct horse battery")
    body = json.loads(protected.read_text())
    assert set(body) == {"content", "iv", "hashingAlgoType"}
    assert body["hashingAlgoType"] == "argon2id"
    plain.unlink()  # only the protected copy is left
    cfg = tmp_path / "sshnpd.yaml"
    cfg.write_text(
        "# as the official bundles/core/config/sshnpd.yaml lays it out\n"
        "atsign:\n"
        f"  atsign: {daemon[1:]}\n"  # without '@', as YAML needs
        f"  keys: {protected}\n"
        "  passphrase: correct horse battery\n"
        "access:\n"
        "  policy:\n"
        "  managers:\n"
        f"    - {client[1:]}\n"
        "  permitopen:\n"
        "    - localhost:22\n"
        "    - localhost:3389\n"
        "device:\n"
        "  name: yaml dev\n"
        "ssh:\n"
        "  add-publickeys: false\n"
        "  sshd-port: 22\n"
        "runtime:\n"
        "  verbose: true\n"
    )
    proc = np_env.spawn("sshnpd", ready=READY, env={"SSHNPD_CONFIG": str(cfg)})
    info = arun(_ping(np_env, client, daemon, "yaml_dev"))
    assert info["devicename"] == "yaml_dev"
    assert info["supportedFeatures"]["acceptsPublicKeys"] is False
    assert proc.stop() == 0

    # the doctor reads the same file and reaches the atServer with the protected keys
    report = tmp_path / "doctor.txt"
    r = np_env.run("sshnpd", "--doctor", "-o", str(report), env={"SSHNPD_CONFIG": str(cfg)})
    assert "Welcome to the SSHNPD Doctor - Diagnostic Tool" in r.stdout
    assert f"authenticated to the atServer of {daemon}" in r.stdout, r.stdout
    assert r.returncode == 0, r.stdout
    assert "DIAGNOSTIC SUMMARY" in report.read_text() and "Failures: 0" in report.read_text()

    # the wrong pass phrase, or none, is one precise line and exit 3
    cfg.write_text(cfg.read_text().replace("correct horse battery", "wrong horse battery"))
    r = np_env.run("sshnpd", "--config", str(cfg))
    assert r.returncode == 3 and "wrong pass phrase" in r.stderr, r.stderr
    r = np_env.run("sshnpd", "-a", daemon, "-m", client, "-k", str(protected))
    assert r.returncode == 3 and "protected by a pass phrase" in r.stderr, r.stderr


def test_yaml_errors_name_the_key_and_line(np_env, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("atsign:\n  atsign: dev\naccess:\n  managers: [a]\n  manager: b\n")
    r = np_env.run("sshnpd", "--config", str(cfg))
    assert r.returncode == 2
    assert f"config file {cfg} line 5: key 'access.manager' is unknown" in r.stderr
    r = np_env.run("sshnpd", env={"SSHNPD_CONFIG": str(tmp_path / "absent.yaml")})
    assert r.returncode == 2 and "absent.yaml does not exist" in r.stderr
    r = np_env.run("sshnpd", "-a", "@x", "-m", "@y", "-o", "f")
    assert r.returncode == 2 and "only valid with --doctor" in r.stderr


def test_yaml_values_and_precedence(tmp_path):
    cfg = tmp_path / "sshnpd.yaml"
    cfg.write_text(
        "atsign: {atsign: Dev, root: 'proxy:127.0.0.1:6464'}\n"
        "access: {managers: 'alice,@bob', policy: ~, permitopen: [localhost:22, 'h:80']}\n"
        "device: {name: 'My Pi', group: lab, hide: true}\n"
        "ssh: {add-publickeys: true, sshd-port: 2222,\n"
        "      publickey-permissions: [no-pty, no-X11-forwarding]}\n"
        "runtime: {strict: false, clear-cached-pks: true, storage-path: /tmp/x, debug: false}\n"
    )

    def parse(*argv: str):
        return parse_args(build_parser(), "sshnpd", list(argv), environ={}, yaml_keys=YAML_KEYS)

    a = parse("--config", str(cfg))
    c = config_from_args(a)
    assert (c.atsign, c.managers, c.device, c.device_group) == ("@dev", ("@alice", "@bob"),
                                                                 "my_pi", "lab")
    assert str(c.permit_open) == "localhost:22,h:80" and c.hide and c.accept_public_keys
    assert c.local_sshd_port == 2222 and c.public_key_permissions == "no-pty,no-X11-forwarding"
    assert a.root == "proxy:127.0.0.1:6464" and a.strict is False and a.clear_cached_pks
    c = config_from_args(parse("--config", str(cfg), "-d", "cli", "--local-sshd-port", "22"))
    assert c.device == "cli" and c.local_sshd_port == 22  # the command line wins
    cfg.write_text("ssh: {sshd-port: many}\n")
    with pytest.raises(SystemExit):
        parse("--config", str(cfg))


def test_drop_empty_keeps_option_values():
    p = build_parser()
    assert drop_empty(["-a", "@x", "", "-s", "", "-v"], p) == ["-a", "@x", "-s", "-v"]
    assert drop_empty(["--permit-open", "", "-v"], p) == ["--permit-open", "", "-v"]
    a = parse_args(p, "sshnpd", ["-a", "@x", "", "-m", "@y", "--po", ""], environ={})
    assert a.permit_open == "" and a.managers == ["@y"]


def test_official_sample_layout_with_empty_values(tmp_path):
    """The keys the official sample sshnpd.yaml carries, most left empty as it ships them
    (empty = not set), including its ``ssh-client:`` spelling."""
    cfg = tmp_path / "sshnpd.yaml"
    cfg.write_text(
        "atsign:\n  atsign: dev_np\n  keys: \n  root: \n"
        "access:\n  policy:\n  managers:\n    - alice_np\n  permitopen:\n    - localhost:22\n"
        "device:\n  name:\n  group: \n"
        "ssh:\n  add-publickeys: false\n  ssh-client: openssh\n  sshd-port: 22\n"
        "  publickey-permissions:\n\n"
        "runtime:\n  storage-path: \n  clear-cached-pks: false\n  verbose: true\n"
    )
    a = parse_args(build_parser(), "sshnpd", [], environ={"SSHNPD_CONFIG": str(cfg)},
                   yaml_keys=YAML_KEYS, config_env=("SSHNPD_CONFIG",))
    c = config_from_args(a)
    assert (c.atsign, c.managers, c.device, c.device_group) == ("@dev_np", ("@alice_np",),
                                                                 "default", "__none__")
    assert str(c.permit_open) == "localhost:22" and a.verbose and a.root is None
