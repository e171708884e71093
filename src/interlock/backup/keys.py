"""Backup keys: which key encrypts new backups, and which may decrypt old ones.

The key that encrypts is ``INTERLOCK_BACKUP_KEY`` (base64 of 32 random bytes). Without it, a
key is derived from the server secret (``INTERLOCK_SECRET``, or the generated one in the data
dir) with HKDF-SHA256, so that backups are encrypted with zero configuration — but then the
secret must be kept somewhere other than next to the backups, or they cannot be read.

Every archive names the key it was encrypted with by a key id: the first 8 bytes of a
SHA-256 over the key (domain-separated), printed as 16 hex digits. Rotating means setting a
new ``INTERLOCK_BACKUP_KEY`` and moving the old one to ``INTERLOCK_BACKUP_OLD_KEYS``: new
backups use the new key, old ones still restore. The secret-derived key is always tried too
when the secret is available, so that moving from the derived key to an explicit one keeps
the older backups readable.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from interlock.settings import Settings
from interlock.store.secret import FILE_NAME as SECRET_FILE
from interlock.store.secret import resolve_secret

KEY_BYTES = 32
_KEY_ID_DOMAIN = b"interlock backup key id\x00"
_DERIVE_INFO = b"interlock backup key v1"


def key_id(key: bytes) -> str:
    """A short, non-secret name for ``key``: 16 hex digits."""
    return hashlib.sha256(_KEY_ID_DOMAIN + key).digest()[:8].hex()


def derive_from_secret(secret: bytes) -> bytes:
    """The backup key derived from the server secret."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=_DERIVE_INFO).derive(
        secret
    )


@dataclass(frozen=True, slots=True)
class BackupKey:
    key: bytes
    source: str  # where it came from, for messages: an environment variable or "server secret"

    @property
    def id(self) -> str:
        return key_id(self.key)

    def __repr__(self) -> str:  # never show the key
        return f"BackupKey(id={self.id!r}, source={self.source!r})"


@dataclass(frozen=True, slots=True)
class KeyRing:
    """The key new archives are encrypted with, and every key that may decrypt one."""

    current: BackupKey
    older: tuple[BackupKey, ...] = ()

    def find(self, wanted: str) -> BackupKey | None:
        for candidate in (self.current, *self.older):
            if candidate.id == wanted:
                return candidate
        return None

    @property
    def ids(self) -> list[str]:
        return [candidate.id for candidate in (self.current, *self.older)]


def key_ring(settings: Settings) -> KeyRing:
    """The key ring the settings describe (may create the data dir's secret, as the gateway
    does, when no backup key and no ``INTERLOCK_SECRET`` are set)."""
    older = [BackupKey(old, "INTERLOCK_BACKUP_OLD_KEYS") for old in settings.backup.old_keys]
    if settings.backup.key is None:
        secret = resolve_secret(settings.secret, settings.data_dir)
        return KeyRing(BackupKey(derive_from_secret(secret), "server secret"), tuple(older))
    if settings.secret is not None or (settings.data_dir / SECRET_FILE).is_file():
        secret = resolve_secret(settings.secret, settings.data_dir)
        older.append(BackupKey(derive_from_secret(secret), "server secret"))
    return KeyRing(BackupKey(settings.backup.key, "INTERLOCK_BACKUP_KEY"), tuple(older))
