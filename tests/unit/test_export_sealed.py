"""The export file format: what it seals opens with the same passphrase or server key and
nothing else, and any damage, truncation or tampering is refused."""

from __future__ import annotations

import io

import pytest

from interlock.backup.errors import ArchiveCorrupt, ArchiveRejected, ArchiveTruncated
from interlock.backup.keys import BackupKey, KeyRing
from interlock.privacy.sealed import (
    HEADER,
    ScryptParams,
    Sealer,
    SealingKey,
    WrongKey,
    check_passphrase,
    open_export,
    passphrase_key,
    read_export_header,
    server_key,
)

FAST = ScryptParams(log2_n=10, r=8, p=1)  # the format's floor: fast enough for many tests
PASSPHRASE = "correct horse battery staple"
DOCUMENT = [
    b'{"format": "interlock-export"',
    b', "usage": [',
    *[b"%d," % i for i in range(20000)],
    b"0]}",
]


def seal(key: SealingKey, chunk_size: int = 1024) -> bytes:
    sealer = Sealer(key, chunk_size)
    out = [sealer.start()]
    out.extend(sealer.feed(piece) for piece in DOCUMENT)
    out.append(
        sealer.close(user_id="u1", exported_at="2030-01-01T00:00:00+00:00", counts={"usage": 20001})
    )
    return b"".join(out)


def opened(data: bytes, **keys: object) -> bytes:
    into = io.BytesIO()
    open_export(io.BytesIO(data), into, **keys)  # type: ignore[arg-type]
    return into.getvalue()


def test_a_passphrase_export_opens_with_its_passphrase_only() -> None:
    data = seal(passphrase_key(PASSPHRASE, FAST))
    assert data.startswith(b"ILEXPORT")
    assert b"interlock-export" not in data  # encrypted (and compressed)
    assert opened(data, passphrase=PASSPHRASE) == b"".join(DOCUMENT)
    trailer = open_export(io.BytesIO(data), None, passphrase=PASSPHRASE)
    assert (trailer.user_id, trailer.counts) == ("u1", {"usage": 20001})
    with pytest.raises(WrongKey, match="wrong passphrase for this export"):
        opened(data, passphrase=PASSPHRASE + "!")
    with pytest.raises(WrongKey, match="encrypted with a passphrase"):
        opened(data)
    header = read_export_header(io.BytesIO(data))
    assert header.needs_passphrase and (header.scrypt.log2_n, header.scrypt.r) == (10, 8)


def test_the_default_kdf_is_scrypt_at_32_mib() -> None:
    key = passphrase_key(PASSPHRASE)
    assert (key.scrypt.log2_n, key.scrypt.r, key.scrypt.p) == (15, 8, 1)
    header = read_export_header(io.BytesIO(key.header(1024)))
    assert header.scrypt == key.scrypt and len(header.salt) == 32


def test_a_server_key_export_opens_with_that_key_in_the_ring() -> None:
    current, old = BackupKey(b"n" * 32, "new"), BackupKey(b"o" * 32, "old")
    data = seal(server_key(old))
    assert opened(data, keys=KeyRing(current, (old,))) == b"".join(DOCUMENT)
    with pytest.raises(WrongKey, match=f"backup key {old.id}, which is not configured"):
        opened(data, keys=KeyRing(current))
    with pytest.raises(WrongKey):
        opened(data, passphrase=PASSPHRASE)


@pytest.mark.parametrize("cut", [10, HEADER.size + 2, -1, -20])
def test_a_cut_file_is_truncated(cut: int) -> None:
    data = seal(passphrase_key(PASSPHRASE, FAST))
    with pytest.raises(ArchiveTruncated):
        opened(data[:cut], passphrase=PASSPHRASE)


def test_a_file_cut_at_a_frame_boundary_has_no_final_frame() -> None:
    key = passphrase_key(PASSPHRASE, FAST)
    sealer = Sealer(key, 1024)
    head = sealer.start() + b"".join(sealer.feed(piece) for piece in DOCUMENT)
    with pytest.raises(ArchiveTruncated, match="its final frame is missing"):
        opened(head, passphrase=PASSPHRASE)


def test_damage_and_tampering_are_refused() -> None:
    data = bytearray(seal(passphrase_key(PASSPHRASE, FAST)))
    flipped = bytearray(data)
    flipped[HEADER.size + 100] ^= 1
    with pytest.raises(ArchiveCorrupt, match="the export is corrupt: frame 0 fails authentication"):
        opened(bytes(flipped), passphrase=PASSPHRASE)
    with pytest.raises(ArchiveCorrupt, match="data after its final frame"):
        opened(bytes(data) + b"x", passphrase=PASSPHRASE)
    # the header is authenticated: a changed chunk size or salt is caught
    salt_changed = bytearray(data)
    salt_changed[20] ^= 1
    with pytest.raises(ArchiveRejected):
        opened(bytes(salt_changed), passphrase=PASSPHRASE)
    with pytest.raises(ArchiveCorrupt, match="not an Interlock export"):
        opened(b"PK\x03\x04 a zip file", passphrase=PASSPHRASE)


def test_a_header_asking_for_a_huge_kdf_is_refused_before_running_it() -> None:
    data = bytearray(seal(passphrase_key(PASSPHRASE, FAST)))
    fields = list(HEADER.unpack(bytes(data[: HEADER.size])))
    fields[5] = 30  # log2 N = 30: 128 GiB of memory
    data[: HEADER.size] = HEADER.pack(*fields)
    with pytest.raises(ArchiveCorrupt, match="scrypt parameters out of range"):
        opened(bytes(data), passphrase=PASSPHRASE)


def test_the_trailer_is_checked_against_the_document() -> None:
    key = passphrase_key(PASSPHRASE, FAST)
    sealer = Sealer(key, 1024)
    parts = [sealer.start(), sealer.feed(b'{"a": 1}')]
    sealer._size += 1  # a writer that lies about what it sealed
    parts.append(sealer.close(user_id="u", exported_at="t", counts={}))
    with pytest.raises(ArchiveCorrupt, match="does not match its checksum"):
        opened(b"".join(parts), passphrase=PASSPHRASE)


def test_passphrases_are_long_enough() -> None:
    assert check_passphrase("x" * 12) == "x" * 12
    with pytest.raises(ValueError, match="12 to 1024 characters"):
        check_passphrase("short")
