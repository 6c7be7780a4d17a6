"""Profiles written by the official atSDK appear in our store, and ours in it (issue 13).

The desktop app is Dart; its keys are ``AtKey.self('<uuid>.profiles', namespace: 'noports')``
and ``AtKey.self('favorites', namespace: 'noports')`` (npt_flutter ``util/uuid.dart``,
``favorite_repository.dart``). The official Python atSDK makes the same self keys with
``SelfKey('<uuid>.profiles', atSign).set_namespace('noports')``, encrypted with the atSign's
self-encryption key, so it stands in for the desktop app here."""

from __future__ import annotations

import json

import pytest

from noports import _compat
from noports.crypto.atkeys import default_keys_path
from noports.profiles import Profile
from noports.profiles.store import ProfileStore
from tests.test_at_interop_atsdk import PRELUDE, connect, fresh, result, sdk_env

pytestmark = pytest.mark.interop

DESKTOP_PROFILE = {
    "displayName": "made by the desktop app",
    "relayAtsign": "@rv_am",
    "sshnpdAtsign": "@bob_device",
    "deviceName": "web01",
    "remoteHost": "localhost",
    "remotePort": 80,
    "localPort": 8080,
    "uuid": "6f1c1d3e-2f40-4b8a-9a51-0d6f0c7b9e11",
}


@pytest.fixture
def home(tmp_path):
    h = tmp_path / "home"
    h.mkdir()
    return h


def test_profiles_cross_between_atsdk_and_us(atsdk_python, at_server, keys, home) -> None:
    alice = fresh(at_server, keys, "uiprof")
    alice.save(default_keys_path(alice.atsign, home))
    ours = Profile.from_json({**DESKTOP_PROFILE, "displayName": "made by noports ui"}, uuid=None)
    ours = ours.copy(uuid="0a6b2c1d-0000-4000-8000-00000000beef")

    async def put_ours() -> None:
        c = await connect(at_server, alice)
        try:
            st = ProfileStore(c)
            await st.put(ours)
            await st.set_favourite(ours.uuid, True)
        finally:
            await c.close()

    _compat.run(put_ours())
    script = (
        PRELUDE
        + f"""
me = AtSign({alice.atsign!r})
c = AtClient(me, root_address=ROOT)
theirs = {json.dumps(DESKTOP_PROFILE)!r}
c.put(SelfKey({DESKTOP_PROFILE["uuid"] + ".profiles"!r}, me).set_namespace("noports"), theirs)
got = c.get(SelfKey({ours.uuid + ".profiles"!r}, me).set_namespace("noports"))
fav = c.get(SelfKey("favorites", me).set_namespace("noports"))
out(profile=json.loads(got), favorites=json.loads(fav))
os._exit(0)
"""
    )
    got = result(atsdk_python.run(script, env=sdk_env(at_server, home), timeout=90).stdout)
    # the official SDK decrypted our record: the desktop app's JSON with the uuid
    assert got["profile"] == {**ours.exportable(), "uuid": ours.uuid}
    assert got["favorites"] == {ours.uuid: {"uuid": ours.uuid, "type": "profile"}}

    async def read_theirs() -> None:
        c = await connect(at_server, alice)
        try:
            listed = {p.uuid: p for p in await ProfileStore(c).list()}
        finally:
            await c.close()
        p = listed[DESKTOP_PROFILE["uuid"]]
        assert p.displayName == "made by the desktop app" and p.localPort == 8080
        assert ours.uuid in listed

    _compat.run(read_theirs())
