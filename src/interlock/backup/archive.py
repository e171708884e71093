"""The archive format: a database dump, compressed, encrypted in authenticated frames.

    header   "ILBACKUP" | version (1 byte) | key id (8) | salt (32) | chunk size (4, BE)
    frame*   length (4, BE) | AES-256-GCM(nonce, kind (1) | payload) with the header as AAD

The frame key is HKDF-SHA256(backup key, salt): a fresh key per archive, so nonces never
repeat under one key whatever the number of archives. A frame's nonce is its sequence number
(11 bytes) and a final flag (1 byte), the STREAM construction: a frame moved, dropped or
taken from another archive fails authentication; an archive cut at a frame boundary has no
final frame; bytes after the final frame are refused. Data frames hold zlib-compressed dump
bytes of at most ``chunk size``; the final frame holds the manifest (JSON), whose checksum
and size of the dump are checked against what was decrypted. The whole archive is never in
memory: one frame at a time, on the way in and out.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from interlock.backup.errors import (
    ArchiveCorrupt,
    ArchiveRejected,
    ArchiveTruncated,
    UnknownBackupKey,
)
from interlock.backup.keys import BackupKey, KeyRing
from interlock.backup.manifest import Manifest

MAGIC = b"ILBACKUP"
VERSION = 1
HEADER = struct.Struct(">8sB8s32sI")
LENGTH = struct.Struct(">I")
TAG_BYTES = 16
DEFAULT_CHUNK = 1 << 20
MAX_CHUNK = 16 << 20
KIND_DATA = 1
KIND_MANIFEST = 2
READ_BLOCK = 1 << 20
_FRAME_INFO = b"interlock backup frames v1"
_MAX_SEQUENCE = 1 << 88

OnBytes = Callable[[int], None]


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def _frame_cipher(key: bytes, salt: bytes) -> AESGCM:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_FRAME_INFO).derive(key)
    return AESGCM(derived)


def _nonce(sequence: int, final: bool) -> bytes:
    if sequence >= _MAX_SEQUENCE:  # pragma: no cover - 2^88 frames of a megabyte
        raise ArchiveRejected("archive has too many frames")
    return sequence.to_bytes(11, "big") + (b"\x01" if final else b"\x00")


def _ignore(_amount: int) -> None:
    return None


@dataclass(frozen=True, slots=True)
class Sealed:
    """An archive written: its manifest, size and checksum."""

    manifest: Manifest
    archive_bytes: int
    archive_sha256: str


class _Writer:
    def __init__(self, out: BinaryIO, key: BackupKey, chunk_size: int) -> None:
        salt = os.urandom(32)
        self._header = HEADER.pack(MAGIC, VERSION, bytes.fromhex(key.id), salt, chunk_size)
        self._cipher = _frame_cipher(key.key, salt)
        self._out = out
        self._chunk = chunk_size
        self._sequence = 0
        self._pending = bytearray()
        self._compressor = zlib.compressobj(6)
        self.archive_bytes = 0
        self.archive_hash = hashlib.sha256()
        self._emit_raw(self._header)

    def _emit_raw(self, data: bytes) -> None:
        self._out.write(data)
        self.archive_bytes += len(data)
        self.archive_hash.update(data)

    def _frame(self, kind: int, payload: bytes, final: bool) -> None:
        nonce = _nonce(self._sequence, final)
        sealed = self._cipher.encrypt(nonce, bytes([kind]) + payload, self._header)
        self._emit_raw(LENGTH.pack(len(sealed)) + sealed)
        self._sequence += 1

    def write(self, data: bytes) -> None:
        self._pending += self._compressor.compress(data)
        while len(self._pending) >= self._chunk:
            self._frame(KIND_DATA, bytes(self._pending[: self._chunk]), final=False)
            del self._pending[: self._chunk]

    def finish(self, manifest: bytes) -> None:
        self._pending += self._compressor.flush()
        while self._pending:
            self._frame(KIND_DATA, bytes(self._pending[: self._chunk]), final=False)
            del self._pending[: self._chunk]
        if len(manifest) > self._chunk:  # pragma: no cover - a manifest is a few hundred bytes
            raise ArchiveRejected("manifest too large")
        self._frame(KIND_MANIFEST, manifest, final=True)


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
    if not 1024 <= chunk_size <= MAX_CHUNK:
        raise ValueError("chunk size out of range")
    writer = _Writer(out, key, chunk_size)
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
    return Sealed(manifest, writer.archive_bytes, writer.archive_hash.hexdigest())


def _read_exactly(file: Readable, size: int, what: str) -> bytes:
    data = file.read(size)
    if len(data) != size:
        raise ArchiveTruncated(f"the archive is truncated: it ends inside {what}")
    return data


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
    if not 1024 <= chunk_size <= MAX_CHUNK:
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
    cipher = _frame_cipher(key.key, salt)
    decompressor = zlib.decompressobj()
    digest = hashlib.sha256()
    size = 0
    largest = chunk_size + 1 + TAG_BYTES

    def emit(data: bytes) -> None:
        nonlocal size
        digest.update(data)
        size += len(data)
        if into is not None:
            into.write(data)

    sequence = 0
    while True:
        raw_length = file.read(LENGTH.size)
        if not raw_length:
            raise ArchiveTruncated("the archive is truncated: its final frame is missing")
        if len(raw_length) < LENGTH.size:
            raise ArchiveTruncated("the archive is truncated: it ends inside a frame")
        (length,) = LENGTH.unpack(raw_length)
        if not 1 + TAG_BYTES <= length <= largest:
            raise ArchiveCorrupt(f"the archive is corrupt: frame {sequence} has a bad length")
        sealed = _read_exactly(file, length, "a frame")
        on_bytes(LENGTH.size + length)
        final = False
        try:
            plain = cipher.decrypt(_nonce(sequence, False), sealed, header)
        except InvalidTag:
            try:
                plain = cipher.decrypt(_nonce(sequence, True), sealed, header)
            except InvalidTag:
                raise ArchiveCorrupt(
                    f"the archive is corrupt: frame {sequence} fails authentication "
                    "(damaged, reordered or from another archive)"
                ) from None
            final = True
        sequence += 1
        kind, payload = plain[0], plain[1:]
        if not final:
            if kind != KIND_DATA:
                raise ArchiveCorrupt("the archive is corrupt: unexpected frame kind")
            try:
                data = decompressor.decompress(payload, READ_BLOCK)
                emit(data)
                while decompressor.unconsumed_tail:
                    emit(decompressor.decompress(decompressor.unconsumed_tail, READ_BLOCK))
            except zlib.error:
                raise ArchiveCorrupt("the archive is corrupt: bad compressed data") from None
            continue
        if kind != KIND_MANIFEST:
            raise ArchiveCorrupt("the archive is corrupt: the final frame is not a manifest")
        if file.read(1):
            raise ArchiveCorrupt("the archive is corrupt: data after its final frame")
        emit(decompressor.flush())
        if not decompressor.eof or decompressor.unused_data:
            raise ArchiveCorrupt("the archive is corrupt: the compressed dump is incomplete")
        try:
            manifest = Manifest.decode(payload)
        except msgspec.DecodeError:
            raise ArchiveCorrupt("the archive is corrupt: unreadable manifest") from None
        if manifest.key_id != key.id:
            raise ArchiveCorrupt("the archive is corrupt: its manifest names another key")
        if manifest.dump_bytes != size or manifest.dump_sha256 != digest.hexdigest():
            raise ArchiveCorrupt(
                "the archive is corrupt: the dump does not match the manifest's checksum"
            )
        return manifest
