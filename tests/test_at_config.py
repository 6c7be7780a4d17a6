"""Root address and CA configuration: argument > environment > default."""

from __future__ import annotations

import ssl

import pytest

from noports.at.config import (
    DEFAULT_ROOT,
    RootAddress,
    ca_file,
    parse_host_port,
    root_address,
    ssl_context,
)
from noports.errors import ConfigError


def test_default_env_and_argument_precedence() -> None:
    assert str(root_address(env={})) == DEFAULT_ROOT
    env = {"NOPORTS_ROOT": "127.0.0.1:6464"}
    assert root_address(env=env) == RootAddress("127.0.0.1", 6464)
    assert root_address("example.org:99", env=env) == RootAddress("example.org", 99)
    assert root_address("", env=env) == RootAddress("127.0.0.1", 6464)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("host", ("host", 64)),
        ("host:1", ("host", 1)),
        ("[::1]:70", ("::1", 70)),
        ("[::1]", ("::1", 64)),
        ("::1", ("::1", 64)),
    ],
)
def test_parse_host_port(text: str, want: tuple[str, int]) -> None:
    assert parse_host_port(text) == want


@pytest.mark.parametrize("bad", ["", "host:", "host:x", "host:70000", ":5", "[::1", "[::1]x"])
def test_parse_host_port_rejects(bad: str) -> None:
    with pytest.raises(ConfigError):
        parse_host_port(bad)


def test_proxy_form() -> None:
    ra = root_address("proxy:10.0.0.5:6464", env={})
    assert ra == RootAddress("10.0.0.5", 6464, True)
    assert str(ra) == "proxy:10.0.0.5:6464"
    assert str(RootAddress("::1", 5)) == "[::1]:5"


def test_ca_file_precedence_and_errors(tmp_path) -> None:
    a = tmp_path / "a.pem"
    b = tmp_path / "b.pem"
    a.write_text("x")
    b.write_text("y")
    assert ca_file(env={}) is None
    assert ca_file(env={"NOPORTS_CA_FILE": str(a)}) == str(a)
    assert ca_file(str(b), env={"NOPORTS_CA_FILE": str(a)}) == str(b)
    with pytest.raises(ConfigError):
        ca_file(str(tmp_path / "missing.pem"), env={})
    with pytest.raises(ConfigError):  # not a certificate
        ssl_context(str(a), env={})


def test_ssl_context_adds_extra_ca_to_system_ones(tmp_path) -> None:
    from tests.test_at_connection import make_ca

    ca_pem, _, _ = make_ca(tmp_path)
    plain = ssl_context(env={})
    extra = ssl_context(env={"NOPORTS_CA_FILE": str(ca_pem)})
    assert extra.check_hostname and extra.verify_mode is ssl.CERT_REQUIRED
    assert extra.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert extra.cert_store_stats()["x509_ca"] == plain.cert_store_stats()["x509_ca"] + 1
