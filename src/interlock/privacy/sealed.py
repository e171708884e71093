"""The export file: a user's data as JSON, compressed and encrypted in authenticated frames.

    header   "ILEXPORT" | version (1) | mode (1) | key id (8) | salt (32)
             | scrypt log2 N (1) | r (1) | p (1) | check (16) | chunk size (4, BE)
    frame*   as ``interlock.backup.frames`` (AES-256-GCM, STREAM nonces), the header as AAD

``mode`` 1: the master key is scrypt(passphrase, salt, N, r, p), 32 bytes, the parameters in
the header; the key id is zero. ``mode`` 2: the master key is the server's backup key (see
``interlock.backup.keys``), named by its key id. ``check`` is HKDF(master key, salt, "check"):
a wrong passphrase or key is told apart from a damaged file before any frame is read. The
frame key is HKDF(master key, salt, "frames"). Data frames hold the zlib-compressed JSON
document; the final frame a JSON trailer with the document's size, SHA-256 and row counts,
checked against what was decrypted.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from dataclasses import dataclass, field
from typing import Literal

import msgspec
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from interlock.backup.errors import ArchiveCorrupt, ArchiveRejected, ArchiveTruncated
from interlock.backup.frames import (
    MAX_CHUNK,
    MIN_CHUNK,
    Digesting,
    FrameWriter,
    OnBytes,
    Readable,
    Writable,
    frame_cipher,
    read_frames,
)
from interlock.backup.keys import BackupKey, KeyRing

MAGIC = b"ILEXPORT"
VERSION = 1
HEADER = struct.Struct(">8sBB8s32sBBB16sI")
MODE_PASSPHRASE: Literal[1] = 1
MODE_SERVER_KEY: Literal[2] = 2
CHUNK = 256 << 10
SUFFIX = ".ilexp"
MIN_PASSPHRASE = 12
MAX_PASSPHRASE = 1024
_FRAME_INFO = b"interlock export frames v1"
_CHECK_INFO = b"interlock export check v1"
_NO_KEY_ID = bytes(8)


class WrongKey(ArchiveRejected):
    """The passphrase or server key does not open this export."""


@dataclass(frozen=True, slots=True)
class ScryptParams:
    """scrypt's cost: 128 * r * 2**log2_n bytes of memory (32 MiB by default)."""

    log2_n: int = 15
    r: int = 8
    p: int = 1

    def check(self) -> None:
        # Bounds a crafted header cannot push past: at most 1 GiB and a few seconds.
        if not (10 <= self.log2_n <= 20 and 1 <= self.r <= 16 and 1 <= self.p <= 4):
            raise ArchiveCorrupt("the export's header is damaged (scrypt parameters out of range)")


DEFAULT_SCRYPT = ScryptParams()


@dataclass(frozen=True, slots=True)
class SealingKey:
    """The master key of one export, with what its header says about it."""

    mode: Literal[1, 2]
    master: bytes = field(repr=False)
    salt: bytes
    key_id: bytes = _NO_KEY_ID
    scrypt: ScryptParams = DEFAULT_SCRYPT

    @property
    def check(self) -> bytes:
        return _check_value(self.master, self.salt)

    def header(self, chunk_size: int) -> bytes:
        mode_scrypt = self.scrypt if self.mode == MODE_PASSPHRASE else ScryptParams(0, 0, 0)
        return HEADER.pack(
            MAGIC,
            VERSION,
            self.mode,
            self.key_id,
            self.salt,
            mode_scrypt.log2_n,
            mode_scrypt.r,
            mode_scrypt.p,
            self.check,
            chunk_size,
        )


def _check_value(master: bytes, salt: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=16, salt=salt, info=_CHECK_INFO).derive(master)


def check_passphrase(passphrase: str) -> str:
    """``passphrase`` if it is long enough to guard an export; ``ValueError`` otherwise."""
    if not MIN_PASSPHRASE <= len(passphrase) <= MAX_PASSPHRASE:
        raise ValueError(
            f"the passphrase must be {MIN_PASSPHRASE} to {MAX_PASSPHRASE} characters long"
        )
    return passphrase


def _scrypt(passphrase: str, salt: bytes, params: ScryptParams) -> bytes:
    kdf = Scrypt(salt=salt, length=32, n=1 << params.log2_n, r=params.r, p=params.p)
    return kdf.derive(passphrase.encode())


def passphrase_key(passphrase: str, params: ScryptParams = DEFAULT_SCRYPT) -> SealingKey:
    """A new export's key from a passphrase (CPU and memory heavy: run it off the loop)."""
    params.check()
    salt = os.urandom(32)
    return SealingKey(MODE_PASSPHRASE, _scrypt(passphrase, salt, params), salt, scrypt=params)


def server_key(key: BackupKey) -> SealingKey:
    """A new export's key: the server's current backup key."""
    return SealingKey(MODE_SERVER_KEY, key.key, os.urandom(32), key_id=bytes.fromhex(key.id))


