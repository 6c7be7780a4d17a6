"""Device names, atSigns and session ids: reject, never sanitise (reliability T8)."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from noports.at import commands
from noports.at.commands import CommandError
from noports.atserver import keys as server_keys
from noports.crypto.atkeys import default_keys_path
from noports.errors import AtError, ConfigError
from noports.names import (
    InvalidNameError,
    is_valid_atsign,
    is_valid_device_name,
    is_valid_session_id,
    normalise_atsign,
    snakify,
    validate_atsign,
    validate_device_group,
    validate_device_name,
    validate_session_id,
)

FULL = re.compile(r"[a-z0-9_][a-z0-9_\-]{1,35}")


def _reference(name: str) -> str | None:
    """Independent model of the rule: printable ASCII, snakify, then full match."""
    if any(not (0x20 <= ord(c) <= 0x7E) for c in name):
        return None
    canon = name.lower().replace(" ", "_")
    return canon if FULL.fullmatch(canon) else None


@pytest.mark.parametrize(
    "name,canon",
    [
        ("default", "default"),
        ("MyPi", "mypi"),
        ("my pi", "my_pi"),
        ("My Raspberry Pi", "my_raspberry_pi"),
        ("_x", "_x"),
        ("a-", "a-"),
        ("0" * 36, "0" * 36),
        ("__none__", "__none__"),
    ],
)
def test_valid_names_canonicalised(name: str, canon: str) -> None:
    assert validate_device_name(name) == canon
    assert is_valid_device_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "a",
        "-ab",
        "0" * 37,
        "a.b",
        "a/b",
        "../etc",
        "a%h",
        "%h",
        "dev\n",
        "dev\r",
        "dev\x00",
        "dev\t1",
        "de\x1bv",
        "dev\x7f",
        "dev;rm",
        "dev$(id)",
        "dev`id`",
        "dév",
        "ｄｅｖ",
        "dev\u200b",
        "\u212aelvin",  # KELVIN SIGN lower-cases to ASCII 'k'
        "dev\u0131",  # dotless i
        "dev\n INFO auth success @admin",
        "a:b",
        "a@b",
        "a*b",
        "a b\n",
    ],
)
def test_invalid_names_rejected(name: str) -> None:
    with pytest.raises(InvalidNameError):
        validate_device_name(name)
    assert not is_valid_device_name(name)


def test_error_is_config_error_and_message_is_log_safe() -> None:
    with pytest.raises(ConfigError) as ei:
        validate_device_name("x\n\x1b[2Jowned")
    assert "\n" not in str(ei.value) and "\x1b" not in str(ei.value)


def test_kelvin_sign_does_not_alias_ascii() -> None:
    assert "\u212a".lower() == "k"  # why the ASCII check has to come first
    with pytest.raises(InvalidNameError):
        snakify("\u212aey")


def test_non_string_rejected() -> None:
    assert not is_valid_device_name(None)
    assert not is_valid_device_name(b"device")


def test_device_group() -> None:
    assert validate_device_group("Lab Floor2") == "lab_floor2"
    with pytest.raises(InvalidNameError, match="device group"):
        validate_device_group("lab/1")


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=50))
def test_hypothesis_any_text_matches_reference(name: str) -> None:
    expect = _reference(name)
    if expect is None:
        with pytest.raises(InvalidNameError):
            validate_device_name(name)
    else:
        assert validate_device_name(name) == expect


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("aZ09_- \n\r\t\x00%/.\u212a\u0430ｄ\u200b"), max_size=40))
def test_hypothesis_hostile_alphabet(name: str) -> None:
    expect = _reference(name)
    if expect is None:
        with pytest.raises(InvalidNameError):
            validate_device_name(name)
    else:
        out = validate_device_name(name)
        assert out == expect and FULL.fullmatch(out)
        for bad in "\n\r\t\x00%/.":
            assert bad not in out


@settings(max_examples=200, deadline=None)
@given(st.from_regex(FULL, fullmatch=True))
def test_hypothesis_every_full_match_is_accepted_unchanged(name: str) -> None:
    assert validate_device_name(name) == name


# ---------------------------------------------------------------------------------- atSigns
@pytest.mark.parametrize(
    "raw,canon",
    [
        ("@alice", "@alice"),
        ("@Alice", "@alice"),
        ("@alice_bob-1", "@alice_bob-1"),
        ("@my.name", "@my.name"),
        ("@🦄", "@🦄"),
        ("@👩\u200d💻", "@👩\u200d💻"),
        ("@" + "a" * 54, "@" + "a" * 54),
    ],
)
def test_valid_atsigns(raw: str, canon: str) -> None:
    assert validate_atsign(raw) == canon
    assert is_valid_atsign(raw)


def test_add_at() -> None:
    assert validate_atsign("Alice", add_at=True) == "@alice"
    with pytest.raises(InvalidNameError):
        validate_atsign("alice")


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "@",
        "alice",
        "@@alice",
        "@ali ce",
        "@alice\n",
        "@alice\x00",
        "@al\x1bice",
        "@" + "a" * 55,
        "@ali:ce",
        "@ali/ce",
        "@ali%ce",
        "@ali*ce",
        "@ali,ce",
        "@ali'ce",
        '@ali"ce',
        "@ali#ce",
        "@ali?ce",
        "@ali\\ce",
        "@аlice",  # Cyrillic a
        "@\u212aelvin",
        "@.alice",
        "@alice.",
        "@a..b",
        "@ali{ce}",
        "@ali=ce",
        "@ali\u200bce",
    ],
)
def test_invalid_atsigns(raw: str) -> None:
    with pytest.raises(InvalidNameError):
        validate_atsign(raw)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_hypothesis_atsign_output_is_safe(raw: str) -> None:
    try:
        out = validate_atsign(raw)
    except InvalidNameError:
        return
    assert out.startswith("@") and len(out) <= 55
    assert not any(ord(c) < 0x21 or c in "\x7f:/%*,'\"#?\\{}=@" for c in out[1:])
    assert validate_atsign(out) == out  # canonical form is a fixed point


# ------------------------------------------------------------------------------ session ids
def test_session_ids() -> None:
    sid = str(uuid.uuid4())
    assert validate_session_id(sid) == sid
    assert validate_session_id(sid.upper()) == sid
    assert is_valid_session_id(sid)


@pytest.mark.parametrize(
    "sid",
    [
        "",
        "x",
        str(uuid.uuid1()),
        str(uuid.uuid4()) + "\n",
        "\n" + str(uuid.uuid4())[1:],
        str(uuid.uuid4()).replace("-", ""),
        "{" + str(uuid.uuid4())[1:-1] + "}",
        "00000000-0000-4000-c000-000000000000",  # wrong variant
        "00000000-0000-4000-8000-00000000000g",
        "../../../../etc/passwd-0000-0000-000000",
        None,
        5,
    ],
)
def test_bad_session_ids(sid: object) -> None:
    with pytest.raises(InvalidNameError):
        validate_session_id(sid)  # type: ignore[arg-type]
    assert not is_valid_session_id(sid)


# The one wire normaliser: the client and the server share it and differ only in the error.
@pytest.mark.parametrize(
    ("raw", "canon"),
    [
        ("alice", "@alice"),
        ("@Alice ", "@alice"),
        (" @BOB\n", "@bob"),
        ("@" + "a" * 55, "@" + "a" * 55),
    ],
)
def test_normalise_atsign(raw: str, canon: str) -> None:
    assert normalise_atsign(raw) == canon
    assert commands.atsign(raw) == canon
    assert server_keys.normalise_atsign(raw) == canon


@pytest.mark.parametrize("raw", ["", "@", "@a:b", "@a@b", "@a b", "a\tb", "@" + "a" * 56])
def test_normalise_atsign_refuses(raw: str) -> None:
    with pytest.raises(InvalidNameError):
        normalise_atsign(raw)
    with pytest.raises(CommandError):
        commands.atsign(raw)
    with pytest.raises(AtError) as info:
        server_keys.normalise_atsign(raw)
    assert info.value.code == "AT0003"


def test_key_file_names_keep_case(tmp_path: Path) -> None:
    # Key files are named by the atSign as given (plus '@'), not by the normalised one.
    base = tmp_path / ".atsign" / "keys"
    assert default_keys_path("Alice", tmp_path) == base / "@Alice_key.atKeys"
    assert default_keys_path(" @bob ", tmp_path) == base / "@bob_key.atKeys"
