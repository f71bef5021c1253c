"""The Ed25519 key that signs audit checkpoints and evidence bundles. It lives outside the database.

``AUDIT_SIGNING_KEY`` (or ``AUDIT_SIGNING_KEY_FILE``) holds the private key, as 64 hex digits (the 32-byte
seed) or a PKCS#8 PEM. Only the processes that sign need it: the executor (its beat extends the chain and
signs checkpoints) and whoever runs ``export_evidence`` or the retention purge. ``verify_audit`` needs only
the public half: ``AUDIT_PUBLIC_KEY`` (hex or PEM), or it is derived from the private key when that is set.
"""

from __future__ import annotations

import functools

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from audit.canonical import key_id


def parse_private_key(text: str) -> Ed25519PrivateKey:
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_private_key(text.encode("ascii"), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise ImproperlyConfigured("AUDIT_SIGNING_KEY is not an Ed25519 key")
            return key
        return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(text))
    except (ValueError, TypeError) as exc:
        raise ImproperlyConfigured("AUDIT_SIGNING_KEY must be 64 hex digits (an Ed25519 seed) or a PKCS#8 PEM") from exc


def parse_public_key(text: str) -> Ed25519PublicKey:
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode("ascii"))
            if not isinstance(key, Ed25519PublicKey):
                raise ImproperlyConfigured("AUDIT_PUBLIC_KEY is not an Ed25519 key")
            return key
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text))
    except (ValueError, TypeError) as exc:
        raise ImproperlyConfigured("AUDIT_PUBLIC_KEY must be 64 hex digits or a PEM public key") from exc


def public_raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@functools.cache
def _signing_key(text: str) -> Ed25519PrivateKey:
    return parse_private_key(text)


def signing_key() -> Ed25519PrivateKey:
    """The private key, or a loud error naming the setting: signing without it is never silently skipped."""
    text = settings.AUDIT_SIGNING_KEY
    if not text:
        raise ImproperlyConfigured(
            "AUDIT_SIGNING_KEY (or AUDIT_SIGNING_KEY_FILE) must be set to sign audit checkpoints"
        )
    return _signing_key(text)


def trusted_public_key() -> Ed25519PublicKey:
    """The key checkpoints must be signed with, for verification."""
    if settings.AUDIT_PUBLIC_KEY:
        return parse_public_key(settings.AUDIT_PUBLIC_KEY)
    if settings.AUDIT_SIGNING_KEY:
        return signing_key().public_key()
    raise ImproperlyConfigured("set AUDIT_PUBLIC_KEY (or AUDIT_SIGNING_KEY) to verify the audit chain")


def signing_key_id() -> str:
    return key_id(public_raw(signing_key().public_key()))


def generate_key_hex() -> str:
    """A new private key in the AUDIT_SIGNING_KEY format (for ``make demo`` and tests)."""
    return (
        Ed25519PrivateKey.generate()
        .private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        .hex()
    )
