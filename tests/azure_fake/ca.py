"""TLS material for the stand-in: a throw-away CA, a loopback server certificate, app certificates.

Everything is made with `cryptography` at start-up in a temporary directory. Clients trust the
stand-in through the CA file (`SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE`); `trust_ca_file` also adds it
to contexts that aiohttp built at import time, before the variables were set.
"""

from __future__ import annotations

import atexit
import base64
import datetime as dt
import hashlib
import ipaddress
import os
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_UTC = dt.UTC


@dataclass(frozen=True)
class TlsMaterial:
    """Files of the stand-in's TLS set-up (all PEM)."""

    directory: Path
    ca_file: Path
    cert_file: Path
    key_file: Path


def new_rsa_key(key_size: int = 2048) -> rsa.RSAPrivateKey:
    """A fresh RSA private key."""
    return rsa.generate_private_key(public_exponent=65537, key_size=key_size)


def private_key_pem(key: rsa.RSAPrivateKey) -> str:
    """PKCS#8 PEM of a private key, unencrypted."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def create_tls_material(directory: Path | None = None) -> TlsMaterial:
    """Create a CA and a server certificate for 127.0.0.1 / localhost signed by it."""
    target = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="azure-fake-tls-"))
    target.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(_UTC)
    ca_key = new_rsa_key()
    ca_name = _name("azure-fake test CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = new_rsa_key()
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=29))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = target / "ca.pem"
    cert_file = target / "server.pem"
    key_file = target / "server-key.pem"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(
        server_cert.public_bytes(serialization.Encoding.PEM)
        + ca_cert.public_bytes(serialization.Encoding.PEM)
    )
    key_file.write_text(private_key_pem(server_key))
    os.chmod(key_file, 0o600)
    return TlsMaterial(target, ca_file, cert_file, key_file)


_shared_lock = threading.Lock()
_shared: TlsMaterial | None = None


def shared_tls_material() -> TlsMaterial:
    """One CA and server certificate per process, so every stand-in instance is trusted by the
    same CA file (SSL_CERT_FILE is process-wide). Removed when the process exits."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = create_tls_material()
            atexit.register(shutil.rmtree, _shared.directory, True)
        return _shared


def make_self_signed_certificate(
    common_name: str = "azure-fake app",
    *,
    key: rsa.RSAPrivateKey | None = None,
    days: int = 365,
    not_before: dt.datetime | None = None,
) -> tuple[str, str]:
    """A self-signed certificate as an app registration would hold: returns (cert_pem, key_pem)."""
    key = key or new_rsa_key()
    start = not_before or dt.datetime.now(_UTC) - dt.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), private_key_pem(key)


def load_certificate(cert_pem: str | bytes) -> x509.Certificate:
    """Parse a PEM certificate (the first one if several)."""
    data = cert_pem.encode() if isinstance(cert_pem, str) else cert_pem
    return x509.load_pem_x509_certificate(data)


def thumbprints(cert: x509.Certificate) -> tuple[str, str]:
    """(x5t, x5t#S256) of a certificate: base64url SHA-1 and SHA-256 of the DER, no padding."""
    der = cert.public_bytes(serialization.Encoding.DER)
    sha1 = hashlib.sha1(der, usedforsecurity=False).digest()
    sha256 = hashlib.sha256(der).digest()
    return _b64(sha1), _b64(sha256)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def trust_ca_file(ca_file: Path | str) -> None:
    """Make this process trust the stand-in's CA.

    Sets SSL_CERT_FILE (read by httpx and the ssl module) and REQUESTS_CA_BUNDLE (requests) and,
    because aiohttp (used by azure-core's async transport) builds its default SSL context once at
    import time, adds the CA to those already-built contexts too.
    """
    path = str(ca_file)
    os.environ["SSL_CERT_FILE"] = path
    os.environ["REQUESTS_CA_BUNDLE"] = path
    connector = sys.modules.get("aiohttp.connector")
    if connector is not None:
        for name in ("_SSL_CONTEXT_VERIFIED",):
            context = getattr(connector, name, None)
            if context is not None:
                context.load_verify_locations(cafile=path)
