"""APKAM against the real server: onboarding, OTP-gated enrollment, states in pkam, namespaces."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

import pytest

from noports.crypto import rsa
from noports.crypto.atkeys import AtKeys
from tests.fixtures_at import AtServerProcess, Wire

pytestmark = pytest.mark.timeout(90)


def enroll_line(op: str, **params: object) -> str:
    return f"enroll:{op}:" + json.dumps(params, separators=(",", ":"))


def apkam_pkam(w: Wire, atsign: str, key: rsa.PrivateKey, eid: str | None) -> str:
    """pkam in the Dart form with enrollmentId; returns the response line."""
    challenge = w.data(f"from:{atsign}")
    sig = rsa.sign(key, challenge.encode())
    line = (
        "pkam:signingAlgo:rsa2048:hashingAlgo:sha256:"
        + (f"enrollmentId:{eid}:" if eid else "")
        + sig
    )
    w.send(line)
    resp = w.readline()
    if resp == "data:success":
        w.prompt = f"{atsign}@"
    w.read_prompt()
    return resp


@pytest.fixture
def onboarded(at_server: AtServerProcess, wire: Callable[..., Wire], keys: Callable[[str], AtKeys]):
    """A fresh atSign onboarded through CRAM + enroll:request (first device, auto-approved)."""
    atsign = "@ap_" + uuid.uuid4().hex[:8]
    secret = at_server.add_fast(atsign)
    assert secret
    mgr_key = keys("@apkam_manager").pkam_private
    w = wire()
    assert w.cram(atsign, secret) == "data:success"
    resp = json.loads(
        w.data(
            enroll_line(
                "request",
                appName="wavi",
                deviceName="laptop",
                apkamPublicKey=rsa.public_to_b64(mgr_key.public_key()),
                encryptedDefaultEncryptionPrivateKey="ENCPRIV",
                encryptedDefaultSelfEncryptionKey="SELFKEY",
            )
        )
    )
    assert resp["status"] == "approved"
    w.data("delete:privatekey:at_secret")
    w.close()
    return atsign, mgr_key, resp["enrollmentId"]


def test_cram_onboarding_auto_approves(wire: Callable[..., Wire], onboarded) -> None:
    atsign, mgr_key, eid = onboarded
    w = wire()
    assert apkam_pkam(w, atsign, mgr_key, eid) == "data:success"
    # the APKAM key is also the legacy PKAM key (atsdk never sends enrollmentId)
    w2 = wire()
    assert apkam_pkam(w2, atsign, mgr_key, None) == "data:success"
    got = json.loads(w.data(f"keys:get:keyName:{eid}.default_enc_private_key.__manage{atsign}"))
    assert got["value"] == "ENCPRIV" and got["enrollmentId"] == eid
    got = json.loads(w.data(f"keys:get:keyName:{eid}.default_self_enc_key.__manage{atsign}"))
    assert got["value"] == "SELFKEY"
    fetched = json.loads(w.data(enroll_line("fetch", enrollmentId=eid)))
    assert fetched["status"] == "approved" and fetched["namespace"] == {"__manage": "rw", "*": "rw"}
    info = json.loads(w.data("info"))
    assert info["apkam_metadata"]["enrollmentId"] == eid
    assert apkam_pkam(wire(), atsign, mgr_key, str(uuid.uuid4())).startswith("error:AT0028:")


def test_otp_enrollment_lifecycle(wire: Callable[..., Wire], onboarded, keys) -> None:
    atsign, mgr_key, mgr_eid = onboarded
    dev_key = keys("@apkam_device").pkam_private
    mgr = wire()
    assert apkam_pkam(mgr, atsign, mgr_key, mgr_eid) == "data:success"
    watcher = wire()
    assert apkam_pkam(watcher, atsign, mgr_key, mgr_eid) == "data:success"
    watcher.send("monitor:selfNotifications:0 __manage")
    watcher.monitoring = True
    otp = mgr.data("otp:get")
    assert len(otp) >= 6 and otp.isupper() is not False and "0" not in otp and "O" not in otp

    # new device: unauthenticated request with the OTP
    dev = wire()
    dev.data(f"from:{atsign}")
    req = dict(
        appName="sshnp",
        deviceName="dev1",
        namespaces={"sshnp": "rw"},
        otp=otp,
        apkamPublicKey=rsa.public_to_b64(dev_key.public_key()),
        encryptedAPKAMSymmetricKey="SYM",
    )
    pending = json.loads(dev.data(enroll_line("request", **req)))
    assert pending["status"] == "pending"
    eid = pending["enrollmentId"]
    note = watcher.notification()
    assert note["key"] == f"{eid}.new.enrollments.__manage" and note["from"] == note["to"] == atsign
    assert json.loads(note["value"])["encryptedAPKAMSymmetricKey"] == "SYM"
    # the OTP is single use
    assert dev.cmd(enroll_line("request", **req)).startswith("error:AT0011")
    # pending: pkam refused with the response-path error form
    assert (
        apkam_pkam(wire(), atsign, dev_key, eid) == f"error:AT0026:enrollment_id: {eid} is pending"
    )

    listed = json.loads(mgr.data(enroll_line("list", enrollmentStatusFilter=["pending"])))
    assert list(listed) == [f"{eid}.new.enrollments.__manage{atsign}"]
    assert listed[f"{eid}.new.enrollments.__manage{atsign}"]["encryptedAPKAMSymmetricKey"] == "SYM"
    approved = json.loads(
        mgr.data(
            enroll_line(
                "approve",
                enrollmentId=eid,
                encryptedDefaultEncryptionPrivateKey="E3",
                encryptedDefaultSelfEncryptionKey="E4",
            )
        )
    )
    assert approved == {"status": "approved", "enrollmentId": eid}
    assert mgr.cmd(enroll_line("approve", enrollmentId=eid)).startswith("error:AT0030")
    assert f"public:sshnp.dev1.pkam.__pkams.__public_keys{atsign}" in json.loads(
        mgr.data("scan:showHidden:true")
    )

    d = wire()
    assert apkam_pkam(d, atsign, dev_key, eid) == "data:success"
    assert (
        json.loads(d.data(f"keys:get:keyName:{eid}.default_enc_private_key.__manage{atsign}"))[
            "value"
        ]
        == "E3"
    )
    assert d.cmd(f"keys:get:keyName:{mgr_eid}.default_enc_private_key.__manage{atsign}").startswith(
        "error:AT0009"
    )
    # the device cannot manage enrollments or make OTPs
    assert d.cmd(enroll_line("list")).startswith("error:AT0009")
    assert d.cmd("otp:get").startswith("error:AT0009")

    # revoke: the live device connection is closed and pkam then says revoked
    assert d.cmd(enroll_line("revoke", enrollmentId=eid)).startswith("error:AT0009")
    assert json.loads(mgr.data(enroll_line("revoke", enrollmentId=eid)))["status"] == "revoked"
    assert d.is_closed()
    assert apkam_pkam(wire(), atsign, dev_key, eid).startswith(f"error:AT0027:enrollment_id: {eid}")
    assert mgr.cmd(enroll_line("revoke", enrollmentId=mgr_eid)).startswith("error:AT0031")
    assert json.loads(mgr.data(enroll_line("unrevoke", enrollmentId=eid)))["status"] == "approved"
    assert apkam_pkam(wire(), atsign, dev_key, eid) == "data:success"


def test_deny_and_rate_limit(wire: Callable[..., Wire], onboarded, keys) -> None:
    atsign, mgr_key, mgr_eid = onboarded
    dev_key = keys("@apkam_device").pkam_private
    mgr = wire()
    assert apkam_pkam(mgr, atsign, mgr_key, mgr_eid) == "data:success"
    assert mgr.data("otp:put:Passcode123") == "ok"
    dev = wire()
    dev.data(f"from:{atsign}")
    base = dict(
        appName="a",
        deviceName="d",
        namespaces={"x": "r"},
        otp="Passcode123",
        apkamPublicKey=rsa.public_to_b64(dev_key.public_key()),
        encryptedAPKAMSymmetricKey="S",
    )
    ids = [json.loads(dev.data(enroll_line("request", **base)))["enrollmentId"] for _ in range(5)]
    assert dev.cmd(enroll_line("request", **base)).startswith(
        "error:AT0028"
    )  # 5 per hour per connection
    assert json.loads(mgr.data(enroll_line("deny", enrollmentId=ids[0])))["status"] == "denied"
    assert (
        apkam_pkam(wire(), atsign, dev_key, ids[0])
        == f"error:AT0025:enrollment_id: {ids[0]} is denied"
    )
    assert json.loads(mgr.data(enroll_line("delete", enrollmentId=ids[0])))["status"] == "deleted"
    t0 = time.monotonic()
    other = wire()
    other.data(f"from:{atsign}")
    assert other.cmd(enroll_line("request", **{**base, "otp": "WRONG1"})).startswith("error:AT0011")
    assert time.monotonic() - t0 >= 0.2  # bad OTPs are answered slowly
    assert other.cmd(enroll_line("request", **{**base, "namespaces": {"x": "bogus"}})).startswith(
        "error:AT0022"
    )


def test_namespace_enforcement(
    at_server: AtServerProcess, wire: Callable[..., Wire], onboarded, keys
) -> None:
    atsign, mgr_key, mgr_eid = onboarded
    dev_key = keys("@apkam_device").pkam_private
    mgr = wire()
    assert apkam_pkam(mgr, atsign, mgr_key, mgr_eid) == "data:success"
    otp = mgr.data("otp:get:ttl:60000")
    dev = wire()
    dev.data(f"from:{atsign}")
    eid = json.loads(
        dev.data(
            enroll_line(
                "request",
                appName="sshnp",
                deviceName="d1",
                namespaces={"sshnp": "rw", "audit": "r"},
                otp=otp,
                apkamPublicKey=rsa.public_to_b64(dev_key.public_key()),
                encryptedAPKAMSymmetricKey="S",
            )
        )
    )["enrollmentId"]
    mgr.data(
        enroll_line(
            "approve",
            enrollmentId=eid,
            encryptedDefaultEncryptionPrivateKey="a",
            encryptedDefaultSelfEncryptionKey="b",
        )
    )
    mgr.data(f"update:secret.other{atsign} private-stuff")
    mgr.data(f"update:log.audit{atsign} read-only")
    d = wire()
    assert apkam_pkam(d, atsign, dev_key, eid) == "data:success"
    assert d.data(f"update:cfg.dev1.sshnp{atsign} ok").isdigit()  # sub-namespace of sshnp
    assert d.cmd(f"update:x.other{atsign} no").startswith("error:AT0009")
    assert d.cmd(f"llookup:secret.other{atsign}").startswith("error:AT0009")
    assert d.data(f"llookup:log.audit{atsign}") == "read-only"
    assert d.cmd(f"update:log.audit{atsign} no").startswith("error:AT0009")  # r, not rw
    d.data(f"update:public:publickey{atsign} ENCPUB")  # reserved keys are always allowed
    assert d.data(f"plookup:publickey{atsign}") == "ENCPUB"
    assert d.cmd(f"llookup:shared_key.bob{atsign}").startswith("error:AT0015")  # reserved: allowed
    # ...but not the keys that decide who may log in
    assert d.cmd(
        "update:privatekey:at_pkam_publickey " + rsa.public_to_b64(dev_key.public_key())
    ).startswith("error:AT0009")
    assert d.cmd("llookup:privatekey:at_pkam_publickey").startswith("error:AT0009")
    assert d.cmd("delete:privatekey:at_secret").startswith("error:AT0009")
    # an enrollment publishes its own ESCR signing key, whatever its namespaces; not another's
    pk = rsa.public_to_b64(dev_key.public_key())
    assert d.data(f"update:public:_apsk.{eid}.a.__e{atsign} {pk}").isdigit()
    assert d.data(f"plookup:_apsk.{eid}.a.__e{atsign}") == pk
    assert d.cmd(f"update:public:_apsk.{mgr_eid}.a.__e{atsign} {pk}").startswith("error:AT0009")
    assert d.cmd(f"update:public:_apsk.primary.a.__e{atsign} {pk}").startswith("error:AT0009")
    visible = json.loads(d.data("scan"))
    assert f"cfg.dev1.sshnp{atsign}" in visible and f"secret.other{atsign}" not in visible
    # monitor: only notifications in enrolled namespaces
    sender_name = "@apsend_" + uuid.uuid4().hex[:6]
    sender = keys("@apkam_sender")

    sender = sender.replace(atsign=sender_name)
    at_server.add_fast(sender_name, sender)
    s = wire()
    assert s.pkam(sender) == "data:success"
    d.send("monitor")
    d.monitoring = True
    s.data(f"notify:{atsign}:hidden.other{sender_name}:x")
    s.data(f"notify:{atsign}:req.d1.sshnp{sender_name}:y")
    got = d.notification()
    assert got["key"] == f"{atsign}:req.d1.sshnp{sender_name}"
