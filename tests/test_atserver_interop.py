"""Interop: the official Python SDK (``atsdk`` from PyPI) against our embedded server.

atsdk takes the root as ``AtClient(..., root_address=Address(host, port))`` and builds its TLS
context with ``ssl.create_default_context()``, so it trusts our CA through ``SSL_CERT_FILE``.
It loads keys from ``~/.atsign/keys/@x_key.atKeys``: we write them with our own ``AtKeys``.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.fixtures_at import AtServerProcess, Wire

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

SCRIPT = r"""
import json, os, queue, sys, threading, time
from at_client import AtClient
from at_client.common import AtSign
from at_client.connections import Address
from at_client.connections.notification.atevents import AtEventType
from at_client.common.keys import PublicKey, SelfKey, SharedKey

host, port = os.environ["NOPORTS_ROOT"].rsplit(":", 1)
root = Address(host, int(port))
A, B = AtSign(sys.argv[1]), AtSign(sys.argv[2])
out = {}
alice = AtClient(A, root_address=root)
bob_q = queue.Queue()
bob = AtClient(B, root_address=root, queue=bob_q)

alice.put(PublicKey("card", A), "hello world")
out["public"] = bob.get(PublicKey("card", A))
alice.put(SelfKey("note", A), "self secret")
out["self"] = alice.get(SelfKey("note", A))
alice.put(SharedKey("msg", A, B), "for bob only")
out["shared"] = bob.get(SharedKey("msg", A, B))
out["shared_by_me"] = alice.get(SharedKey("msg", A, B))
out["scan"] = sorted(k.__str__() for k in alice.get_at_keys(".*", fetch_metadata=True))

threading.Thread(target=bob.start_monitor, args=(r"sshnp",), daemon=True).start()
time.sleep(1.0)
sent = []
for i in range(3):
    k = SharedKey(f"ping{i}", A, B)
    k.set_namespace("dev.sshnp") if hasattr(k, "set_namespace") else None
    sent.append(alice.notify(k, f"payload {i}"))
got, deadline = [], time.time() + 20
while len(got) < 3 and time.time() < deadline:
    try:
        ev = bob_q.get(timeout=1)
    except queue.Empty:
        continue
    if ev.event_type == AtEventType.UPDATE_NOTIFICATION:
        bob.handle_event(bob_q, ev)
    elif ev.event_type == AtEventType.DECRYPTED_UPDATE_NOTIFICATION:
        got.append([ev.event_data["id"], ev.event_data["decryptedValue"]])
    elif ev.event_type == AtEventType.MONITOR_EXCEPTION:
        out.setdefault("monitor_errors", []).append(ev.event_data.get("value"))
out["sent"] = sent
out["got"] = got
print("RESULT " + json.dumps(out))
sys.stdout.flush()
os._exit(0)
"""


def test_atsdk_against_our_server(
    at_server: AtServerProcess, atsdk_python, keys, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:6]
    alice = keys("@alice").replace(atsign=f"@sdka{tag}")
    bob = keys("@bob").replace(atsign=f"@sdkb{tag}")
    home = tmp_path / "home"
    for k in (alice, bob):
        at_server.add(k.atsign, k)
        k.save(home / ".atsign" / "keys" / f"{k.atsign}_key.atKeys")
    env = {
        **at_server.env,
        "HOME": str(home),
        "SSL_CERT_FILE": at_server.ca_file,
        "REQUESTS_CA_BUNDLE": at_server.ca_file,
    }
    proc = atsdk_python.run(
        SCRIPT.replace("sys.argv[1]", repr(alice.atsign)).replace("sys.argv[2]", repr(bob.atsign)),
        env=env,
        timeout=90,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"atsdk failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    out = json.loads(lines[-1][len("RESULT ") :])
    assert out["public"] == "hello world"
    assert out["self"] == "self secret"
    assert out["shared"] == "for bob only" and out["shared_by_me"] == "for bob only"
    assert any("card" in k for k in out["scan"])
    assert "monitor_errors" not in out, out.get("monitor_errors")
    assert [g[1] for g in out["got"]] == ["payload 0", "payload 1", "payload 2"]
    assert [g[0] for g in out["got"]] == out["sent"]
    # and what atsdk stored is readable with the raw protocol (shared key cached for bob)
    w = Wire(at_server.root, at_server.ca_file)
    try:
        assert w.pkam(bob) == "data:success"
        assert w.data(f"llookup:cached:{bob.atsign}:shared_key{alice.atsign}")
    finally:
        w.close()
