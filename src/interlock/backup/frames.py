"""Chunked authenticated encryption: compressed data in AES-256-GCM frames, then a final one.

Shared by the backup archives (``interlock.backup.archive``) and the per-user exports
(``interlock.privacy.sealed``); each has its own header, which is the AAD of every frame.

    frame*   length (4, BE) | AES-256-GCM(nonce, kind (1) | payload) with the header as AAD

The frame key is HKDF-SHA256(master key, salt, info): a fresh key per file, so nonces never
repeat under one key whatever the number of files. A frame's nonce is its sequence number
(11 bytes) and a final flag (1 byte), the STREAM construction: a frame moved, dropped or
taken from another file fails authentication; a file cut at a frame boundary has no final
frame; bytes after the final frame are refused. Data frames hold zlib-compressed bytes, at
most ``chunk size`` of them; the final frame holds what the format puts there (a manifest).
One frame at a time is in memory, on the way in and out.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Callable
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from interlock.backup.errors import ArchiveCorrupt, ArchiveRejected, ArchiveTruncated

LENGTH = struct.Struct(">I")
TAG_BYTES = 16
DEFAULT_CHUNK = 1 << 20
MAX_CHUNK = 16 << 20
MIN_CHUNK = 1024
KIND_DATA = 1
KIND_FINAL = 2
READ_BLOCK = 1 << 20
_MAX_SEQUENCE = 1 << 88

OnBytes = Callable[[int], None]


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class Writable(Protocol):
    def write(self, data: bytes, /) -> object: ...


def frame_cipher(key: bytes, salt: bytes, info: bytes) -> AESGCM:
    """The AEAD of one file's frames: its key derived from the master key and the salt."""
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(key)
    return AESGCM(derived)


def nonce(sequence: int, final: bool) -> bytes:
    if sequence >= _MAX_SEQUENCE:  # pragma: no cover - 2^88 frames of a megabyte
        raise ArchiveRejected("too many frames")
    return sequence.to_bytes(11, "big") + (b"\x01" if final else b"\x00")


def _ignore(_amount: int) -> None:
    return None


class Digesting:
    """Passes what is written on to ``into`` (if any), counting and hashing it: what the
    final frame's size and SHA-256 are checked against."""

    def __init__(self, into: Writable | None) -> None:
        self._into = into
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self._hash.update(data)
        self.size += len(data)
        if self._into is not None:
            self._into.write(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class FrameWriter:
    """Writes ``header``, then compressed data frames, then the final frame, to ``out``."""

    def __init__(self, out: Writable, cipher: AESGCM, header: bytes, chunk_size: int) -> None:
        if not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
            raise ValueError("chunk size out of range")
        self._header = header
        self._cipher = cipher
        self._out = out
        self._chunk = chunk_size
        self._sequence = 0
        self._pending = bytearray()
        self._compressor = zlib.compressobj(6)
        self.written = 0
        self.digest = hashlib.sha256()
        self._emit_raw(header)

    def _emit_raw(self, data: bytes) -> None:
        self._out.write(data)
        self.written += len(data)
        self.digest.update(data)

    def _frame(self, kind: int, payload: bytes, final: bool) -> None:
        sealed = self._cipher.encrypt(
            nonce(self._sequence, final), bytes([kind]) + payload, self._header
        )
        self._emit_raw(LENGTH.pack(len(sealed)) + sealed)
        self._sequence += 1

    def write(self, data: bytes) -> None:
        self._pending += self._compressor.compress(data)
        while len(self._pending) >= self._chunk:
            self._frame(KIND_DATA, bytes(self._pending[: self._chunk]), final=False)
            del self._pending[: self._chunk]

    def flush(self) -> None:
        """Seal what was written so far into frames now (a streamed reader gets it sooner)."""
        self._pending += self._compressor.flush(zlib.Z_SYNC_FLUSH)
        while self._pending:
            self._frame(KIND_DATA, bytes(self._pending[: self._chunk]), final=False)
            del self._pending[: self._chunk]

    def finish(self, final: bytes) -> None:
        self._pending += self._compressor.flush()
        while self._pending:
            self._frame(KIND_DATA, bytes(self._pending[: self._chunk]), final=False)
            del self._pending[: self._chunk]
        if len(final) > self._chunk:  # pragma: no cover - a manifest is a few hundred bytes
            raise ArchiveRejected("final frame too large")
        self._frame(KIND_FINAL, final, final=True)


def _read_exactly(file: Readable, size: int, what: str, inside: str) -> bytes:
    data = file.read(size)
    if len(data) != size:
        raise ArchiveTruncated(f"the {what} is truncated: it ends inside {inside}")
    return data


def read_frames(
    file: Readable,
    cipher: AESGCM,
    header: bytes,
    chunk_size: int,
    emit: Callable[[bytes], None],
    *,
    on_bytes: OnBytes = _ignore,
    what: str = "archive",
) -> bytes:
    """Decrypt and decompress the frames after ``header``, giving the data to ``emit``;
    the final frame's payload once the stream ended where the writer ended it.

    Raises ``ArchiveCorrupt`` / ``ArchiveTruncated`` (messages name the file as ``what``).
    """
    decompressor = zlib.decompressobj()
    largest = chunk_size + 1 + TAG_BYTES
    sequence = 0
    while True:
        raw_length = file.read(LENGTH.size)
        if not raw_length:
            raise ArchiveTruncated(f"the {what} is truncated: its final frame is missing")
        if len(raw_length) < LENGTH.size:
            raise ArchiveTruncated(f"the {what} is truncated: it ends inside a frame")
        (length,) = LENGTH.unpack(raw_length)
        if not 1 + TAG_BYTES <= length <= largest:
            raise ArchiveCorrupt(f"the {what} is corrupt: frame {sequence} has a bad length")
        sealed = _read_exactly(file, length, what, "a frame")
        on_bytes(LENGTH.size + length)
        final = False
        try:
            plain = cipher.decrypt(nonce(sequence, False), sealed, header)
        except InvalidTag:
            try:
                plain = cipher.decrypt(nonce(sequence, True), sealed, header)
            except InvalidTag:
                raise ArchiveCorrupt(
                    f"the {what} is corrupt: frame {sequence} fails authentication "
                    f"(damaged, reordered or from another {what})"
                ) from None
            final = True
        sequence += 1
        kind, payload = plain[0], plain[1:]
        if not final:
            if kind != KIND_DATA:
                raise ArchiveCorrupt(f"the {what} is corrupt: unexpected frame kind")
            try:
                emit(decompressor.decompress(payload, READ_BLOCK))
                while decompressor.unconsumed_tail:
                    emit(decompressor.decompress(decompressor.unconsumed_tail, READ_BLOCK))
            except zlib.error:
                raise ArchiveCorrupt(f"the {what} is corrupt: bad compressed data") from None
            continue
        if kind != KIND_FINAL:
            raise ArchiveCorrupt(f"the {what} is corrupt: the final frame is not a manifest")
        if file.read(1):
            raise ArchiveCorrupt(f"the {what} is corrupt: data after its final frame")
        emit(decompressor.flush())
        if not decompressor.eof or decompressor.unused_data:
            raise ArchiveCorrupt(f"the {what} is corrupt: the compressed data is incomplete")
        return payload
