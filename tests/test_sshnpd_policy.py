"""sshnpd with ``-p @policy``: the real ``npa`` service decides who may connect to what (spec 8).

Checks the daemon's NPA client end to end: allowed client served (ssh through the real sshd),
per-client permit-open from the policy with the official wording, unknown clients ignored,
the 15 s decision cache, and the policy heartbeat D9 reaching the service.
"""

from __future__ import annotations

import json
import re

from noports.sshnpd.npa_client import decision_from_response, parse_response_key
from tests.test_sshnpd_e2e import READY, ssh_session
from tests.test_sshnpd_flows import wait_log
from tests.test_sshnpd_support import NpClient, arun


def test_policy_manager_authorises_via_npa(np_env, tmp_path):
    daemon = np_env.atsign("device")
    client = np_env.atsign("client")
    stranger = np_env.atsign("stranger")
    policy = np_env.atsign("policy")
    sshd = np_env.sshd()
    pol = tmp_path / "policy.toml"
    pol.write_text(f'[users."{client}"]\ndevice_names = {{ "dev3" = ["localhost:{sshd.port}"] }}\n')
    audit = tmp_path / "audit.jsonl"
    npa = np_env.spawn("npa", "-a", policy, "--policy", str(pol), "--audit-log", str(audit),
                       "-v", ready=r"monitor started")
    proc = np_env.spawn("sshnpd", "-a", daemon, "-p", policy, "-d", "dev3", "--device-group",
                        "lab", "--local-sshd-port", str(sshd.port), "-v", ready=READY)

    async def main() -> None:
        async with NpClient(np_env, client, daemon, "dev3") as c, \
                NpClient(np_env, stranger, daemon, "dev3") as s:
            info = await c.ping()
            assert info is not None and info["deviceGroupName"] == "lab"
            assert info["allowedServices"] == ["*:*"]       # -p without --po
            await ssh_session(c, sshd)
            g = await c.grant()
            r = await c.send("npt_request", c.npt_payload(g, "localhost", 3389), g.sid)
            assert r == "Client is not permitted connections to localhost:3389"
            assert await s.ping(timeout=4) is None
            await wait_log(proc, rf"ignoring a notification from {re.escape(stranger)}:")

    arun(main(), 90)
    decisions = [json.loads(ln) for ln in audit.read_text().splitlines() if ln.strip()]
    asked = [d for d in decisions if client in json.dumps(d)]
    assert len(asked) == 1, decisions          # ping, ssh and npt within 15 s: one check
    assert any(stranger in json.dumps(d) for d in decisions)
    npa.wait_for(rf"heartbeat from device dev3 of {re.escape(daemon)}", 10)


def test_npa_response_parsing():
    assert parse_response_key("success.12.auth_checks.__rpcs.sshnp") == ("success", 12)
    assert parse_response_key("request.12.auth_checks.__rpcs.sshnp") is None
    assert parse_response_key("success.12.auth_checks.__rpcs.sshnp.x") is None
    ok = decision_from_response("success", {"reqId": 1, "payload": {
        "authorized": True, "message": None, "permitOpen": ["localhost:22", "bad\n:1", 7]}})
    assert ok.authorized and ok.permit.allowed_services() == ["localhost:22"]
    assert len(ok.permit.rejected) == 2
    for resp in (("success", {"payload": {"authorized": "yes"}}),
                 ("success", {"payload": None}), ("nack", {"payload": {"message": "m"}}),
                 ("error", {})):
        d = decision_from_response(*resp)
        assert not d.authorized and not d.permit
