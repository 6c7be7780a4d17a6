"""at_activate's decisions in memory (``noports.cli.activate_steps``): no socket, no prompt.

The command lines are parsed by the real parser; the results fed to the event functions are
the real ``noports.at.onboard`` types. The end-to-end runs (real atServer, official tool) are
``test_activate_onboard``, ``test_activate_apkam`` and ``test_activate_official``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from noports.at.onboard import Enrollment, Onboarded
from noports.cli import activate_steps as steps
from noports.cli.at_activate import build_parser
from noports.crypto.atkeys import AtKeys
from noports.errors import ConfigError

A = ["-a", "@alice"]


def _args(*argv: str):  # type: ignore[no-untyped-def]
    return build_parser().parse_args(list(argv))


def _enr(eid: str, app: str | None, dev: str | None, status: str = "pending") -> Enrollment:
    return Enrollment(eid, app, dev, {"sshnp": "rw"}, status)


# -- plan: the checks before any secret or socket ------------------------------------------


def test_plan_of_commands_that_do_not_manage() -> None:
    assert steps.plan(_args("status", *A)) == steps.Plan("status")
    assert steps.plan(_args("onboard", *A)) == steps.Plan("onboard")
    p = steps.plan(_args("enroll", *A, "-p", "app", "-n", '"sshnp":"rw",sshrvd:r', "-e", "1h"))
    assert p == steps.Plan("enroll", ttl_ms=3_600_000, namespaces={"sshnp": "rw", "sshrvd": "r"})
    assert not p.manages
    assert steps.plan(_args("list", *A)).manages and steps.plan(_args("auto", *A)).manages


def test_plan_passcode_lifetimes() -> None:
    assert steps.plan(_args("otp", *A)).ttl_ms is None  # the server's default
    assert steps.plan(_args("otp", *A, "-e", "10m")).ttl_ms == 600_000
    assert steps.plan(_args("otp", *A, "-e", "10m", "--ttl", "30")).ttl_ms == 30_000  # --ttl wins
    assert steps.plan(_args("spp", *A, "-s", "abc123", "-e", "0")).ttl_ms is None  # 0: no expiry
    assert steps.plan(_args("spp", *A, "-s", "ABCdef123456", "-e", "7d")).ttl_ms == 7 * 86_400_000


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["spp", *A, "-s", "abc12"], "6 to 16"),  # too short
        (["spp", *A, "-s", "abc-123"], "alphanumeric"),
        (["spp", *A, "-s", "a" * 17], "6 to 16"),
        (["otp", *A, "--ttl", "0"], "--ttl must be positive"),
        (["otp", *A, "-e", "soon"], "soon"),
        (["enroll", *A, "-p", "app", "-n", "sshnp:x"], "bad namespace"),
        (["enroll", *A, "-p", "app", "-n", "sshnp,sshnp"], "twice"),
    ],
)
def test_plan_refuses_bad_input_with_a_config_error(argv: list[str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as exc:
        steps.plan(_args(*argv))
    assert exc.value.exit_code == 2


def test_enroll_namespaces_are_checked_before_the_expiry() -> None:
    """Both bad: the namespaces error is the one reported (the order the driver always had)."""
    with pytest.raises(ConfigError, match="namespace"):
        steps.plan(_args("enroll", *A, "-p", "app", "-n", "x:y", "-e", "soon"))


# -- filters ---------------------------------------------------------------------------------


def test_selection_needs_a_filter_and_filters_match_app_and_device() -> None:
    with pytest.raises(ConfigError, match="at least one of -i/--enrollmentId"):
        steps.selection_filters(_args("approve", *A))
    with pytest.raises(ConfigError, match="-A/--arx: bad regular expression"):
        steps.selection_filters(_args("deny", *A, "-A", "("))
    arx, drx = steps.selection_filters(_args("approve", *A, "-A", "^ssh", "-D", "pi"))
    items = [
        _enr("1", "sshnp", "pi4"),
        _enr("2", "sshnp", "laptop"),
        _enr("3", "npt", "pi4"),
        _enr("4", None, None),
    ]
    assert [e.enrollment_id for e in steps.matching(items, arx, drx)] == ["1"]
    # list: no filter means everything, a missing name matches as ""
    none, _ = steps.filters(_args("list", *A))
    assert none is None and len(steps.matching(items, None, None)) == 4
    only_dev = steps.regex("^$", "-D/--drx")
    assert [e.enrollment_id for e in steps.matching(items, None, only_dev)] == ["4"]


def test_auto_filters() -> None:
    with pytest.raises(ConfigError, match="-L/--limit must be at least 1"):
        steps.auto_filters(_args("auto", *A, "-A", "x", "-L", "0"))
    with pytest.raises(ConfigError, match="auto: you must supply"):
        steps.auto_filters(_args("auto", *A))
    arx, drx = steps.auto_filters(_args("auto", *A, "-D", "^pi"))
    assert arx is None and drx is not None
    assert steps.matches(arx, drx, "anything", "pi4") and not steps.matches(arx, drx, "x", "nas")


def test_new_request_reads_each_enrollment_notification_once() -> None:
    seen: set[str] = set()
    key = "@alice:e1.new.enrollments.__manage@alice"
    value = json.dumps({"appName": "sshnp", "deviceName": "pi4"})
    assert steps.new_request(key, value, seen) == ("e1", "sshnp", "pi4")
    assert steps.new_request(key, value, seen) is None  # seen
    assert seen == {"e1"}
    # other notifications, and bad values (nothing crashes; names become "")
    assert steps.new_request("@alice:e2.other.key@alice", value, seen) is None
    assert steps.new_request("e3.new.enrollments.__manage@alice", "not json", seen) == (
        "e3",
        "",
        "",
    )
    assert steps.new_request("e4.new.enrollments.__manage", "[1, 2]", seen) == ("e4", "", "")
    assert steps.new_request("e5.new.enrollments.__manage", None, seen) == ("e5", "", "")


# -- events: the json object and the text line ----------------------------------------------


def test_events_print_what_the_official_tool_prints() -> None:
    assert steps.reply("approved", "e1") == 'data:{"status":"approved","enrollmentId":"e1"}'
    e = _enr("e1", "sshnp", "pi4", status="approved")
    obj, text = steps.approved_event(e)
    assert obj == {"enrollmentId": "e1", "status": "approved", "namespaces": {"sshnp": "rw"}}
    assert text == 'Server response: data:{"status":"approved","enrollmentId":"e1"}'
    assert steps.verdict_event("e2", "denied") == (
        {"enrollmentId": "e2", "status": "denied"},
        'Server response: data:{"status":"denied","enrollmentId":"e2"}',
    )
    assert steps.deleted_event("e3", "deleted")[1] == (
        'Server response: {"status":"deleted","enrollmentId":"e3"}'
    )
    assert steps.fetched_event("e4", {"appName": "a", "namespace": {"x": "r"}}) == (
        {"enrollmentId": "e4", "appName": "a", "namespace": {"x": "r"}},
        "Fetched enrollment OK: {appName: a, namespace: {x: r}}",
    )
    assert steps.otp_event("ABC123", None) == ({"otp": "ABC123", "ttlSeconds": None}, "ABC123")
    assert steps.otp_event("ABC123", 90_000)[0]["ttlSeconds"] == 90.0
    assert steps.spp_event("ok") == ({"spp": "set", "response": "ok"}, "Server response: data:ok")
    assert steps.action_line("approve", e) == (
        'Approving enrollmentId e1 with appName "sshnp" and deviceName "pi4"'
    )
    assert steps.action_line("unrevoke", e) == "Un-Revoking enrollmentId e1"
    assert steps.SELECT_STATUS.get("unrevoke", "revoked") == "revoked"


def test_onboarded_and_enrolled_events(tmp_path: Path) -> None:
    keys = AtKeys.generate("@alice")
    done = Onboarded(keys, tmp_path / "@alice_key.atKeys", "e9")
    obj, text = steps.onboarded_event(done)
    assert obj == {
        "atsign": "@alice",
        "enrollmentId": "e9",
        "keysFile": str(done.path),
        "status": "activated",
    }
    assert text == f"@alice activated; keys saved to {done.path}"
    obj, text = steps.enrolled_event(done)
    assert obj == {"enrollmentId": "e9", "status": "approved", "keysFile": str(done.path)}
    assert text == f"enrollment e9 approved; keys saved to {done.path}"
