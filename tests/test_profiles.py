"""Profiles: the desktop app's model, its export document, and its atServer keys (issue 13).

The store tests run against the real embedded atServer (``at_server``)."""

from __future__ import annotations

import asyncio
import json

import pytest

from noports.at import commands
from noports.at.client import AtClient
from noports.profiles import DocumentError, Profile, dump_document, parse_document
from noports.profiles.model import MISSING_PROFILES
from noports.profiles.store import FAVORITES_KEY, ProfileStore, profile_key

# The shape the desktop app exports (util/export.dart: {"profiles": [toExportableJson()]}),
# in its 2024 field set (no localHost/only443/keepAlive) plus one field we do not know.
DESKTOP_EXPORT = {
    "profiles": [
        {
            "displayName": "web server",
            "relayAtsign": "@rv_eu",
            "sshnpdAtsign": "@bob_device",
            "deviceName": "web01",
            "remoteHost": "localhost",
            "remotePort": 80,
            "localPort": 8080,
            "futureField": {"x": 1},
        },
        {
            "displayName": "rdp",
            "relayAtsign": None,
            "sshnpdAtsign": "bob_device",
            "deviceName": "desk",
            "remotePort": 3389,
            "localPort": 0,
        },
    ]
}


def test_profile_defaults_and_validation() -> None:
    ps = parse_document(json.dumps(DESKTOP_EXPORT))
    web, rdp = ps
    assert (web.sshnpdAtsign, web.deviceName, web.relayAtsign) == ("@bob_device", "web01", "@rv_eu")
    assert (web.localHost, web.only443, web.keepAlive) == ("localhost", False, False)
    assert rdp.sshnpdAtsign == "@bob_device" and rdp.relayAtsign is None
    assert rdp.remoteHost == "localhost"
    assert web.uuid != rdp.uuid and len(web.uuid) == 36  # new v4 uuids on import
    assert web.extra == {"futureField": {"x": 1}}
    bad = [
        ({"displayName": ""}, "displayName is required"),
        ({"sshnpdAtsign": "@"}, "atSign"),
        ({"deviceName": "Bad Name!"}, "device name"),
        ({"remotePort": 0}, "remotePort must be 1..65535"),
        ({"remotePort": "http"}, "remotePort must be a number"),
        ({"localPort": 70000}, "localPort must be 0..65535"),
        ({"remoteHost": "a b"}, "remoteHost"),
        ({"keepAlive": "yes"}, "keepAlive must be true or false"),
        ({"connectUriProtocol": "java script:"}, "connectUriProtocol"),
    ]
    for change, msg in bad:
        with pytest.raises(DocumentError, match=msg):
            Profile.from_json({**DESKTOP_EXPORT["profiles"][0], **change})


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_document_round_trip(fmt: str) -> None:
    yaml = pytest.importorskip("yaml")
    ps = parse_document(json.dumps(DESKTOP_EXPORT))
    text = dump_document(ps, fmt)
    doc = json.loads(text) if fmt == "json" else yaml.safe_load(text)
    assert list(doc) == ["profiles"]
    assert all("uuid" not in p for p in doc["profiles"])  # exports never carry the uuid
    assert doc["profiles"][0]["futureField"] == {"x": 1}  # unknown fields survive
    again = parse_document(text, filename=f"export.{fmt}")
    assert [p.exportable() for p in again] == [p.exportable() for p in ps]
    assert [p.uuid for p in again] != [p.uuid for p in ps]
    # content sniffing without a type: YAML and JSON both load
    assert [p.displayName for p in parse_document(text)] == ["web server", "rdp"]


def test_document_errors() -> None:
    pytest.importorskip("yaml")
    for text in ("{}", '{"profiles": 3}', "- a\n- b\n", "profiles:\n  x: 1\n"):
        with pytest.raises(DocumentError, match=MISSING_PROFILES.replace(".", r"\.")):
            parse_document(text)
    with pytest.raises(DocumentError, match="not valid JSON"):
        parse_document("{nope", filename="x.json")
    with pytest.raises(DocumentError, match="unknown profile file type"):
        parse_document("{}", filename="x.txt")
    with pytest.raises(DocumentError, match="profile 2: remotePort"):
        doc = json.loads(json.dumps(DESKTOP_EXPORT))
        doc["profiles"][1]["remotePort"] = -1
        parse_document(json.dumps(doc))
    with pytest.raises(DocumentError, match="larger than"):
        parse_document(b" " * (2 << 20))
    with pytest.raises(DocumentError, match="not UTF-8"):
        parse_document(b"\xff\xfe{")


