"""``noports profile`` (issue 9 point 3) as real processes against the embedded atServer, a real
srvd and sshnpd, and a real HTTP server the tunnel reaches: import a desktop-app export in JSON
and in YAML, list, export back (round trip), run one profile by name and one from a file."""

from __future__ import annotations

import json
import signal
import urllib.request
from pathlib import Path

import pytest
import yaml

from noports.profiles import parse_document
from tests.ui_rig import PAGE, TunnelRig, free_port

pytestmark = pytest.mark.timeout(120)

# the desktop app's 2024 field set, a field we do not know, and an atSign without its "@"
YAML_DOC = {
    "profiles": [
        {
            "displayName": "rdp desk",
            "relayAtsign": None,
            "sshnpdAtsign": "bob_device",
            "deviceName": "desk",
            "remotePort": 3389,
            "localPort": 0,
            "futureField": {"x": 1},
        }
    ]
}


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read()


def _exportable(profiles) -> list[dict]:
    return sorted((p.exportable() for p in profiles), key=lambda d: d["displayName"])


@pytest.fixture
def trig(np_env):
    r = TunnelRig(np_env)
    yield r
    r.close()


def test_import_list_export_run(trig: TunnelRig, tmp_path: Path) -> None:
    env, me = trig.env, trig.client
    cli = ("noports", "profile")
    port = free_port()
    json_doc = {"profiles": [trig.profile_json("web page", local_port=port)]}
    jpath, ypath = tmp_path / "web.json", tmp_path / "desk.yaml"
    jpath.write_text(json.dumps(json_doc))
    ypath.write_text(yaml.safe_dump(YAML_DOC))

    # import both documents into the atServer; each prints what it stored
    for path, name in ((jpath, "web page"), (ypath, "rdp desk")):
        r = env.run(*cli, "import", "-a", me, str(path))
        assert r.returncode == 0, r.stderr
        assert f"stored {name!r} as " in r.stdout and f"1 profile(s) imported into {me}" in r.stdout

    # list: a table with a header, and JSON with the stored uuids
    r = env.run(*cli, "list", "-a", me)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["NAME", "DEVICE", "RELAY"] and len(lines) == 3
    assert lines[1].startswith("rdp desk") and "desk@bob_device" in lines[1]
    assert lines[2].startswith("web page") and f"localhost:{port}" in lines[2]
    r = env.run(*cli, "list", "-a", me, "--output", "json")
    got = json.loads(r.stdout)
    assert got["errors"] == [] and [p["displayName"] for p in got["profiles"]] == [
        "rdp desk",
        "web page",
    ]
    assert all(len(p["uuid"]) == 36 for p in got["profiles"])
    assert got["profiles"][0]["futureField"] == {"x": 1}  # unknown fields kept

    # list a file without any atServer
    r = env.run(*cli, "list", "--file", str(ypath), "--output", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["profiles"][0]["sshnpdAtsign"] == "@bob_device"

    # export back: what was imported, as JSON on stdout and as YAML in a file
    wanted = _exportable(parse_document(jpath.read_text()) + parse_document(ypath.read_text()))
    r = env.run(*cli, "export", "-a", me, "--format", "json")
    assert r.returncode == 0, r.stderr
    assert "uuid" not in r.stdout
    assert _exportable(parse_document(r.stdout, "json")) == wanted
    out = tmp_path / "all.yaml"
    r = env.run(*cli, "export", "-a", me, "-o", str(out))
    assert r.returncode == 0 and "wrote 2 profile(s)" in r.stderr
    assert _exportable(parse_document(out.read_text(), "yaml")) == wanted
    r = env.run(*cli, "export", "-a", me, "rdp desk", "--format", "json")
    assert json.loads(r.stdout)["profiles"] == [wanted[0]]

    # run by name: the tunnel carries the web page; SIGINT (Ctrl-C) stops it with exit 0
    p = env.spawn(*cli, "run", "-a", me, "web page", ready=f"listening on .*:{port}",
                  timeout=45)  # fmt: skip
    for _ in range(2):
        assert _get(f"http://127.0.0.1:{port}/") == PAGE
    p.signal(signal.SIGINT)
    assert p.wait(15) == 0 and "stopped" in p.stderr

    # run from a one-profile file (another local port), stopped by SIGTERM
    port2 = free_port()
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"profiles": [trig.profile_json("file", local_port=port2)]}))
    p = env.spawn(*cli, "run", "-a", me, "-q", str(one), ready=f"listening on .*:{port2}",
                  timeout=45)  # fmt: skip
    assert _get(f"http://127.0.0.1:{port2}/") == PAGE
    p.signal(signal.SIGTERM)
    assert p.wait(15) == 0

    # import again: --replace keeps the uuid; a plain import adds, as the desktop app does,
    # and the name becomes ambiguous for run/export (exit 2 with the uuids)
    uuids = {p["displayName"]: p["uuid"] for p in got["profiles"]}
    r = env.run(*cli, "import", "-a", me, "--replace", str(jpath))
    assert r.returncode == 0 and uuids["web page"] in r.stdout, r.stderr
    r = env.run(*cli, "list", "-a", me, "--output", "json")
    assert {p["uuid"] for p in json.loads(r.stdout)["profiles"]} == set(uuids.values())
    assert env.run(*cli, "import", "-a", me, str(jpath)).returncode == 0
    r = env.run(*cli, "run", "-a", me, "web page")
    assert r.returncode == 2 and "2 profiles are named 'web page'; use a uuid" in r.stderr


