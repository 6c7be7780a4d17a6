"""npa reads the official ``npp_file --yaml`` policy format (the demo file's layout), decides
as the official handler does for it, and reports mistakes naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from noports.errors import ConfigError
from noports.npa.policy import PolicyRequest, PolicyStore, load_policy, parse_official_yaml

OFFICIAL = b"""\
userGroups:
  admins:
    userAtSigns:
      - '@alice'
      - '@bob'
    permissions:
      daemonAtSigns:
        - '@home'
      deviceNames:
        my_pi:
          - localhost:22
          - localhost:3389
      deviceGroupNames:
        lab:
          - '*:*'
  web_team:
    userAtSigns: ['@carol']
    permissions:
      daemonAtSigns: ['@web']
      deviceGroupNames:
        web: ['localhost:80', 'localhost:443']
  nobody:
    userAtSigns: ['@eve']
    permissions:
      deviceNames: {my_pi: ['localhost:22']}
"""


def decide(client: str, device: str, group: str = "__none__", daemon: str = "@home"):
    pol = parse_official_yaml(OFFICIAL, source="policy.yaml")
    return pol.decide(PolicyRequest.from_payload({
        "daemonAtsign": daemon, "daemonDeviceName": device,
        "daemonDeviceGroupName": group, "clientAtsign": client}))  # fmt: skip


def test_official_yaml_decisions() -> None:
    d = decide("@alice", "my_pi")
    assert d.authorized and list(d.permit_open) == ["localhost:22", "localhost:3389"]
    d = decide("@bob", "other", "lab")
    assert d.authorized and list(d.permit_open) == ["*:*"]
    assert decide("@carol", "srv1", "web", daemon="@web").authorized
    assert not decide("@carol", "srv1", "web", daemon="@home").authorized  # other daemon
    assert not decide("@alice", "other").authorized  # no device or group entry
    assert not decide("@eve", "my_pi").authorized  # its group names no daemonAtSigns
    assert not decide("@mallory", "my_pi").authorized
    pol = parse_official_yaml(OFFICIAL)
    assert pol.daemons == {"@home", "@web"}


def test_file_and_store_pick_the_format_by_extension(tmp_path: Path) -> None:
    f = tmp_path / "policy.yaml"
    f.write_bytes(OFFICIAL)
    assert load_policy(f).daemons == {"@home", "@web"}
    store = PolicyStore(str(f))
    dec, _audit = store.decide({"daemonAtsign": "@home", "daemonDeviceName": "my_pi",
                                "daemonDeviceGroupName": "__none__", "clientAtsign": "@bob"})
    assert dec.authorized


@pytest.mark.parametrize(
    "text,match",
    [
        (b"groups: {}\n", "expected 'userGroups:'"),
        (b"userGroups:\n  a:\n    userAtSign: ['@x']\n", "unknown key 'userAtSign'"),
        (b"userGroups:\n  a:\n    userAtSigns: ['@x']\n    permissions:\n"
         b"      daemonAtSigns: ['@d']\n      deviceName: {}\n", "unknown key 'deviceName'"),
        (b"userGroups:\n  a:\n    userAtSigns: ['@x']\n    permissions:\n"
         b"      daemonAtSigns: ['@d']\n      deviceNames: {pi: ['localhost']}\n",
         "deviceNames.pi"),
        (b"userGroups:\n  a:\n    userAtSigns: ['@x']\n", "grants nothing"),
        (b"userGroups: [\n", "policy p.yaml"),
    ],
)
def test_official_yaml_mistakes(text: bytes, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_official_yaml(text, source="p.yaml")
