"""Interop: the official Python ``sshnpd`` (PyPI) serving our ``sshnp`` in the v4 flow.

The official Python daemon (spec 6.11) is a v4-era daemon: it handles only ``ssh_request`` and
``sshpublickey``, never answers pings, does no relay auth and no e2ee, answers the manager with
a hand-built signed envelope carrying an ephemeral ed25519 private key, and relays
``localhost:22`` to the relay's port in a thread. Our client talks to it in the v4 flow
(``--no-ad --no-et``, no ``-s``): no daemon feature is required, so, like the official client,
it sends no ping and waits for none.

Pointing the official daemon at loopback. It takes no root/CA argument and reads no variable
for them: ``sshnpd.SSHNPDClient`` builds ``at_client.AtClient(AtSign(atsign), queue=..)``, whose
``root_address`` defaults to ``root.atsign.org:64``, and its relay thread (``SSHRV``) dials
``localhost:22``. Its code is not patched. Instead, as an operator would deploy a private
atDirectory under that name:

* a private ``noports server`` listens on ``127.0.0.1:64`` with a certificate (from the
  server's own CA) that also names ``root.atsign.org``; the CA reaches the daemon through
  ``SSL_CERT_FILE`` (OpenSSL's default verify paths, used by ``ssl.create_default_context``);
* the daemon runs in a private mount namespace (``unshare --mount``) whose ``/etc/hosts`` maps
  ``root.atsign.org`` to 127.0.0.1 -- nothing outside that one process sees the change;
* the test sshd listens on ``127.0.0.1:22``.

So the test needs root (ports 64 and 22, the mount namespace), free ports 22 and 64 and
``unshare``; otherwise it skips with the reason. The daemon is installed from PyPI into a
cached virtualenv (``NOPORTS_TEST_CACHE``, like ``tests/fixtures_atsdk.py``); when PyPI cannot
be reached the test skips with pip's message.

Quirks of the official daemon (0.4.16, read from its source), and how the test meets them:

* ``sshpublickey`` calls ``self._handle_ssh_public_key``, which does not exist: the exception
  ends its notification thread, so ``-s`` is not used (the sshd already trusts the test key);
* ``-u`` puts the username record encrypted with a zero IV (``_put_shared_key`` passes no IV)
  while the record's metadata names a random ``ivNonce``, so a conformant reader cannot decrypt
  it: sshnp is given ``-u``;
* its authorized_keys entry is unrestricted and never removed; it answers the manager (our
  client here) whoever asked; two threads spin on ``queue.get(block=False)`` while it runs.
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures_at import AtServerProcess
from tests.fixtures_atsdk import _cache_dir
from tests.fixtures_np import NpEnv, Proc
from tests.sshd import Sshd, SshdUnavailable

SSHNPD_VERSION = os.environ.get("NOPORTS_PYSSHNPD_VERSION", "0.4.16")
ROOT_NAME = "root.atsign.org"  # at_client.AtClient's default root_address host
ROOT_PORT = 64  # ... and port
SSHD_PORT = 22  # sshnpd.SSHRV(local_port=22)
CHECK = ["echo", "TEST", "PASSED"]

pytestmark = pytest.mark.timeout(240)


# --- the official daemon, from PyPI, in its own cached virtualenv ---------------------------


def _ensure_sshnpd() -> Path | str:
    """Path of the venv's ``sshnpd`` script, or the reason it could not be installed."""
    root = _cache_dir() / f"pysshnpd-{SSHNPD_VERSION}-py{sys.version_info[0]}{sys.version_info[1]}"
    exe = root / "bin" / "sshnpd"
    marker = root / ".installed"
    if marker.exists() and exe.exists():
        return exe
    root.parent.mkdir(parents=True, exist_ok=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(root)
    try:
        proc = subprocess.run(
            [
                str(root / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                f"sshnpd=={SSHNPD_VERSION}",
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
    except subprocess.TimeoutExpired:
        return f"PyPI unreachable: installing sshnpd=={SSHNPD_VERSION} took over 600 s"
    if proc.returncode != 0 or not exe.exists():
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR")]
        return (
            f"could not install the official sshnpd=={SSHNPD_VERSION} from PyPI (unreachable?): "
            f"{(' '.join(errors) or proc.stderr.strip())[-300:]}"
        )
    marker.write_text(SSHNPD_VERSION)
    return exe


@pytest.fixture(scope="session")
def official_sshnpd() -> Path:
    got = _ensure_sshnpd()
    if isinstance(got, str):
        pytest.skip(got)
    return got


# --- a loopback home for a daemon that only knows root.atsign.org:64 and localhost:22 ------


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do (TIME_WAIT)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _require_loopback_root() -> None:
    why = (
        "the official Python sshnpd hard-codes its atDirectory (root.atsign.org:64, "
        "at_client.AtClient's default; no flag or variable) and its relay target (localhost:22)"
    )
    if os.geteuid() != 0:
        pytest.skip(f"{why}; serving both on loopback needs root (ports 64/22, a mount namespace)")
    if shutil.which("unshare") is None:
        pytest.skip(f"{why}; needs unshare(1) for a private /etc/hosts")
    for port, what in ((ROOT_PORT, "atDirectory"), (SSHD_PORT, "sshd")):
        if not _port_free(port):
            pytest.skip(f"{why}; 127.0.0.1:{port} ({what}) is already in use")
    probe = subprocess.run(
        ["unshare", "--mount", "--", "sh", "-c", "mount --bind /etc/hosts /etc/hosts"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    if probe.returncode != 0:
        pytest.skip(f"{why}; cannot bind-mount a private /etc/hosts: {probe.stderr.strip()}")


def _name_root_in_certificate(data_dir: Path) -> None:
    """Give the server a certificate from its own CA that also names ``root.atsign.org``.

    ``noports server`` keeps an existing certificate that covers its names (tls.ensure), so
    this is what an operator does to serve a private directory under another name."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    from noports.atserver import tls

    files = tls.ensure(data_dir, "127.0.0.1")
    ca_key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    old = x509.load_pem_x509_certificate(files.cert.read_bytes())
    san = old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(old.subject)
        .issuer_name(ca_cert.subject)
        .public_key(old.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([*san, x509.DNSName(ROOT_NAME)]), critical=False)
    )
    for ext in old.extensions:
        if not isinstance(ext.value, x509.SubjectAlternativeName):
            builder = builder.add_extension(ext.value, critical=ext.critical)
    cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    files.cert.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM) + files.ca_cert.read_bytes()
    )


class PyDaemonRig:
    """Private server on 127.0.0.1:64, our srvd, sshd on 127.0.0.1:22, the official daemon."""

    def __init__(self, tmp: Path, sshnpd: Path) -> None:
        self.tmp = tmp
        self.sshnpd = sshnpd
        home = tmp / "home"
        home.mkdir(mode=0o700)
        self.server = AtServerProcess(tmp / "server")
        self.server.port = ROOT_PORT
        _name_root_in_certificate(self.server.data_dir)
        self.server.start()
        self.env = NpEnv(self.server, home, secrets.token_hex(3))  # reads server.env: after start
        self.sshd: Sshd | None = None

    def start(self) -> PyDaemonRig:
        self.client = self.env.atsign("client")
        self.device_atsign = self.env.atsign("device")
        self.relay = self.env.atsign("relay")
        try:
            self.sshd = Sshd(
                self.env.home / "sshd",
                port=SSHD_PORT,
                authorized_keys_file=self.env.home / ".ssh" / "authorized_keys",
            ).start()
        except SshdUnavailable as exc:
            pytest.skip(str(exc))
        self.user = self.sshd.user
        self.srvd = self.env.spawn(
            "srvd",
            "-a",
            self.relay,
            "-i",
            "127.0.0.1",
            "--bind",
            "127.0.0.1",
            "--drain-seconds",
            "0",
            "-v",
            ready=r"ready: monitor started",
            timeout=30,
        )
        return self

    def daemon(self, device: str) -> Proc:
        """The official daemon (``-u``: share the username; ``-v``) in its own /etc/hosts."""
        hosts = self.tmp / "hosts"
        hosts.write_text(f"127.0.0.1 localhost {ROOT_NAME}\n::1 localhost ip6-localhost\n")
        argv = [
            "unshare",
            "--mount",
            "--",
            "sh",
            "-c",
            'mount --bind "$0" /etc/hosts && exec "$@"',
            str(hosts),
            str(self.sshnpd),
            "-a",
            self.device_atsign,
            "-m",
            self.client,
            "-d",
            device,
            "-u",
            "-v",
        ]
        env = {
            "HOME": str(self.env.home),
            "PATH": self.env.env["PATH"],
            "LANG": "C.UTF-8",
            "USER": self.user,
            "LOGNAME": self.user,
            "SSL_CERT_FILE": self.server.ca_file,
            "PYTHONUNBUFFERED": "1",
        }
        p = Proc(argv, env, str(self.env.home), None)
        self.env.procs.append(p)
        p.wait_for(rf"Monitor started on {self.device_atsign}", 60)
        return p

    def sshnp(self, device: str, *args: str, timeout: float = 60.0):
        return self.env.run(
            "sshnp",
            "-f",
            self.client,
            "-t",
            self.device_atsign,
            "-r",
            self.relay,
            "-d",
            device,
            *args,
            timeout=timeout,
        )

    def ssh_opts(self) -> list[str]:
        return [
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            f"UserKnownHostsFile={self.env.home / '.ssh' / 'known_hosts'}",
        ]

    def close(self) -> None:
        self.env.close()
        if self.sshd is not None:
            self.sshd.close()
        self.server.stop()


@pytest.fixture
def pyrig(official_sshnpd: Path, tmp_path: Path) -> Iterator[PyDaemonRig]:
    _require_loopback_root()
    rig = PyDaemonRig(tmp_path, official_sshnpd)
    try:
        yield rig.start()
    finally:
        rig.close()


def _logs(p: Proc) -> str:
    return f"\n--- official sshnpd stdout:\n{p.stdout[-3000:]}\n--- stderr:\n{p.stderr[-3000:]}"


@pytest.mark.interop
def test_official_python_sshnpd_serves_our_sshnp_v4(pyrig: PyDaemonRig) -> None:
    """v4 flow (``--no-ad --no-et``): no ping, the daemon's signed reply verifies, its
    ephemeral key opens the tunnel ssh, then ``ssh ... echo TEST PASSED`` runs through it."""
    daemon = pyrig.daemon("pydev")
    assert pyrig.sshd is not None
    key = ["-u", pyrig.user, "-i", str(pyrig.sshd.client_key)]
    r = pyrig.sshnp("pydev", *key, "--no-ad", "--no-et", "-x", "--output", "json")
    assert r.returncode == 0, r.stderr + _logs(daemon)
    assert "feature check" in r.stderr  # progress lines as the official client prints them
    ev = json.loads(r.stdout)
    assert ev["mode"] == "clear"
    assert f"{pyrig.user}@localhost" in ev["argv"]
    out = subprocess.run(
        [*ev["argv"], *pyrig.ssh_opts(), *CHECK],
        env=pyrig.env.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0 and out.stdout.strip() == "TEST PASSED", out.stderr
    assert "sshrv started @ 127.0.0.1" in daemon.stderr, _logs(daemon)
    # it printed every notification it got (-v): our session request, and no ping
    assert f"ssh_request.pydev.sshnp{pyrig.client}" in daemon.stdout, _logs(daemon)
    assert "ping.pydev" not in daemon.stdout, _logs(daemon)
    # our side removed the daemon's ephemeral key once the tunnel ssh was up
    sshnp_dir = pyrig.env.home / ".sshnp"
    assert not [p for p in sshnp_dir.iterdir() if p.name.startswith("ephemeral_")]

    # both relay authentications off (legacy relay request R1L); sshnp runs ssh itself
    r = pyrig.sshnp(
        "pydev",
        *key,
        "--no-ac",
        "--no-ad",
        "--no-et",
        "-o",
        "BatchMode=yes",
        "--",
        "echo",
        "INLINE",
        "TEST",
        "PASSED",
    )
    assert r.returncode == 0 and "INLINE TEST PASSED" in r.stdout, r.stderr + _logs(daemon)


@pytest.mark.timeout(90)
def test_v4_flow_without_feature_check_needs_no_ping(np_env: NpEnv) -> None:
    """Runs anywhere (no official daemon needed): with no daemon feature required there is no
    ping, so a silent device fails on the session response (15 s), not on the feature check;
    with a feature required (``--ad``, the default) the feature check still times out."""
    client, device, relay = (np_env.atsign(n) for n in ("client", "device", "relay"))
    np_env.spawn(
        "srvd", "-a", relay, "-i", "127.0.0.1", "--bind", "127.0.0.1", "--drain-seconds", "0", "-v",
        ready=r"ready: monitor started", timeout=30,
    )  # fmt: skip
    base = ["-f", client, "-t", device, "-r", relay, "-d", "silent", "-u", "nobody", "-x"]
    r = np_env.run("sshnp", *base, "--no-ad", "--no-et", "--dpt", "1", timeout=60)
    assert r.returncode == 5, r.stderr
    assert "No response from the device daemon" in r.stderr, r.stderr
    assert "feature check timed out" not in r.stderr
    r = np_env.run("sshnp", *base, "--no-et", "--dpt", "1", timeout=60)
    assert r.returncode == 5 and "Daemon feature check timed out" in r.stderr, r.stderr
