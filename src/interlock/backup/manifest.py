"""The manifest: what a backup holds, sealed inside the archive and copied beside it.

The copy beside the archive (``NAME.json``) lets ``interlock backup list`` and retention
work without downloading or decrypting anything; it also records the archive's own size and
checksum. The sealed copy (the archive's final frame) is the one a restore trusts: ``verify``
checks that both agree.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

FORMAT_VERSION = 1
SUFFIX = ".ilbk"
MANIFEST_SUFFIX = ".json"

DatabaseKind = Literal["sqlite", "postgresql"]


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    """What one backup holds. Times are UTC."""

    format: int = FORMAT_VERSION
    name: str
    created_at: datetime
    interlock_version: str
    database: DatabaseKind
    schema_revision: str | None  # the Alembic revision of the data
    dump_format: Literal["sqlite", "pg_dump_custom"]
    dump_bytes: int  # the plain dump, before compression and encryption
    dump_sha256: str
    row_counts: dict[str, int]
    pg_schema: str | None = None  # PostgreSQL: the schema the tables were dumped from
    compression: Literal["zlib"] = "zlib"
    cipher: Literal["AES-256-GCM"] = "AES-256-GCM"
    key_id: str

    def encode(self) -> bytes:
        return msgspec.json.encode(self)

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        return msgspec.json.decode(data, type=cls)


class Listing(msgspec.Struct, frozen=True, kw_only=True):
    """The manifest as stored beside the archive, with the archive's size and checksum."""

    manifest: Manifest
    archive_bytes: int
    archive_sha256: str

    def encode(self) -> bytes:
        return msgspec.json.format(msgspec.json.encode(self), indent=2)

    @classmethod
    def decode(cls, data: bytes) -> Listing:
        return msgspec.json.decode(data, type=cls)


def archive_name(name: str) -> str:
    return name + SUFFIX


def listing_name(name: str) -> str:
    return name + SUFFIX + MANIFEST_SUFFIX