def test_search_and_duplicate() -> None:
    web, rdp = parse_document(json.dumps(DESKTOP_EXPORT))
    assert web.matches("WEB") and web.matches("web01@bob") and not web.matches("desk")
    d = web.duplicate()
    assert d.uuid != web.uuid and d.displayName == "web server (copy)"
    assert d.exportable() | {"displayName": "web server"} == web.exportable()


def test_store_uses_the_desktop_app_keys(at_server, keys) -> None:
    k = keys("@ui_store_alice")
    at_server.add(k.atsign, k)

    async def go() -> None:
        c = await AtClient.connect(k.atsign, keys=k, root=at_server.root, ca_file=at_server.ca_file)
        try:
            st = ProfileStore(c)
            for u in await st.uuids():  # the session server is shared: start clean
                await st.delete(u)
            web, rdp = parse_document(json.dumps(DESKTOP_EXPORT))
            await st.put(web)
            await st.put(rdp)
            await c.put("unrelated.noports", "{}")
            got = await st.list()
            assert {p.uuid for p in got} == {web.uuid, rdp.uuid}
            assert [p.displayName for p in got] == ["rdp", "web server"]
            # on the wire: a self key <uuid>.profiles.noports@alice, encrypted with the
            # self-encryption key, holding the desktop app's JSON (export fields + uuid)
            raw = json.loads(
                await c.execute(commands.llookup(f"{profile_key(web.uuid)}{k.atsign}", "all"))
            )
            assert raw["metaData"]["isEncrypted"] is True
            assert "web01" not in raw["data"]
            clear = json.loads(await c.get(profile_key(web.uuid)))
            assert clear == {**web.exportable(), "uuid": web.uuid}
            assert clear["sshnpdAtsign"] == "@bob_device" and clear["remotePort"] == 80
            # favourites: one key, a map uuid -> {"uuid", "type": "profile"}
            await st.set_favourite(web.uuid, True)
            await st.set_favourite(rdp.uuid, True)
            await st.set_favourite(rdp.uuid, False)
            assert json.loads(await c.get(FAVORITES_KEY)) == {
                web.uuid: {"uuid": web.uuid, "type": "profile"}
            }
            assert await st.favourites() == {web.uuid}
            # a profile written by another client in the desktop app's exact form is listed
            other = {
                "displayName": "from desktop",
                "sshnpdAtsign": "@d",
                "deviceName": "x1",
                "remotePort": 22,
                "localPort": 2222,
                "uuid": "a1b2c3d4-0000-4000-8000-000000000001",
            }
            await c.put(profile_key(other["uuid"]), json.dumps(other))
            assert "from desktop" in [p.displayName for p in await st.list()]
            # a broken record is reported, not fatal
            await c.put(profile_key("broken"), "not json")
            names = [p.displayName for p in await st.list()]
            assert "web server" in names and st.errors and st.errors[0].startswith("broken:")
            await st.delete("broken")
            await st.delete(web.uuid)
            assert web.uuid not in await st.uuids()
            assert await st.favourites() == set()  # deleting a profile drops its favourite
            s = await st.settings()
            assert s["relayAtsign"] == "@rv_am" and s["overrideRelay"] is False
            await st.put_settings({**s, "relayAtsign": "@rv_eu"})
            assert (await st.settings())["relayAtsign"] == "@rv_eu"
        finally:
            await c.close()

    asyncio.run(asyncio.wait_for(go(), 60))


def test_relay_choice_and_ssh_hint() -> None:
    pytest.importorskip("aiohttp")
    from noports.profiles.runner import Runner, TunnelRun
    from noports.ui.app import relay_for

    web, rdp = parse_document(json.dumps(DESKTOP_EXPORT))
    s = {"relayAtsign": "@rv_am", "overrideRelay": False}
    assert relay_for(web, s) == "@rv_eu" and relay_for(rdp, s) == "@rv_am"
    assert relay_for(web, {**s, "overrideRelay": True}) == "@rv_am"
    ssh = web.copy(connectUriProtocol="ssh", connectUriUsername="pi")
    run = TunnelRun(Runner(None), ssh, "@me", "@rv_am")  # type: ignore[arg-type]
    run.state, run.host, run.port = "connected", "127.0.0.1", 2222
    snap = run.snapshot()
    assert snap["hint"] == "ssh -p 2222 pi@localhost" and snap["url"] == ""
    run.profile = web
    assert run.snapshot()["url"] == "http://localhost:2222/"
