"""Interop with the official Python SDK (``atsdk`` 0.2.81 from PyPI) against our server.

atsdk runs in its own virtualenv (``atsdk_python`` fixture). Its quirks, learnt from its
source: keys are read from ``~/.atsign/keys/`` resolved from HOME at import time; TLS trust
comes from ``ssl.create_default_context()``, so the embedded CA is passed as
``SSL_CERT_FILE``; the root address is an ``Address(host, port)`` argument; its monitor
blocks the calling thread, so it runs in a thread here.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from noports import _compat
from noports.at.client import AtClient
from noports.crypto import rsa
from noports.crypto.atkeys import AtKeys, default_keys_path

pytestmark = pytest.mark.interop

PRELUDE = """
import json, os, queue, sys, threading, time
from at_client.atclient import AtClient
from at_client.common import AtSign
from at_client.common.keys import SelfKey, SharedKey
from at_client.connections.address import Address
from at_client.connections.notification.atevents import AtEventType
HOST, PORT = os.environ["AT_ROOT"].rsplit(":", 1)
ROOT = Address(HOST, int(PORT))
def out(**kw):
    print("RESULT " + json.dumps(kw), flush=True)
"""


def result(stdout: str) -> dict:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"atsdk printed no result:\n{stdout[-2000:]}"
    return json.loads(lines[-1][len("RESULT ") :])


def sdk_env(at_server, home: Path) -> dict[str, str]:
    return {"HOME": str(home), "SSL_CERT_FILE": at_server.ca_file, "AT_ROOT": at_server.root}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    return h


def fresh(at_server, keys, base: str) -> AtKeys:
    name = f"@{base}{uuid.uuid4().hex[:8]}"
    k = keys("@" + base).replace(atsign=name)
    at_server.add(name, k)
    return k


async def connect(at_server, k: AtKeys) -> AtClient:
    return await AtClient.connect(k.atsign, keys=k, root=at_server.root, ca_file=at_server.ca_file)


def test_atsdk_uses_our_atkeys_file(atsdk_python, at_server, keys, home) -> None:
    """A file written by AtKeys.save loads in atsdk, which PKAM-authenticates with it and
    writes self-encrypted data that we read back."""
    alice = fresh(at_server, keys, "alice")
    alice.save(default_keys_path(alice.atsign, home))
    script = (
        PRELUDE
        + f"""
c = AtClient(AtSign({alice.atsign!r}), root_address=ROOT)
k = SelfKey("note", AtSign({alice.atsign!r})).set_namespace("interop")
c.put(k, "written by atsdk ✓")
out(auth=c.is_authenticated(), back=c.get(k))
os._exit(0)
"""
    )
    got = result(atsdk_python.run(script, env=sdk_env(at_server, home), timeout=60).stdout)
    assert got == {"auth": True, "back": "written by atsdk ✓"}

    async def main() -> None:
        c = await connect(at_server, alice)
        assert await c.get("note.interop") == "written by atsdk ✓"
        await c.close()

    _compat.run(main())


def test_atsdk_onboarded_keys_load_in_ours(atsdk_python, at_server, home) -> None:
    """atsdk's own onboarding (CRAM, its key generator, KeysUtil.save_keys) makes a file
    that our AtKeys loads and our client authenticates with."""
    name = f"@dave{uuid.uuid4().hex[:8]}"
    secret = at_server.add(name)
    script = (
        PRELUDE
        + f"""
from at_client.connections.atrootconnection import AtRootConnection
from at_client.connections.atsecondaryconnection import AtSecondaryConnection
from at_client.util.authutil import AuthUtil
from at_client.util.keysutil import KeysUtil
from at_client.util.onboardingutil import OnboardingUtil
atsign = AtSign({name!r})
addr = AtRootConnection.get_instance(HOST, int(PORT)).find_secondary(atsign)
conn = AtSecondaryConnection(addr)
conn.connect()
AuthUtil.authenticate_with_cram(conn, atsign, os.environ["CRAM_SECRET"])
keys = {{}}
OnboardingUtil.generate_pkam_keypair(keys)
OnboardingUtil.generate_encryption_keypair(keys)
OnboardingUtil.generate_self_encryption_key(keys)
OnboardingUtil.store_pkam_public_key(conn, keys)
OnboardingUtil.store_public_encryption_key(conn, atsign.without_prefix, keys)
OnboardingUtil.delete_cram_key(conn)
KeysUtil.save_keys(str(atsign), keys)
out(enc_pub=keys[KeysUtil.encryption_public_key_name])
os._exit(0)
"""
    )
    env = dict(sdk_env(at_server, home), CRAM_SECRET=secret or "")
    got = result(atsdk_python.run(script, env=env, timeout=60).stdout)
    path = default_keys_path(name, home)
    path.chmod(0o600)
    k = AtKeys.load(path)
    assert k.atsign == name and k.encrypt_public_b64 == got["enc_pub"]
    assert k.enrollment_id is None

    async def main() -> None:
        c = await connect(at_server, k)
        await c.put("x.interop", "ours")
        assert await c.get("x.interop") == "ours"
        assert rsa.public_to_b64(await c.public_key(name)) == got["enc_pub"]
        await c.close()

    _compat.run(main())


def test_atsdk_shares_and_notifies_to_us(atsdk_python, at_server, keys, home) -> None:
    """atsdk creates the shared key; we decrypt its shared value and its notification."""
    alice = fresh(at_server, keys, "alice")  # atsdk
    bob = fresh(at_server, keys, "bob")  # ours
    alice.save(default_keys_path(alice.atsign, home))
    script = (
        PRELUDE
        + f"""
