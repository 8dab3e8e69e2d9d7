"""Certificate credentials checked before any Azure call: parsable, current, RSA, and the key matches.

Each failure is a 422 naming `credentials.certificate` or `credentials.privateKey`; no message
ever quotes the PEM. The key is kept only to sign client assertions (azure-identity's
CertificateCredential sends `x5t#S256` with PS256); it is stored with the certificate as one
PEM bundle in the secret store and never leaves the service.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime

from core import clock
from core.errors import FieldError, Unprocessable

CERT_FIELD = "credentials.certificate"
KEY_FIELD = "credentials.privateKey"
MIN_RSA_BITS = 2048


@dataclass(frozen=True)
class CheckedCertificate:
    """What the connection shows about its certificate, plus the bundle the credential signs with."""

    thumbprint_sha256: str  # base64url, as in the assertion's x5t#S256 header
    thumbprint_sha1: str  # hex upper-case, as the Portal shows it
    subject: str
    not_after: datetime
    bundle: bytes  # unencrypted PKCS#8 key + the certificate, PEM


def _bad(field: str, message: str) -> Unprocessable:
    return Unprocessable(f"{field}: {message}", [FieldError(field, message)], code="invalid-certificate")


def check_certificate(certificate_pem: str, private_key_pem: str) -> CheckedCertificate:
    """Parse and cross-check a certificate and its private key, or raise a 422 naming the field."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    if "-----BEGIN CERTIFICATE-----" not in certificate_pem:
        raise _bad(CERT_FIELD, "must be a PEM certificate (-----BEGIN CERTIFICATE-----)")
    if "PRIVATE KEY-----" in certificate_pem:
        raise _bad(CERT_FIELD, "must hold only the certificate; send the private key in privateKey")
    try:
        chain = x509.load_pem_x509_certificates(certificate_pem.encode())
    except ValueError:
        raise _bad(CERT_FIELD, "is not a parsable PEM X.509 certificate") from None
    cert = chain[0]
    now = clock.now()
    if cert.not_valid_after_utc <= now:
        raise _bad(
            CERT_FIELD, f"expired on {clock.isoformat(cert.not_valid_after_utc)}; upload a current one"
        )
    if cert.not_valid_before_utc > now:
        raise _bad(CERT_FIELD, f"is not valid before {clock.isoformat(cert.not_valid_before_utc)}")

    if "PRIVATE KEY-----" not in private_key_pem:
        raise _bad(KEY_FIELD, "must be a PEM private key (-----BEGIN PRIVATE KEY-----)")
    try:
        key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    except TypeError:
        raise _bad(KEY_FIELD, "is encrypted; send it unencrypted (PKCS#8 PEM)") from None
    except (ValueError, Exception):
        raise _bad(KEY_FIELD, "is not a parsable PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise _bad(KEY_FIELD, "must be an RSA key (Entra ID client assertions are RSA-signed)")
    if key.key_size < MIN_RSA_BITS:
        raise _bad(KEY_FIELD, f"must be at least {MIN_RSA_BITS} bits")
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, public) != cert.public_key().public_bytes(der, public):
        raise _bad(KEY_FIELD, "does not match the certificate's public key")

    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    return CheckedCertificate(
        thumbprint_sha256=base64.urlsafe_b64encode(cert.fingerprint(hashes.SHA256())).decode().rstrip("="),
        thumbprint_sha1=cert.fingerprint(hashes.SHA1()).hex().upper(),  # noqa: S303 - the Portal's thumbprint
        subject=cert.subject.rfc4514_string()[:200],
        not_after=cert.not_valid_after_utc,
        bundle=key_pem + cert_pem,
    )
