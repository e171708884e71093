"""The API key format: generate, recognise, identify and hash keys. Pure functions, no I/O.

A key looks like ``il_live_`` + 32 random base62 characters + a 6-character base62 CRC32 of
everything before it (GitHub's token scheme)::

    il_live_3kTq9ZcXb1YwP0aLmN7sDfGh2JkR5tUv 0h4Xy2   (without the space; 46 characters)
    └prefix┘└──────── 190 bits of entropy ──┘└crc32┘

The prefix lets secret scanners spot a leaked key, and the checksum lets the gateway refuse a
mistyped or made-up key without a database round trip. The database only ever holds
``hash_key(secret, key)``, an HMAC-SHA-256 under the server secret; the short id (prefix plus
the first 8 random characters) is the public name shown in listings.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
import zlib
from typing import Literal

KeyKind = Literal["live", "test"]

ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase
RANDOM_LENGTH = 32
CHECKSUM_LENGTH = 6
PREFIX_LENGTH = len("il_live_")
KEY_LENGTH = PREFIX_LENGTH + RANDOM_LENGTH + CHECKSUM_LENGTH
SHORT_ID_RANDOM_CHARS = 8
# Longer credentials are refused before hashing; an admin key set by the operator must fit.
MAX_KEY_LENGTH = 512

# ASCII-only classes: str.isalnum() would accept any Unicode letter or digit.
_KEY_PATTERN = re.compile(rf"il_(?:live|test)_[0-9A-Za-z]{{{RANDOM_LENGTH + CHECKSUM_LENGTH}}}")


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, remainder = divmod(number, 62)
        digits.append(ALPHABET[remainder])
    return "".join(reversed(digits))


def _checksum(body: str) -> str:
    # CRC32 < 2**32 < 62**6, so six base62 digits always hold it.
    return _base62(zlib.crc32(body.encode("ascii")), CHECKSUM_LENGTH)


def generate_key(kind: KeyKind = "live") -> str:
    """A new random key of ``kind`` ("live" or "test"), checksum included."""
    if kind not in ("live", "test"):
        raise ValueError(f"unknown key kind {kind!r}: expected 'live' or 'test'")
    body = f"il_{kind}_" + "".join(secrets.choice(ALPHABET) for _ in range(RANDOM_LENGTH))
    return body + _checksum(body)


def has_valid_checksum(key: str) -> bool:
    """Whether ``key`` is in our format with a correct checksum.

    Cheap and total: any input (huge, non-ASCII, not even a ``str``) gives False, never an
    exception. The length is checked first, so a megabyte of garbage costs nothing.
    """
    if not isinstance(key, str) or len(key) != KEY_LENGTH or not _KEY_PATTERN.fullmatch(key):
        return False
    body = key[: PREFIX_LENGTH + RANDOM_LENGTH]
    return hmac.compare_digest(_checksum(body), key[-CHECKSUM_LENGTH:])


def short_id(key: str) -> str:
    """The public identifier of a key in our format: its prefix and first 8 random characters
    (``il_live_AbCd1234``). Raises ``ValueError`` for a string that is not such a key, since
    part of an arbitrary secret is not safe to show."""
    if not has_valid_checksum(key):
        raise ValueError("not an Interlock API key")
    return key[: PREFIX_LENGTH + SHORT_ID_RANDOM_CHARS]


def hash_key(secret: bytes, key: str) -> bytes:
    """HMAC-SHA-256 of ``key`` under the server ``secret``: the 32 bytes the database stores.

    Never raises for a ``str``: lone surrogates are encoded with ``surrogatepass``.
    """
    return hmac.new(secret, key.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()


class KeyHasher:
    """``hash_key`` under one secret, for hashing many keys (the authenticator hashes every
    request's key). HMAC (RFC 2104) is two hashes of the key padded with two constants; the
    hashes of the padded secret are made once here and copied per key, which costs half of
    an ``hmac.HMAC`` copy and a third of ``hmac.digest`` (OpenSSL looks its algorithm up on
    every call)."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, secret: bytes) -> None:
        block = hashlib.sha256().block_size
        if len(secret) > block:
            secret = hashlib.sha256(secret).digest()
        secret = secret.ljust(block, b"\0")
        self._inner = hashlib.sha256(bytes(byte ^ 0x36 for byte in secret))
        self._outer = hashlib.sha256(bytes(byte ^ 0x5C for byte in secret))

    def __call__(self, key: str) -> bytes:
        inner = self._inner.copy()
        inner.update(key.encode("utf-8", "surrogatepass"))
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


def keys_match(a: bytes, b: bytes) -> bool:
    """Constant-time comparison of two key hashes."""
    return hmac.compare_digest(a, b)