c = AtClient(AtSign({alice.atsign!r}), root_address=ROOT)
k = SharedKey("secret", AtSign({alice.atsign!r}), AtSign({bob.atsign!r})).set_namespace("interop")
c.put(k, "value from atsdk")
n = SharedKey("ping", AtSign({alice.atsign!r}), AtSign({bob.atsign!r})).set_namespace("interop")
nid = c.notify(n, "notification from atsdk")
out(nid=nid)
os._exit(0)
"""
    )
    got = result(atsdk_python.run(script, env=sdk_env(at_server, home), timeout=60).stdout)

    async def main() -> None:
        b = await connect(at_server, bob)
        assert await b.get("secret.interop", shared_by=alice.atsign) == "value from atsdk"
        async with b.monitor("interop", since=0) as mon:
            first = await mon.next(timeout=10)  # autoNotify of the shared update
            n = await mon.next(timeout=10)
        assert first.short_key == "secret.interop" and first.value == "value from atsdk"
        assert n.id == got["nid"] and n.decrypted
        assert n.value == "notification from atsdk" and n.short_key == "ping.interop"
        # the pair atsdk made follows the official layout: bob can unwrap "their copy"
        theirs = await b.execute(f"lookup:shared_key{alice.atsign}")
        k = rsa.decrypt(bob.encrypt_private, theirs).decode()
        assert k == await b.shared_keys.incoming(alice.atsign)
        await b.close()

    _compat.run(main())


def test_we_share_and_notify_to_atsdk(atsdk_python, at_server, keys, home) -> None:
    """We create the shared key; atsdk reads our shared value and decrypts our notification."""
    alice = fresh(at_server, keys, "alice")  # ours
    bob = fresh(at_server, keys, "bob")  # atsdk
    bob.save(default_keys_path(bob.atsign, home))

    async def send() -> str:
        a = await connect(at_server, alice)
        await a.put("secret.interop", "value from noports", shared_with=bob.atsign)
        nid = await a.notify(bob.atsign, "ping", "notification from noports ✓", namespace="interop")
        await a.close()
        return nid

    nid = _compat.run(send())
    script = (
        PRELUDE
        + f"""
q = queue.Queue()
c = AtClient(AtSign({bob.atsign!r}), root_address=ROOT, queue=q)
k = SharedKey("secret", AtSign({alice.atsign!r}), AtSign({bob.atsign!r})).set_namespace("interop")
value = c.get(k)
threading.Thread(target=c.start_monitor, args=("interop",), daemon=True).start()
deadline = time.time() + 30
seen = []
while time.time() < deadline and len(seen) < 2:
    try:
        ev = q.get(timeout=0.5)
    except queue.Empty:
        continue
    if ev.event_type in (AtEventType.UPDATE_NOTIFICATION, AtEventType.SHARED_KEY_NOTIFICATION):
        c.handle_event(q, ev)
    elif ev.event_type == AtEventType.DECRYPTED_UPDATE_NOTIFICATION:
        d = ev.event_data
        seen.append([d["id"], d["key"], d["decryptedValue"]])
out(value=value, seen=seen)
os._exit(0)
"""
    )
    got = result(atsdk_python.run(script, env=sdk_env(at_server, home), timeout=60).stdout)
    assert got["value"] == "value from noports"
    # first the autoNotify of the shared update, then our notification, both decrypted
    assert got["seen"][0][1:] == [
        f"{bob.atsign}:secret.interop{alice.atsign}",
        "value from noports",
    ]
    assert got["seen"][1] == [
        nid,
        f"{bob.atsign}:ping.interop{alice.atsign}",
        "notification from noports ✓",
    ]