def test_errors_one_line_with_exit_codes(np_env, tmp_path: Path) -> None:
    env = np_env
    me = env.atsign("client")
    cli = ("noports", "profile")
    bad = tmp_path / "bad.yaml"
    bad.write_text("profiles:\n  - displayName: x\n    sshnpdAtsign: '@b'\n    deviceName: dev\n")
    two = tmp_path / "two.json"
    two.write_text(json.dumps({"profiles": [
        {"displayName": n, "sshnpdAtsign": "@b", "deviceName": "dev", "remotePort": 22}
        for n in ("a", "b")
    ]}))  # fmt: skip
    nobody = tmp_path / "nobody.json"
    nobody.write_text(json.dumps({"profiles": [
        {"displayName": "n", "sshnpdAtsign": "@nobody_cli_x", "deviceName": "dev",
         "remotePort": 22, "relayAtsign": env.atsign("relay")}
    ]}))  # fmt: skip
    nodoc = tmp_path / "nodoc.json"
    nodoc.write_text('{"other": []}')
    cases = [
        (("import", "-a", me, str(bad)), 2, "profile 1: remotePort must be a number"),
        (("import", "-a", me, str(nodoc)), 2, "profiles section is missing"),
        (("import", "-a", me, str(tmp_path / "none.yaml")), 4, "none.yaml: no such file"),
        (("export", "-a", me, "nosuch"), 4, "no profile named 'nosuch'"),
        (("run", "-a", me, "nosuch"), 4, "no profile named 'nosuch'"),
        (("run", "-a", me, str(two)), 2, "holds 2 profiles ('a', 'b'); pick one with --name"),
        (("run", "-a", me, str(two), "--name", "c"), 4, "no profile named 'c'"),
        (("list",), 2, "give -a/--atsign"),
        # a daemon atSign the atServer does not know: at once, not after a timeout
        (("run", "-a", me, "-q", str(nobody)), 4, "publickey@nobody_cli_x does not exist"),
    ]
    for args, code, msg in cases:
        r = env.run(*cli, *args)
        assert r.returncode == code, (args, r.stdout, r.stderr)
        assert r.stderr.count("\n") == 1 and msg in r.stderr, (args, r.stderr)
        assert r.stderr.startswith("noports profile: error: ")
