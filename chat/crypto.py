"""Secrets kept at rest (a backend's API key), encrypted with Fernet (AES-128-CBC + HMAC-SHA256,
``cryptography``).

The keys come from ``SLIPSTREAM_ENCRYPTION_KEY``: a comma-separated list of Fernet keys, the
first encrypting and all decrypting (``MultiFernet``). To rotate: put a new key first, run
``manage.py rotate_encryption_key`` (re-encrypts every stored secret), then drop the old one.
Unset, one key is derived from ``SECRET_KEY`` with HKDF-SHA256, so a local install needs no
setup (changing ``SECRET_KEY`` then makes stored keys unreadable).

Plain secrets never appear in exceptions or logs from here: ``SecretUnreadable`` says which
thing could not be decrypted, not what it held.
"""

from __future__ import annotations

import base64
from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings


class SecretUnreadable(Exception):
    """A stored secret that none of the configured keys decrypts (a key dropped too early, or
    SECRET_KEY changed while no SLIPSTREAM_ENCRYPTION_KEY was set)."""


def derived_key(secret_key: str) -> bytes:
    """A Fernet key (urlsafe base64 of 32 bytes) derived from Django's ``SECRET_KEY``."""
    raw = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"slipstream:secrets-at-rest"
    ).derive(secret_key.encode())
    return base64.urlsafe_b64encode(raw)


@cache
def _fernet(keys: tuple[str, ...], secret_key: str) -> MultiFernet:
    if keys:
        return MultiFernet([Fernet(key.strip().encode()) for key in keys if key.strip()])
    return MultiFernet([Fernet(derived_key(secret_key))])


def fernet() -> MultiFernet:
    """The configured keys (cached per settings value, so tests may change them)."""
    return _fernet(tuple(settings.SLIPSTREAM_ENCRYPTION_KEY), settings.SECRET_KEY)


def encrypt(plain: str) -> str:
    """``plain`` as a Fernet token (ASCII); the empty string stays empty (no secret set)."""
    return fernet().encrypt(plain.encode()).decode("ascii") if plain else ""


def decrypt(token: str, *, what: str = "secret") -> str:
    """The plain text of a token from ``encrypt``; "" for "". Raises ``SecretUnreadable``
    (naming ``what``, never the token) when no configured key opens it."""
    if not token:
        return ""
    try:
        return fernet().decrypt(token.encode("ascii")).decode()
    except (InvalidToken, UnicodeError):
        raise SecretUnreadable(f"{what}: no configured encryption key decrypts it") from None


def reencrypt(token: str) -> str:
    """``token`` under the first key (rotation); "" stays ""."""
    return fernet().rotate(token.encode("ascii")).decode("ascii") if token else ""
