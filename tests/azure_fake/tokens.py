"""Signing keys, JWKS and JWT helpers of the stand-in's Entra ID.

Access tokens are RS256 JWTs signed by the current signing key (its `kid` is in the JWKS that
OIDC discovery points at). `KeyRing.rotate()` adds a key and signs with it from then on; old keys
stay published unless dropped, as Entra does during a key roll-over.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .ca import make_self_signed_certificate, new_rsa_key, thumbprints


def b64url(data: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    """base64url with or without padding."""
    text = text.strip()
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _int_b64(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


class JwtFormatError(ValueError):
    """The text is not a compact JWS."""


def split_jwt(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """(header, claims, signing_input, signature) of a compact JWS, without verifying anything."""
    parts = token.split(".")
    if len(parts) != 3:
        raise JwtFormatError("not a JWT: expected three dot-separated parts")
    try:
        header = json.loads(b64url_decode(parts[0]))
        claims = json.loads(b64url_decode(parts[1]))
        signature = b64url_decode(parts[2]) if parts[2] else b""
    except (ValueError, UnicodeDecodeError) as exc:
        raise JwtFormatError(f"not a JWT: {exc}") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise JwtFormatError("not a JWT: header and payload must be JSON objects")
    return header, claims, f"{parts[0]}.{parts[1]}".encode(), signature


def verify_rsa_signature(public_key: Any, alg: str, signing_input: bytes, signature: bytes) -> bool:
    """Check an RS256 or PS256 signature with an RSA public key."""
    if not isinstance(public_key, rsa.RSAPublicKey):
        return False
    try:
        if alg == "RS256":
            public_key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
        elif alg == "PS256":
            public_key.verify(
                signature,
                signing_input,
                padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO),
                hashes.SHA256(),
            )
        else:
            return False
    except InvalidSignature:
        return False
    return True


@dataclass
class SigningKey:
    """One RSA key of the token service, with a self-signed certificate for x5c/x5t as Entra publishes."""

    kid: str
    private_key: rsa.RSAPrivateKey
    certificate: x509.Certificate
    created: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    @classmethod
    def generate(cls) -> SigningKey:
        key = new_rsa_key()
        cert_pem, _ = make_self_signed_certificate("azure-fake token signing", key=key, days=30)
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        x5t, _ = thumbprints(cert)
        # Entra uses the certificate's SHA-1 thumbprint as both kid and x5t.
        return cls(kid=x5t, private_key=key, certificate=cert)

    @property
    def public_key(self) -> rsa.RSAPublicKey:
        return self.private_key.public_key()

    def public_pem(self) -> bytes:
        """SubjectPublicKeyInfo PEM (what an HS256 key-confusion attacker would use as the secret)."""
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def jwk(self, issuer: str | None = None) -> dict[str, Any]:
        numbers = self.public_key.public_numbers()
        x5t, _ = thumbprints(self.certificate)
        entry: dict[str, Any] = {
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "x5t": x5t,
            "n": _int_b64(numbers.n),
            "e": _int_b64(numbers.e),
            "x5c": [base64.b64encode(self.certificate.public_bytes(serialization.Encoding.DER)).decode()],
        }
        if issuer:
            entry["issuer"] = issuer
        return entry


class KeyRing:
    """The published signing keys; the last one signs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: list[SigningKey] = [SigningKey.generate()]

    @property
    def current(self) -> SigningKey:
        with self._lock:
            return self._keys[-1]

    @property
    def keys(self) -> list[SigningKey]:
        with self._lock:
            return list(self._keys)

    def find(self, kid: str | None) -> SigningKey | None:
        with self._lock:
            for key in self._keys:
                if key.kid == kid:
                    return key
        return None

    def rotate(self, drop_old: bool = False) -> SigningKey:
        """Publish a new key and sign with it from now on; `drop_old` unpublishes the others."""
        new = SigningKey.generate()
        with self._lock:
            self._keys = [new] if drop_old else [*self._keys, new]
        return new

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.jwk() for key in self.keys]}

    def sign(self, claims: dict[str, Any], key: SigningKey | None = None) -> str:
        signer = key or self.current
        return jwt.encode(
            claims, signer.private_key, algorithm="RS256", headers={"kid": signer.kid, "x5t": signer.kid}
        )

    def verify(self, token: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Verify a token the stand-in issued: RS256 by a published key. Returns (header, claims).

        Raises ValueError with a short reason; expiry and audience are left to the caller.
        """
        header, claims, signing_input, signature = split_jwt(token)
        if header.get("alg") != "RS256":
            raise ValueError(f"unsupported alg {header.get('alg')!r}")
        key = self.find(header.get("kid"))
        if key is None:
            raise ValueError("signing key not found")
        if not verify_rsa_signature(key.public_key, "RS256", signing_input, signature):
            raise ValueError("signature verification failed")
        return header, claims


def encode_unsafe(
    claims: dict[str, Any], alg: str, key: bytes | str | None = None, kid: str | None = None
) -> str:
    """Encode a token the way an attacker might: alg "none" (unsigned) or HS256 with any key bytes.

    PyJWT refuses to HMAC with a PEM public key, so this builds the JWS by hand.
    """
    header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if kid:
        header["kid"] = kid
    signing_input = (
        b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + b64url(json.dumps(claims, separators=(",", ":")).encode())
    )
    if alg == "none":
        return signing_input + "."
    if alg == "HS256":
        secret = key.encode() if isinstance(key, str) else (key or b"")
        digest = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        return signing_input + "." + b64url(digest)
    raise ValueError(f"encode_unsafe supports alg 'none' and 'HS256', not {alg!r}")


def new_uti() -> str:
    """A token identifier in the shape Entra uses (22 base64url chars)."""
    return b64url(uuid.uuid4().bytes)
