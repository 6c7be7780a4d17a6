"""sshnpd with ``-p @policy``: the real ``npa`` service decides who may connect to what (spec 8).

Checks the daemon's NPA client end to end: allowed client served (ssh through the real sshd),
per-client permit-open from the policy with the official wording, unknown clients ignored,
the 15 s decision cache, and the policy heartbeat D9 reaching the service.
"""

from __future__ import annotations

import asyncio
import json
import re

from noports.sshnpd.npa_client import (
    TIMEOUT_MESSAGE,
    NpaClient,
    decision_from_response,
    parse_response_key,
)
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
    npa = np_env.spawn(
        "npa",
        "-a",
        policy,
        "--policy",
        str(pol),
        "--audit-log",
        str(audit),
        "-v",
        ready=r"monitor started",
    )
    proc = np_env.spawn(
        "sshnpd",
        "-a",
        daemon,
        "-p",
        policy,
        "-d",
        "dev3",
        "--device-group",
        "lab",
        "--local-sshd-port",
        str(sshd.port),
        "-v",
        "--log-format",
        "json",
        ready=READY,
    )

    async def main() -> None:
        async with (
            NpClient(np_env, client, daemon, "dev3") as c,
            NpClient(np_env, stranger, daemon, "dev3") as s,
        ):
            info = await c.ping()
            assert info is not None and info["deviceGroupName"] == "lab"
            assert info["allowedServices"] == ["*:*"]  # -p without --po
            await ssh_session(c, sshd)
            g = await c.grant()
            r = await c.send("npt_request", c.npt_payload(g, "localhost", 3389), g.sid)
            assert r == "Client is not permitted connections to localhost:3389"
            assert await s.ping(timeout=4) is None
            await wait_log(proc, rf"ignoring a notification from {re.escape(stranger)}:")

    arun(main(), 90)
    decisions = [json.loads(ln) for ln in audit.read_text().splitlines() if ln.strip()]
    asked = [d for d in decisions if client in json.dumps(d)]
    assert len(asked) == 1, decisions  # ping, ssh and npt within 15 s: one check
    assert any(stranger in json.dumps(d) for d in decisions)
    npa.wait_for(rf"heartbeat from device dev3 of {re.escape(daemon)}", 10)
    lines = proc.stderr.splitlines()  # --log-format json: every line is one JSON object
    assert lines and all(isinstance(json.loads(ln), dict) for ln in lines)
    assert any(
        json.loads(ln)["level"] == "notice" and re.search(READY, json.loads(ln)["msg"])
        for ln in lines
    )


def test_npa_client_cache_coalescing_timeout_and_spoofing():
    """NpaClient against an in-process responder (the policy side of the RPC, by hand)."""
    sent: list[tuple[str, str, dict]] = []

    async def main() -> None:
        npa: NpaClient

        async def notify(to: str, key: str, value: str) -> None:
            body = json.loads(value)
            sent.append((to, key, body))
            rid = body["reqId"]
            who = body["payload"]["clientAtsign"]
            if who == "@silent":
                return
            resp = f"success.{rid}.auth_checks.__rpcs.sshnp"
            # spoofed answers first: another sender, a mismatched reqId; then ack, then success
            npa.on_response(
                "@mallory",
                resp,
                json.dumps(
                    {
                        "reqId": rid,
                        "respType": "success",
                        "payload": {"authorized": True, "permitOpen": ["*:*"]},
                    }
                ),
            )
            npa.on_response(
                "@policy",
                resp,
                json.dumps(
                    {"reqId": rid + 1, "payload": {"authorized": True, "permitOpen": ["*:*"]}}
                ),
            )
            npa.on_response(
                "@policy",
                f"ack.{rid}.auth_checks.__rpcs.sshnp",
                json.dumps({"reqId": rid, "respType": "ack", "payload": {}}),
            )
            await asyncio.sleep(0.05)
            npa.on_response(
                "@policy",
                resp,
                json.dumps(
                    {
                        "reqId": rid,
                        "respType": "success",
                        "payload": {
                            "authorized": who == "@alice",
                            "message": None,
                            "permitOpen": ["localhost:22"],
                        },
                    }
                ),
            )

        now = [0.0]
        npa = NpaClient(
            notify,
            policy="@policy",
            daemon="@dev",
            device="d1",
            device_group="g",
            timeout=0.5,
            clock=lambda: now[0],
        )
        a1, a2 = await asyncio.gather(npa.check("@alice"), npa.check("@alice"))
        assert a1 is a2 and a1.authorized and str(a1.permit) == "localhost:22"
        assert len(sent) == 1  # concurrent checks coalesced
        assert sent[0][0] == "@policy" and sent[0][1].startswith("request.")
        assert sent[0][2]["payload"] == {
            "daemonAtsign": "@dev",
            "daemonDeviceName": "d1",
            "daemonDeviceGroupName": "g",
            "clientAtsign": "@alice",
        }
        assert (await npa.check("@alice")).authorized and len(sent) == 1  # cached
        now[0] = 16.0
        assert (await npa.check("@alice")).authorized and len(sent) == 2  # cache expired
        assert not (await npa.check("@bob")).authorized
        t0 = asyncio.get_running_loop().time()
        silent = await npa.check("@silent")
        assert not silent.authorized and silent.message == TIMEOUT_MESSAGE
        assert 0.4 < asyncio.get_running_loop().time() - t0 < 2

    arun(main(), 20)


def test_npa_response_parsing():
    assert parse_response_key("success.12.auth_checks.__rpcs.sshnp") == ("success", 12)
    assert parse_response_key("request.12.auth_checks.__rpcs.sshnp") is None
    assert parse_response_key("success.12.auth_checks.__rpcs.sshnp.x") is None
    ok = decision_from_response(
        "success",
        {
            "reqId": 1,
            "payload": {
                "authorized": True,
                "message": None,
                "permitOpen": ["localhost:22", "bad\n:1", 7],
            },
        },
    )
    assert ok.authorized and ok.permit.allowed_services() == ["localhost:22"]
    assert len(ok.permit.rejected) == 2
    for resp in (
        ("success", {"payload": {"authorized": "yes"}}),
        ("success", {"payload": None}),
        ("nack", {"payload": {"message": "m"}}),
        ("error", {}),
    ):
        d = decision_from_response(*resp)
        assert not d.authorized and not d.permit
