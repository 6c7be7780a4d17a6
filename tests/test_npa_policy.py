"""NPA policy file: decisions, validation, audit records, reload-on-change."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from noports.errors import ConfigError, ProtocolError
from noports.npa.policy import PolicyRequest, PolicyStore, parse_policy
from noports.session.permitopen import PermitOpen

POLICY = b"""
daemon_atsigns = ["@home", "@Web"]

[groups.admins]
atsigns = ["@alice", "@BOB"]
[groups.admins.device_names]
"My Pi" = ["localhost:22", "LOCALHOST:3389"]
[groups.admins.device_groups]
"lab" = ["*:*"]

[groups.web_team]
atsigns = ["@carol", "@bob"]
daemon_atsigns = ["@web"]
device_groups = { "web" = ["localhost:80", "localhost:443"] }
device_names = { "blocked" = [] }

[users."@dave"]
device_names = { "build01" = ["localhost:22"] }
"""


def req(client: str, device: str, group: str = "__none__", daemon: str = "@home") -> dict[str, str]:
    return {
        "daemonAtsign": daemon,
        "daemonDeviceName": device,
        "daemonDeviceGroupName": group,
        "clientAtsign": client,
    }


def decide(payload: dict[str, str]) -> dict[str, object]:
    return parse_policy(POLICY).decide(PolicyRequest.from_payload(payload)).payload()


def test_device_name_match() -> None:
    assert decide(req("@alice", "my_pi")) == {
        "authorized": True,
        "message": None,
        "permitOpen": ["localhost:22", "localhost:3389"],
    }
    assert list(decide(req("@alice", "my_pi"))) == ["authorized", "message", "permitOpen"]


def test_device_name_wins_over_group_within_a_group() -> None:
    # my_pi in group "lab": the device_names entry, not the lab's *:*, applies
    assert decide(req("@alice", "my_pi", "lab"))["permitOpen"] == ["localhost:22", "localhost:3389"]
    assert decide(req("@alice", "other", "lab"))["permitOpen"] == ["*:*"]


def test_groups_combine_and_daemon_restriction() -> None:
    d = decide(req("@BoB", "w1", "web", daemon="@web"))
    assert d["authorized"] and d["permitOpen"] == ["localhost:80", "localhost:443"]
    d = decide(req("@bob", "w1", "web", daemon="@home"))  # web_team is only for @web
    assert not d["authorized"]
    d = decide(req("@bob", "my_pi", "web", daemon="@web"))
    assert d["permitOpen"] == ["localhost:22", "localhost:3389", "localhost:80", "localhost:443"]


def test_denials() -> None:
    d = decide(req("@mallory", "my_pi"))
    assert d == {
        "authorized": False,
        "permitOpen": [],
        "message": "@mallory is not permitted to use device my_pi of @home",
    }
    assert not decide(req("@carol", "blocked", "web", daemon="@web"))["authorized"]  # [] = nothing
    assert not decide(req("@alice", "my_pi", daemon="@other"))["authorized"]
    assert decide(req("@dave", "build01"))["permitOpen"] == ["localhost:22"]
    assert not decide(req("@dave", "build02"))["authorized"]


def test_permit_open_result_is_usable_by_the_daemon() -> None:
    po = PermitOpen.parse(decide(req("@alice", "my_pi"))["permitOpen"])  # type: ignore[arg-type]
    assert po.check("localhost", 3389) and not po.check("localhost", 80)


@pytest.mark.parametrize(
    "payload",
    [
        req("alice", "my_pi"),
        req("@alice", "my pi\n"),
        req("@alice", "x/../y"),
        req("@alice\nINFO ok", "my_pi"),
        req("@alice", "my_pi", "lab\x1b[2J"),
        {"daemonAtsign": "@home", "clientAtsign": "@alice"},
        {},
        {**req("@alice", "my_pi"), "clientAtsign": 5},
    ],
)
def test_invalid_requests_raise_protocol_error(payload: dict[str, object]) -> None:
    with pytest.raises(ProtocolError):
        PolicyRequest.from_payload(payload)


@pytest.mark.parametrize(
    "text,match",
    [
        (b"bogus = 1", "unknown key 'bogus'"),
        (b"[groups.a]\natsigns=['@a']\ndevice_name = {}", "unknown key 'device_name'"),
        (b"[groups.a]\ndevice_names = {}", "missing 'atsigns'"),
        (b"[groups.a]\natsigns=['a']", "must start with '@'"),
        (b"[groups.a]\natsigns=['@a']\ndevice_names={'x/y'=['localhost:22']}", "device name"),
        (b"[groups.a]\natsigns=['@a']\ndevice_names={'x1'=['localhost:22\\n']}", "x1"),
        (b"[groups.a]\natsigns=['@a']\ndevice_names={'x1'=['127.1:22']}", "non-canonical"),
        (b"[groups.a]\natsigns=['@a']\ndevice_names={'x1'='localhost:22'}", "array"),
        (b"[groups.a]\natsigns=['@a']\ndevice_names={'AB'=[], 'ab'=[]}", "twice"),
        (b"[users.a]\ndevice_names={}", "must start with '@'"),
        (b"[users.'@a']\natsigns=['@b']", "unknown key 'atsigns'"),
        (b"groups = 1", "must be a table"),
        (b"daemon_atsigns = '@x'", "array"),
        (b"not toml [", "policy"),
        (b"\xff\xfe", "policy"),
    ],
)
def test_bad_policies(text: bytes, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_policy(text)


def test_store_audit_and_reload(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "policy.toml"
    path.write_bytes(POLICY)
    store = PolicyStore(str(path), clock=lambda: 1700000000.0)
    decision, audit = store.decide(req("@alice", "my_pi"))
    assert decision.authorized
    assert json.loads(json.dumps(audit)) == audit
    assert audit["clientAtsign"] == "@alice" and audit["matchedGroups"] == ["admins"]
    assert audit["ts"] == 1700000000.0 and audit["policyError"] is None
    v1 = audit["policyVersion"]

    # a valid change (atomic replace) is picked up on the next decision, no restart
    new = tmp_path / "new.toml"
    new.write_bytes(b'[users."@alice"]\ndevice_names = { "my_pi" = ["localhost:2222"] }\n')
    os.replace(new, path)
    decision, audit = store.decide(req("@alice", "my_pi"))
    assert decision.permit_open == ("localhost:2222",) and audit["policyVersion"] != v1

    # a broken change keeps the last good policy and reports the error once
    caplog.set_level(logging.ERROR, logger="noports.npa.policy")
    path.write_bytes(b"[users.'@alice']\nbogus = 1\n")
    for _ in range(3):
        decision, audit = store.decide(req("@alice", "my_pi"))
        assert decision.permit_open == ("localhost:2222",)
        assert "bogus" in (audit["policyError"] or "")
    assert len([r for r in caplog.records if "bogus" in r.getMessage()]) == 1

    # deleting the file keeps the last good policy too; restoring a good one reloads
    path.unlink()
    assert store.decide(req("@alice", "my_pi"))[0].permit_open == ("localhost:2222",)
    assert "cannot" in (store.last_error or "")
    path.write_bytes(POLICY)
    assert store.maybe_reload()
    assert store.decide(req("@alice", "my_pi"))[0].permit_open == ("localhost:22", "localhost:3389")
    assert store.last_error is None


def test_in_place_edit_detected_by_size(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_bytes(b'[users."@a"]\ndevice_names = { "d1" = ["h:1"] }\n')
    store = PolicyStore(path)  # type: ignore[arg-type]
    with open(path, "ab") as fh:  # same inode, new size
        fh.write(b'device_groups = { "g1" = ["h:2"] }\n')
    assert store.maybe_reload()
    assert store.decide(req("@a", "zz", "g1"))[0].permit_open == ("h:2",)
    assert not store.maybe_reload()  # unchanged: one stat, no re-parse


def test_store_requires_a_good_first_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        PolicyStore(str(tmp_path / "missing.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"bogus = 1")
    with pytest.raises(ConfigError, match="bogus"):
        PolicyStore(str(bad))


def test_invalid_request_is_audited_without_raw_controls(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_bytes(POLICY)
    store = PolicyStore(str(path))
    with pytest.raises(ProtocolError):
        store.decide(req("@x\n INFO auth success @admin", "my_pi"))
    rec = store.audit_invalid({"clientAtsign": "@x\n\x1b[2J"}, "bad\nreason")
    text = json.dumps(rec)
    assert "\\n" not in text and "\\u001b" not in text  # escaped by us, not by json
    assert "\n" not in rec["clientAtsign"] and "\x1b" not in rec["clientAtsign"]  # type: ignore[operator]
    assert "\n" not in rec["reason"]  # type: ignore[operator]


def test_hostile_group_name_is_escaped() -> None:
    with pytest.raises(ConfigError) as ei:
        parse_policy(b'[groups."x\\nINFO granted"]\natsigns = ["@a"]\nbogus = 1\n')
    assert "\n" not in str(ei.value)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_hypothesis_policy_parser_only_raises_config_error(data: bytes) -> None:
    try:
        parse_policy(data)
    except ConfigError:
        pass
