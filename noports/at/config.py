"""Where the root directory is and which CAs to trust (DESIGN.md decision 8).

Precedence everywhere: an explicit argument (the CLI flag) > the environment
(``NOPORTS_ROOT``, ``NOPORTS_CA_FILE``) > the default (``root.atsign.org:64``, system CAs).
One ``export`` of the two variables points every program at the embedded server.

``NOPORTS_ROOT`` / ``--root`` accept ``host``, ``host:port``, ``[v6]:port`` and the Dart
``proxy:host[:port]`` form, which skips the directory and uses that address as the
atServer of every atSign.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from typing import NamedTuple

from ..errors import ConfigError

DEFAULT_ROOT_HOST = "root.atsign.org"
DEFAULT_ROOT_PORT = 64
DEFAULT_ROOT = f"{DEFAULT_ROOT_HOST}:{DEFAULT_ROOT_PORT}"
ENV_ROOT = "NOPORTS_ROOT"
ENV_CA_FILE = "NOPORTS_CA_FILE"


class RootAddress(NamedTuple):
    """A root directory address; ``proxy`` means "this is the atServer, skip the lookup"."""

    host: str
    port: int
    proxy: bool = False

    def __str__(self) -> str:
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'proxy:' if self.proxy else ''}{h}:{self.port}"


def parse_host_port(
    text: str, default_port: int = DEFAULT_ROOT_PORT, *, what: str = "address"
) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port`` -> (host, port). Raises ConfigError."""
    s = text.strip()
    if not s:
        raise ConfigError(f"empty {what}")
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            raise ConfigError(f"bad {what} {text!r}: missing ']'")
        host, rest = s[1:end], s[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ConfigError(f"bad {what} {text!r}")
        port_s = rest[1:] if rest else ""
        if rest == ":":
            raise ConfigError(f"bad {what} {text!r}: empty port")
    elif s.count(":") == 1:
        host, port_s = s.split(":")
        if not port_s:
            raise ConfigError(f"bad {what} {text!r}: empty port")
    elif ":" in s:  # a bare IPv6 address
        host, port_s = s, ""
    else:
        host, port_s = s, ""
    if not host:
        raise ConfigError(f"bad {what} {text!r}: no host")
    if port_s == "":
        return host, default_port
    try:
        port = int(port_s)
    except ValueError as exc:
        raise ConfigError(f"bad {what} {text!r}: port is not a number") from exc
    if not 0 < port < 65536:
        raise ConfigError(f"bad {what} {text!r}: port out of range")
    return host, port


def root_address(arg: str | None = None, env: Mapping[str, str] | None = None) -> RootAddress:
    """The root directory to use: ``arg`` > ``$NOPORTS_ROOT`` > ``root.atsign.org:64``."""
    environ = os.environ if env is None else env
    text = arg if arg else environ.get(ENV_ROOT) or DEFAULT_ROOT
    proxy = False
    if text.startswith("proxy:"):
        proxy, text = True, text[len("proxy:") :]
    host, port = parse_host_port(text, what="root address")
    return RootAddress(host, port, proxy)


def ca_file(arg: str | None = None, env: Mapping[str, str] | None = None) -> str | None:
    """The extra CA bundle: ``arg`` > ``$NOPORTS_CA_FILE`` > None (system CAs only)."""
    environ = os.environ if env is None else env
    path = arg or environ.get(ENV_CA_FILE) or None
    if path is not None and not os.path.isfile(path):
        raise ConfigError(f"CA file {path} does not exist or is not a file")
    return path


def ssl_context(
    ca_file_arg: str | None = None, env: Mapping[str, str] | None = None
) -> ssl.SSLContext:
    """A client TLS context: system CAs, plus the extra CA file when one is configured.

    Hostname checks stay on (the embedded server's certificate carries ``IP:127.0.0.1``).
    No client certificate is offered: atServers ask for one but do not require it.
    """
    ctx = _system_trust()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    path = ca_file(ca_file_arg, env)
    if path is not None:
        try:
            ctx.load_verify_locations(cafile=path)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"cannot load CA file {path}: {exc}") from exc
    return ctx


def _system_trust() -> ssl.SSLContext:
    """A verifying client context trusting the system CAs, cheaply.

    ``create_default_context`` parses the whole system bundle (30 ms idle, 150 ms on a busy
    box) at every program start. OpenSSL's hashed CA directory is looked up lazily, per
    issuer, so where the platform has one (Debian's /etc/ssl/certs) we trust that instead:
    the same CAs, loaded only when a certificate needs them. ``SSL_CERT_FILE`` /
    ``SSL_CERT_DIR`` keep their usual meaning.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED + check_hostname
    paths = ssl.get_default_verify_paths()
    env_file = os.environ.get(paths.openssl_cafile_env or "SSL_CERT_FILE")
    capath = os.environ.get(paths.openssl_capath_env or "SSL_CERT_DIR") or paths.capath
    if env_file:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    elif capath and _is_hashed_dir(capath):
        ctx.load_verify_locations(capath=capath)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    return ctx


def _is_hashed_dir(path: str) -> bool:
    """True when ``path`` holds OpenSSL subject-hash links (``xxxxxxxx.0``)."""
    try:
        with os.scandir(path) as it:
            for e in it:
                n = e.name
                if len(n) >= 10 and n[8] == "." and n[9:].isdigit():
                    int(n[:8], 16)
                    return True
    except (OSError, ValueError):
        return False
    return False
