"""Session event logging when requested (latest spec 8.2), with real programs: the policy
atSign sends the daemon ``config.<dev>.devices.policy`` with an ``eventLoggingConfig``; the
daemon names it in its session replies and hands it to the session's relay
(``logging.<sid>.sessions``), which accepts it from a participant only, once."""

from __future__ import annotations

import json

import pytest

from noports.session.client import SessionSpec, establish
from noports.session.features import npt_required_features
from tests.test_npt_e2e import EchoServer
from tests.test_srvd_app import arun, connect, start_srvd

pytestmark = pytest.mark.timeout(120)


def test_event_logging_config_reaches_reply_and_relay(np_env) -> None:
    client_at = np_env.atsign("client")
    dev_at = np_env.atsign("device")
    relay = np_env.atsign("relay")
    policy = np_env.atsign("policy")
    logger_at = np_env.atsign("logger")
    srvd = start_srvd(np_env, relay)
    daemon = np_env.spawn(
        "sshnpd",
        "-a",
        dev_at,
        "-m",
        client_at,
        "-p",
        policy,
        "-d",
        "ev1",
        "--po",
        "*:*",
        "-v",
        ready=r"Monitor .*monitor started",
        timeout=30,
    )
    echo = EchoServer()
    elc = {"atSign": logger_at, "topic": "sessions.audit", "ttln": 60000}

    async def go():
        p = await connect(np_env, policy)
        c = await connect(np_env, client_at)
        try:
            spec = SessionSpec(
                kind="npt",
                daemon=dev_at,
                device="ev1",
                relay=relay,
                required=npt_required_features(),
                remote_host="127.0.0.1",
                remote_port=echo.port,
            )
            before = await establish(c, spec)
            assert before.payload["eventLoggingConfig"] is None  # not asked for yet
            # the request went out in the latest field order (signature verified by the
            # daemon over its re-encoding); the reply names the keys per twinKeys
            assert list(before.payload)[2:6] == ["aesKeyC2D", "ivC2D", "aesKeyD2C", "ivD2C"]
            assert "sessionAESKey" not in before.payload
            single = await establish(c, spec.replace(twin_keys=False))
            assert list(single.payload)[2:6] == ["sessionAESKey", "sessionIV", "aesKeyD2C", "ivD2C"]
            assert single.payload["aesKeyD2C"] is None and single.payload["ivD2C"] is None
            await p.notify(
                dev_at,
                "config.ev1.devices.policy",
                json.dumps({"eventLoggingConfig": elc}),
                namespace="sshnp",
                ttln_ms=60_000,
            )
            daemon.wait_for("session event logging to", 20)
            est = await establish(c, spec)
            assert est.payload["eventLoggingConfig"] == elc
            srvd.wait_for(rf"session {est.session_id}: event logging to {logger_at}", 20)
            # a stranger (not a participant) cannot set it for a live session
            s = await connect(np_env, logger_at)
            try:
                await s.notify(
                    relay,
                    f"logging.{before.session_id}.sessions.sshrvd",
                    json.dumps(elc),
                    ttln_ms=60_000,
                )
            finally:
                await s.close()
            srvd.wait_for(rf"is not a participant in session {before.session_id}", 20)
        finally:
            await c.close()
            await p.close()

    try:
        arun(go(), timeout=100)
    finally:
        echo.close()


def test_npt_heartbeats_only_to_daemons_that_advertise_them() -> None:
    """``heartbeat:<n>`` on the control channel only when the ping said
    ``controlChannelHeartbeats`` and the control channel is encrypted (latest spec 3.3)."""
    from noports.crypto.stream import CtrKeys
    from noports.npt.run import HEARTBEAT_S, control_heartbeat
    from noports.session.client import Established
    from noports.session.features import parse_ping_response, ping_response_json

    ours = parse_ping_response(
        ping_response_json(device="d", accepts_public_keys=False, allowed_services=[])
    )
    old = parse_ping_response('{"version":"5.6.3","supportedFeatures":{"srAuth":true}}')
    keys = CtrKeys.generate(twin=True)

    def est(info, crypto):
        return Established("sid", "h", 1, None, crypto, {}, info)

    assert control_heartbeat(est(ours, keys)) == HEARTBEAT_S
    assert control_heartbeat(est(old, keys)) is None  # not advertised: never sent
    assert control_heartbeat(est(ours, None)) is None  # clear control channel: not sent
    assert control_heartbeat(est(None, keys)) is None  # no ping reply: not sent
