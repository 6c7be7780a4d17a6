"""Configuration precedence (CLI > env > TOML), strict TOML keys, env-style profile files."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from noports.config import (
    env_names,
    layers,
    load_env_file,
    load_toml,
    parse_args,
    parse_env_file,
    read_env,
)
from noports.errors import ConfigError


def _port(text: str) -> int:
    v = int(text)
    if not 1 <= v <= 65535:
        raise argparse.ArgumentTypeError("port out of range")
    return v


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sshnpd")
    p.add_argument("-a", "--atsign", required=True)
    p.add_argument("-d", "--device", default="default")
    p.add_argument("--local-sshd-port", type=int, default=22)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--relay-port", type=_port, default=443)
    p.add_argument("-s", "--sshpublickey", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--log-format", choices=("text", "json"), default="text")
    p.add_argument("-m", "--managers", action="append", default=None)
    p.add_argument("--root", default="root.atsign.org:64")
    p.add_argument("--secret")
    return p


def write(tmp_path: Path, text: str, name: str = "c.toml") -> Path:
    f = tmp_path / name
    f.write_text(text)
    return f


def test_env_names() -> None:
    assert env_names("sshnpd", "device") == ["NOPORTS_SSHNPD_DEVICE"]
    assert env_names("npt", "root") == ["NOPORTS_NPT_ROOT", "NOPORTS_ROOT"]
    assert env_names("at-activate", "ca_file") == ["NOPORTS_AT_ACTIVATE_CA_FILE", "NOPORTS_CA_FILE"]


def test_precedence_cli_over_env_over_file(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        'atsign = "@file"\ndevice = "filedev"\nlocal-sshd-port = 2022\n'
        'managers = ["@m1", "@m2"]\nsshpublickey = true\n',
    )
    env = {"NOPORTS_SSHNPD_DEVICE": "envdev", "NOPORTS_SSHNPD_CONFIG": str(cfg)}
    ns = parse_args(make_parser(), "sshnpd", [], environ=env)
    assert (ns.atsign, ns.device, ns.local_sshd_port, ns.managers, ns.sshpublickey) == (
        "@file",
        "envdev",
        2022,
        ["@m1", "@m2"],
        True,
    )
    assert ns.config == str(cfg)
    ns = parse_args(
        make_parser(),
        "sshnpd",
        ["-d", "clidev", "-m", "@cli", "--no-sshpublickey", "--config", str(cfg)],
        environ={"NOPORTS_SSHNPD_DEVICE": "envdev", "NOPORTS_SSHNPD_MANAGERS": "@e1,@e2"},
    )
    assert ns.device == "clidev"
    assert ns.managers == ["@cli"]  # CLI replaces env/file lists, it does not append
    assert ns.sshpublickey is False
    ns = parse_args(
        make_parser(), "sshnpd", ["-a", "@x"], environ={"NOPORTS_SSHNPD_MANAGERS": "@e1, @e2"}
    )
    assert ns.managers == ["@e1", "@e2"] and ns.config is None


def test_required_flag_satisfied_by_env_only(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        parse_args(make_parser(), "sshnpd", [], environ={"NOPORTS_SSHNPD_ATSIGN": "@e"}).atsign
        == "@e"
    )
    with pytest.raises(SystemExit) as ei:
        parse_args(make_parser(), "sshnpd", [], environ={})
    assert ei.value.code == 2


def test_typed_env_values() -> None:
    env = {
        "NOPORTS_SSHNPD_ATSIGN": "@a",
        "NOPORTS_SSHNPD_LOCAL_SSHD_PORT": "2222",
        "NOPORTS_SSHNPD_VERBOSE": "yes",
        "NOPORTS_SSHNPD_TIMEOUT": "1.5",
        "NOPORTS_LOG_FORMAT": "json",
        "NOPORTS_ROOT": "localhost:6464",
    }
    vals = read_env(make_parser(), "sshnpd", env)
    assert vals == {
        "atsign": "@a",
        "local_sshd_port": 2222,
        "verbose": True,
        "timeout": 1.5,
        "log_format": "json",
        "root": "localhost:6464",
    }
    # the program-specific variable beats the global one
    vals = read_env(make_parser(), "sshnpd", {"NOPORTS_ROOT": "a:1", "NOPORTS_SSHNPD_ROOT": "b:2"})
    assert vals["root"] == "b:2"


@pytest.mark.parametrize(
    "var,value,match",
    [
        ("NOPORTS_SSHNPD_LOCAL_SSHD_PORT", "22x", "LOCAL_SSHD_PORT"),
        ("NOPORTS_SSHNPD_RELAY_PORT", "70000", "port out of range"),
        ("NOPORTS_SSHNPD_VERBOSE", "maybe", "boolean"),
        ("NOPORTS_SSHNPD_VERBOSE", "", "boolean"),
        ("NOPORTS_LOG_FORMAT", "xml", "not one of"),
    ],
)
def test_bad_env_values(var: str, value: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        read_env(make_parser(), "sshnpd", {var: value})


def test_file_variants_for_secrets(tmp_path: Path) -> None:
    secret = tmp_path / "s"
    secret.write_text("hunter2\n")
    vals = read_env(make_parser(), "sshnpd", {"NOPORTS_SSHNPD_SECRET_FILE": str(secret)})
    assert vals["secret"] == "hunter2"
    with pytest.raises(ConfigError, match="both"):
        read_env(
            make_parser(),
            "sshnpd",
            {"NOPORTS_SSHNPD_SECRET_FILE": str(secret), "NOPORTS_SSHNPD_SECRET": "x"},
        )
    with pytest.raises(ConfigError, match="cannot read"):
        read_env(make_parser(), "sshnpd", {"NOPORTS_SSHNPD_SECRET_FILE": str(tmp_path / "nope")})
    big = tmp_path / "big"
    big.write_bytes(b"x" * 70000)
    with pytest.raises(ConfigError, match="larger"):
        read_env(make_parser(), "sshnpd", {"NOPORTS_SSHNPD_SECRET_FILE": str(big)})


def test_unknown_toml_key_is_an_error_naming_key_and_file(tmp_path: Path) -> None:
    cfg = write(tmp_path, 'atsign = "@a"\npermit_opn = "x"\n')
    with pytest.raises(ConfigError) as ei:
        load_toml(cfg, make_parser())
    assert "permit_opn" in str(ei.value) and str(cfg) in str(ei.value)
    cfg = write(tmp_path, '[sshnpd]\natsign = "@a"\n')
    with pytest.raises(ConfigError, match="unknown key 'sshnpd'"):
        load_toml(cfg, make_parser())
    with pytest.raises(ConfigError, match="unknown key 'help'"):
        load_toml(write(tmp_path, "help = true\n"), make_parser())


@pytest.mark.parametrize(
    "text,match",
    [
        ('local-sshd-port = "22"', "expected a int, got a string"),
        ("local-sshd-port = true", "expected a int"),
        ("local-sshd-port = 2.5", "expected a int"),
        ("device = 5", "expected a string"),
        ('verbose = "true"', "boolean"),
        ('managers = "@a"', "array"),
        ("managers = [1]", "string"),
        ('log-format = "xml"', "not one of"),
        ("relay-port = 0", "port out of range"),
        ('device = "a"\ndevice = "b"', "config file"),
        ('device = "a"\nlocal_sshd_port = 1\nlocal-sshd-port = 2', "twice"),
        ("this is not toml", "config file"),
    ],
)
def test_toml_type_errors(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_toml(write(tmp_path, text + "\n"), make_parser())


def test_toml_typed_values(tmp_path: Path) -> None:
    cfg = write(
        tmp_path, "timeout = 5\nrelay-port = 8443\nlocal_sshd_port = 2200\nverbose = false\n"
    )
    assert load_toml(cfg, make_parser()) == {
        "timeout": 5.0,
        "relay_port": 8443,
        "local_sshd_port": 2200,
        "verbose": False,
    }


def test_bad_config_reported_through_parser_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write(tmp_path, "bogus = 1\n")
    with pytest.raises(SystemExit) as ei:
        parse_args(make_parser(), "sshnpd", ["-a", "@a", "--config", str(cfg)], environ={})
    assert ei.value.code == 2 and "bogus" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(
            make_parser(), "sshnpd", ["-a", "@a", "--config", str(tmp_path / "missing")], environ={}
        )


def test_default_config_path_used_only_if_present(tmp_path: Path) -> None:
    cfg = write(tmp_path, 'device = "fromdefault"\n')
    lay = layers(make_parser(), "sshnpd", ["-a", "@a"], environ={}, default_config=str(cfg))
    assert lay.file == {"device": "fromdefault"} and lay.source("device") == f"file {cfg}"
    assert lay.source("atsign") == "default"
    lay = layers(make_parser(), "sshnpd", [], environ={}, default_config=str(tmp_path / "none"))
    assert lay.file == {} and lay.config_path is None


# ------------------------------------------------------------------- env-style profiles
def sshnp_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sshnp")
    p.add_argument("-f", "--from", dest="from_", required=True)
    p.add_argument("-t", "--to")
    p.add_argument("-l", "--local-port", type=int, default=0)
    p.add_argument("-s", "--send-ssh-public-key", action="store_true")
    p.add_argument("-o", "--local-ssh-options", action="append", default=[])
    p.add_argument("--encrypt-rvd-traffic", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--config-file")
    return p


def test_env_file_official_format_with_fixes(tmp_path: Path) -> None:
    f = tmp_path / "profile.env"
    f.write_text(
        "# a profile\n\nFROM=@alice\nTO = @device\nLOCAL_PORT=2222\nSEND_SSH_PUBLIC_KEY=TRUE\n"
        "LOCAL_SSH_OPTIONS=ServerAliveInterval=15,Compression=yes\nENCRYPT_RVD_TRAFFIC=yes\n"
    )
    vals = load_env_file(f, sshnp_parser())
    assert vals == {
        "from_": "@alice",
        "to": "@device",
        "local_port": 2222,
        "send_ssh_public_key": True,
        # values containing '=' are kept (official drops these lines)
        "local_ssh_options": ["ServerAliveInterval=15", "Compression=yes"],
        "encrypt_rvd_traffic": False,  # booleans are true iff "true", as official
    }
    ns = parse_args(sshnp_parser(), "sshnp", ["-l", "9", "-o", "X=1"], environ={}, file_values=vals)
    assert ns.local_port == 9 and ns.from_ == "@alice"  # command line overrides the file
    assert ns.local_ssh_options == ["X=1"]  # ... and replaces, not extends, its lists
    ns = parse_args(
        sshnp_parser(), "sshnp", [], environ={"NOPORTS_SSHNP_TO": "@env"}, file_values=vals
    )
    assert ns.to == "@env" and ns.send_ssh_public_key is True


@pytest.mark.parametrize(
    "text,line",
    [
        ("FROM=@a\nJUSTAKEY\n", 2),
        ("FROM=@a\n=value\n", 2),
        ("\n\nlower=1\n", 3),
        ("FROM=@a\nFROM=@b\n", 2),
        ("A B=1\n", 1),
        ("FROM=@a\x00b\n", 1),
    ],
)
def test_env_file_malformed_lines_have_line_numbers(text: str, line: int) -> None:
    with pytest.raises(ConfigError, match=rf"p\.env:{line}:"):
        parse_env_file(text, path="p.env")


def test_env_file_unknown_and_typed_errors(tmp_path: Path) -> None:
    f = tmp_path / "p.env"
    f.write_text("PROFILE_NAME=x\nFROM=@a\nNOT_AN_OPTION=1\nLOCAL_PORT=\n")
    assert load_env_file(f, sshnp_parser()) == {"from_": "@a"}  # ignored, as official
    f.write_text("LOCAL_PORT=abc\n")
    with pytest.raises(ConfigError, match="LOCAL_PORT"):
        load_env_file(f, sshnp_parser())
    with pytest.raises(ConfigError):
        load_env_file(tmp_path / "missing.env", sshnp_parser())


def test_env_file_value_with_equals_survives() -> None:
    assert parse_env_file("TO=@x\nREMOTE_USER_NAME=a=b=c\n") == {
        "TO": "@x",
        "REMOTE_USER_NAME": "a=b=c",
    }


def test_hostile_toml_key_is_escaped_in_the_error(tmp_path: Path) -> None:
    cfg = write(tmp_path, '"a\\nINFO ok\\u001b[2J" = 1\n')
    with pytest.raises(ConfigError) as ei:
        load_toml(cfg, make_parser())
    assert "\n" not in str(ei.value) and "\x1b" not in str(ei.value)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_hypothesis_env_file_only_raises_config_error(text: str) -> None:
    try:
        out = parse_env_file(text)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    for key, value in out.items():
        assert key.isupper() or key.replace("_", "").isalnum()
        assert "\n" not in value and "\r" not in value