class Trailer(msgspec.Struct, frozen=True, kw_only=True):
    """The final frame: what the document is, checked when it is opened."""

    user_id: str
    exported_at: str
    document_bytes: int
    document_sha256: str
    counts: dict[str, int]


class _Buffer:
    def __init__(self) -> None:
        self._data = bytearray()

    def write(self, data: bytes, /) -> int:
        self._data += data
        return len(data)

    def take(self) -> bytes:
        data = bytes(self._data)
        self._data.clear()
        return data


class Sealer:
    """Seals a document given piece by piece; each call returns the bytes ready to send."""

    def __init__(self, key: SealingKey, chunk_size: int = CHUNK) -> None:
        self._buffer = _Buffer()
        header = key.header(chunk_size)
        cipher = frame_cipher(key.master, key.salt, _FRAME_INFO)
        self._writer = FrameWriter(self._buffer, cipher, header, chunk_size)
        self._digest = hashlib.sha256()
        self._size = 0

    def start(self) -> bytes:
        """The header."""
        return self._buffer.take()

    def feed(self, data: bytes) -> bytes:
        self._digest.update(data)
        self._size += len(data)
        self._writer.write(data)
        return self._buffer.take()

    def close(self, *, user_id: str, exported_at: str, counts: dict[str, int]) -> bytes:
        trailer = Trailer(
            user_id=user_id,
            exported_at=exported_at,
            document_bytes=self._size,
            document_sha256=self._digest.hexdigest(),
            counts=counts,
        )
        self._writer.finish(msgspec.json.encode(trailer))
        return self._buffer.take()


@dataclass(frozen=True, slots=True)
class ExportHeader:
    mode: int
    key_id: str
    salt: bytes
    scrypt: ScryptParams
    check: bytes
    chunk_size: int
    raw: bytes

    @property
    def needs_passphrase(self) -> bool:
        return self.mode == MODE_PASSPHRASE


def read_export_header(file: Readable) -> ExportHeader:
    raw = file.read(HEADER.size)
    if len(raw) < len(MAGIC) or not raw.startswith(MAGIC):
        raise ArchiveCorrupt("not an Interlock export")
    if len(raw) < HEADER.size:
        raise ArchiveTruncated("the export is truncated: it ends inside its header")
    _magic, version, mode, key_id, salt, log2_n, r, p, check, chunk = HEADER.unpack(raw)
    if version != VERSION:
        raise ArchiveRejected(
            f"export format version {version} is not supported by this Interlock "
            f"(it reads version {VERSION})"
        )
    if mode not in (MODE_PASSPHRASE, MODE_SERVER_KEY):
        raise ArchiveCorrupt("the export's header is damaged (unknown key mode)")
    params = ScryptParams(log2_n, r, p)
    if mode == MODE_PASSPHRASE:
        params.check()
    if not MIN_CHUNK <= chunk <= MAX_CHUNK:
        raise ArchiveCorrupt("the export's header is damaged (chunk size out of range)")
    return ExportHeader(mode, key_id.hex(), salt, params, check, chunk, raw)


def _ignore(_amount: int) -> None:
    return None


def open_export(
    file: Readable,
    into: Writable | None,
    *,
    passphrase: str | None = None,
    keys: KeyRing | None = None,
    on_bytes: OnBytes = _ignore,
) -> Trailer:
    """Decrypt and check the export in ``file``, writing the JSON document to ``into``.

    ``passphrase`` opens a passphrase export, ``keys`` a server-key export. Raises
    ``WrongKey`` when they do not fit, another ``ArchiveRejected`` when the file is damaged,
    truncated or not an export (what was written to ``into`` is then to be thrown away).
    """
    header = read_export_header(file)
    if header.needs_passphrase:
        if passphrase is None:
            raise WrongKey("this export is encrypted with a passphrase: give it")
        master = _scrypt(passphrase, header.salt, header.scrypt)
        if not hmac.compare_digest(_check_value(master, header.salt), header.check):
            raise WrongKey("wrong passphrase for this export")
    else:
        found = keys.find(header.key_id) if keys is not None else None
        if found is None:
            raise WrongKey(
                f"this export is encrypted with the server's backup key {header.key_id}, "
                "which is not configured here"
            )
        master = found.key
        if not hmac.compare_digest(_check_value(master, header.salt), header.check):
            raise ArchiveCorrupt("the export's header is damaged (key check fails)")
    document = Digesting(into)
    cipher = frame_cipher(master, header.salt, _FRAME_INFO)
    payload = read_frames(
        file,
        cipher,
        header.raw,
        header.chunk_size,
        document.write,
        on_bytes=on_bytes,
        what="export",
    )
    try:
        trailer = msgspec.json.decode(payload, type=Trailer)
    except msgspec.DecodeError:
        raise ArchiveCorrupt("the export is corrupt: unreadable trailer") from None
    if trailer.document_bytes != document.size or trailer.document_sha256 != document.hexdigest():
        raise ArchiveCorrupt("the export is corrupt: the document does not match its checksum")
    return trailer
