"""The server's own CA and certificate, created on first start in ``<data-dir>/tls``.

ECDSA P-256 keys (fast to make, accepted by every TLS stack the official clients use). The CA
is what ``NOPORTS_CA_FILE`` points at. The server certificate's SANs cover 127.0.0.1, ::1,
localhost, the host name and the ``--host`` address, because official clients check the host
string they dialled (the root answers ``127.0.0.1:<port>``). Private keys are written 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..fsutil import secure_dir, write_secret


class TlsFiles:
    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir / "tls"
        self.ca_cert = self.dir / "ca.pem"
        self.ca_key = self.dir / "ca.key"
        self.cert = self.dir / "server.pem"
        self.key = self.dir / "server.key"


def _names(host: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    seen: set[str] = set()
    for n in ("127.0.0.1", "::1", "localhost", socket.gethostname(), host):
        if not n or n in seen or n in ("0.0.0.0", "::"):
            continue
        seen.add(n)
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            names.append(x509.DNSName(n))
    return names


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _make_ca(files: TlsFiles) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"noports embedded CA {socket.gethostname()}")]
    )
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_secret(files.ca_key, _pem_key(key))
    files.ca_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _make_server(files: TlsFiles, host: str) -> None:
    ca_key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "noports embedded server")])
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(_names(host)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    write_secret(files.key, _pem_key(key))
    files.cert.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM) + files.ca_cert.read_bytes()
    )


def _covers(files: TlsFiles, host: str) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    try:
        expires = cert.not_valid_after_utc
    except AttributeError:  # cryptography < 42 (Debian 12 ships 38): naive UTC
        expires = cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)
    if expires < datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1):
        return False
    want = {str(n.value) for n in _names(host)}
    have = {str(n.value) for n in san}
    return want <= have


def ensure(data_dir: Path, host: str) -> TlsFiles:
    """Create the CA (once) and a server certificate covering ``host`` (when missing/stale)."""
    files = TlsFiles(data_dir)
    secure_dir(files.dir)
    if not (files.ca_cert.exists() and files.ca_key.exists()):
        _make_ca(files)
        if files.cert.exists():
            files.cert.unlink()
    if not (files.key.exists() and _covers(files, host)):
        _make_server(files, host)
    return files


def server_context(files: TlsFiles) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(files.cert), str(files.key))
    # No TLS 1.3 session tickets: clients reconnect rarely, and each ticket costs handshake
    # CPU and bytes on every connection.
    ctx.num_tickets = 0
    ctx.options |= ssl.OP_NO_COMPRESSION
    return ctx
