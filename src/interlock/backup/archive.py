"""The archive format: a database dump, compressed, encrypted in authenticated frames.

    header   "ILBACKUP" | version (1 byte) | key id (8) | salt (32) | chunk size (4, BE)
    frame*   as ``interlock.backup.frames``, with the header as AAD

The frame key is HKDF-SHA256(backup key, salt). Data frames hold zlib-compressed dump bytes
of at most ``chunk size``; the final frame holds the manifest (JSON), whose checksum and size
of the dump are checked against what was decrypted. The whole archive is never in memory:
one frame at a time, on the way in and out.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import msgspec

from interlock.backup.errors import (
    ArchiveCorrupt,
    ArchiveRejected,
    ArchiveTruncated,
    UnknownBackupKey,
)
from interlock.backup.frames import (
    DEFAULT_CHUNK,
    LENGTH,
    MAX_CHUNK,
    MIN_CHUNK,
    READ_BLOCK,
    Digesting,
    FrameWriter,
    OnBytes,
    Readable,
    frame_cipher,
    read_frames,
)
from interlock.backup.keys import BackupKey, KeyRing
from interlock.backup.manifest import Manifest

MAGIC = b"ILBACKUP"
VERSION = 1
HEADER = struct.Struct(">8sB8s32sI")
_FRAME_INFO = b"interlock backup frames v1"

__all__ = [
    "DEFAULT_CHUNK",
    "HEADER",
    "LENGTH",
    "MAGIC",
    "Sealed",
    "open_archive",
    "read_header",
    "seal",
]


def _ignore(_amount: int) -> None:
    return None


@dataclass(frozen=True, slots=True)
class Sealed:
    """An archive written: its manifest, size and checksum."""

    manifest: Manifest
    archive_bytes: int
    archive_sha256: str


def seal(
    source: Path,
    out: BinaryIO,
    key: BackupKey,
    manifest_for: Callable[[int, str], Manifest],
    *,
    chunk_size: int = DEFAULT_CHUNK,
    on_bytes: OnBytes = _ignore,
) -> Sealed:
    """Write ``source`` (a dump file) to ``out`` as an archive.

    ``manifest_for(dump_bytes, dump_sha256)`` builds the manifest once the dump is read.
    ``on_bytes`` is told how many dump bytes were read, as they are.
    """
    if not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
        raise ValueError("chunk size out of range")
    salt = os.urandom(32)
    header = HEADER.pack(MAGIC, VERSION, bytes.fromhex(key.id), salt, chunk_size)
    writer = FrameWriter(out, frame_cipher(key.key, salt, _FRAME_INFO), header, chunk_size)
    digest = hashlib.sha256()
    size = 0
    with source.open("rb") as dump:
        while block := dump.read(READ_BLOCK):
            digest.update(block)
            size += len(block)
            writer.write(block)
            on_bytes(len(block))
    manifest = manifest_for(size, digest.hexdigest())
    writer.finish(manifest.encode())
    out.flush()
    return Sealed(manifest, writer.written, writer.digest.hexdigest())


def read_header(file: Readable, keys: KeyRing) -> tuple[bytes, BackupKey, bytes, int]:
    """The header bytes, the key that opens the archive, its salt and its chunk size."""
    header = file.read(HEADER.size)
    if len(header) < len(MAGIC) or not header.startswith(MAGIC):
        raise ArchiveCorrupt("not an Interlock backup archive")
    if len(header) < HEADER.size:
        raise ArchiveTruncated("the archive is truncated: it ends inside its header")
    _magic, version, raw_key_id, salt, chunk_size = HEADER.unpack(header)
    if version != VERSION:
        raise ArchiveRejected(
            f"archive format version {version} is not supported by this Interlock "
            f"(it reads version {VERSION})"
        )
    if not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
        raise ArchiveCorrupt("the archive header is damaged (chunk size out of range)")
    key = keys.find(raw_key_id.hex())
    if key is None:
        raise UnknownBackupKey(
            f"the archive was encrypted with backup key {raw_key_id.hex()}, which is not "
            f"configured (configured: {', '.join(keys.ids)}); set INTERLOCK_BACKUP_KEY or "
            "INTERLOCK_BACKUP_OLD_KEYS"
        )
    return header, key, salt, chunk_size


def open_archive(
    file: Readable,
    keys: KeyRing,
    into: BinaryIO | None = None,
    *,
    on_bytes: OnBytes = _ignore,
) -> Manifest:
    """Decrypt and check the whole archive in ``file``; write the dump to ``into`` if given.

    Returns the sealed manifest once every frame authenticated, the stream ended where the
    writer ended it, and the dump's size and SHA-256 match the manifest. Raises an
    ``ArchiveRejected`` otherwise (what was written to ``into`` is then to be thrown away).
    """
    header, key, salt, chunk_size = read_header(file, keys)
    on_bytes(len(header))
    dump = Digesting(into)
    cipher = frame_cipher(key.key, salt, _FRAME_INFO)
    payload = read_frames(file, cipher, header, chunk_size, dump.write, on_bytes=on_bytes)
    try:
        manifest = Manifest.decode(payload)
    except msgspec.DecodeError:
        raise ArchiveCorrupt("the archive is corrupt: unreadable manifest") from None
    if manifest.key_id != key.id:
        raise ArchiveCorrupt("the archive is corrupt: its manifest names another key")
    if manifest.dump_bytes != dump.size or manifest.dump_sha256 != dump.hexdigest():
        raise ArchiveCorrupt(
            "the archive is corrupt: the dump does not match the manifest's checksum"
        )
    return manifest
