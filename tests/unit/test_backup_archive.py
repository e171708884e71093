"""The backup archive format, keys, retention and the commands built for the PostgreSQL
tools: pure logic, no database."""

from __future__ import annotations

import base64
import io
import os
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from interlock.backup.archive import HEADER, LENGTH, open_archive, seal
from interlock.backup.errors import ArchiveCorrupt, ArchiveTruncated, UnknownBackupKey
from interlock.backup.keys import BackupKey, KeyRing, derive_from_secret, key_id, key_ring
from interlock.backup.manifest import Manifest
from interlock.backup.postgres_dump import libpq_environment, pg_dump_command, restore_commands
from interlock.backup.retention import to_delete
from interlock.settings import ConfigError, load_settings

KEY = BackupKey(b"k" * 32, "test")
OTHER = BackupKey(b"o" * 32, "other")
CHUNK = 1024


def manifest_for(size: int, sha256: str) -> Manifest:
    return Manifest(
        name="interlock-test",
        created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        interlock_version="0",
        database="sqlite",
        schema_revision="0003_identity",
        dump_format="sqlite",
        dump_bytes=size,
        dump_sha256=sha256,
        row_counts={"users": 3},
        key_id=KEY.id,
    )


@pytest.fixture
def dump(tmp_path: Path) -> bytes:
    # Incompressible enough to need many frames of CHUNK bytes.
    data = os.urandom(20_000) + b"interlock " * 5000
    (tmp_path / "dump").write_bytes(data)
    return data


@pytest.fixture
def archive(tmp_path: Path, dump: bytes) -> bytes:
    out = io.BytesIO()
    sealed = seal(tmp_path / "dump", out, KEY, manifest_for, chunk_size=CHUNK)
    assert sealed.archive_bytes == len(out.getvalue())
    assert sealed.manifest.dump_bytes == len(dump)
    return out.getvalue()


def frame_offsets(archive: bytes) -> list[int]:
    offsets, position = [], HEADER.size
    while position < len(archive):
        offsets.append(position)
        (length,) = LENGTH.unpack_from(archive, position)
        position += LENGTH.size + length
    return offsets


def test_an_archive_opens_to_the_same_dump_and_manifest(archive: bytes, dump: bytes) -> None:
    out = io.BytesIO()
    seen: list[int] = []
    manifest = open_archive(io.BytesIO(archive), KeyRing(KEY), out, on_bytes=seen.append)
    assert out.getvalue() == dump
    assert manifest.row_counts == {"users": 3} and manifest.key_id == KEY.id
    assert sum(seen) == len(archive)
    assert len(frame_offsets(archive)) > 10  # streamed in frames, not one blob
    assert b"interlock " not in archive  # compressed and encrypted


@pytest.mark.parametrize("where", [HEADER.size - 3, HEADER.size + 9, -40, -1, 0.5])
def test_a_flipped_byte_anywhere_is_refused(archive: bytes, where: float) -> None:
    damaged = bytearray(archive)
    position = int(len(archive) * where) if isinstance(where, float) else where
    damaged[position] ^= 0x01
    with pytest.raises(ArchiveCorrupt):
        open_archive(io.BytesIO(bytes(damaged)), KeyRing(KEY))


def test_a_truncated_archive_is_refused_wherever_it_is_cut(archive: bytes) -> None:
    offsets = frame_offsets(archive)
    for cut in [10, HEADER.size, HEADER.size + 2, offsets[3], offsets[-1], len(archive) - 1]:
        with pytest.raises((ArchiveTruncated, ArchiveCorrupt)) as caught:
            open_archive(io.BytesIO(archive[:cut]), KeyRing(KEY))
        if cut >= HEADER.size:
            assert isinstance(caught.value, ArchiveTruncated), cut
            assert "truncated" in str(caught.value)


def test_reordered_dropped_or_appended_frames_are_refused(archive: bytes) -> None:
    offsets = frame_offsets(archive)
    first, second, third = (archive[offsets[i] : offsets[i + 1]] for i in range(3))
    head, rest = archive[: offsets[0]], archive[offsets[3] :]
    for tampered in (
        head + second + first + third + rest,  # swapped
        head + first + third + rest,  # one frame dropped
        archive + first,  # a frame appended after the end
        archive + b"\x00",
    ):
        with pytest.raises(ArchiveCorrupt):
            open_archive(io.BytesIO(tampered), KeyRing(KEY))


def test_a_frame_from_another_archive_of_the_same_key_is_refused(
    tmp_path: Path, archive: bytes
) -> None:
    other = io.BytesIO()
    seal(tmp_path / "dump", other, KEY, manifest_for, chunk_size=CHUNK)
    mine, theirs = frame_offsets(archive), frame_offsets(other.getvalue())
    spliced = archive[: mine[1]] + other.getvalue()[theirs[1] : theirs[2]] + archive[mine[2] :]
    with pytest.raises(ArchiveCorrupt, match="frame 1 fails authentication"):
        open_archive(io.BytesIO(spliced), KeyRing(KEY))


def test_a_wrong_key_names_the_key_it_needs(archive: bytes) -> None:
    with pytest.raises(UnknownBackupKey) as caught:
        open_archive(io.BytesIO(archive), KeyRing(OTHER))
    assert KEY.id in str(caught.value) and OTHER.id in str(caught.value)
    assert "INTERLOCK_BACKUP_OLD_KEYS" in str(caught.value)


def test_a_rotated_key_still_opens_old_archives(archive: bytes) -> None:
    manifest = open_archive(io.BytesIO(archive), KeyRing(OTHER, (KEY,)))
    assert manifest.key_id == KEY.id


def test_not_an_archive() -> None:
    with pytest.raises(ArchiveCorrupt, match="not an Interlock backup archive"):
        open_archive(io.BytesIO(b"SQLite format 3\x00" + b"\x00" * 100), KeyRing(KEY))


def test_the_header_records_the_key_id(archive: bytes) -> None:
    magic, version, raw_id, _salt, chunk = struct.unpack_from(">8sB8s32sI", archive)
    assert (magic, version, raw_id.hex(), chunk) == (b"ILBACKUP", 1, KEY.id, CHUNK)
    assert len(KEY.id) == 16 and KEY.id == key_id(b"k" * 32) != OTHER.id
    assert repr(KEY).count("k" * 8) == 0


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def test_keys_come_from_the_environment_or_the_server_secret(tmp_path: Path) -> None:
    base = {"INTERLOCK_DATA_DIR": str(tmp_path / "data"), "INTERLOCK_SECRET": "s" * 40}
    derived = key_ring(load_settings(base))
    assert derived.current.source == "server secret"
    assert derived.current.key == derive_from_secret(b"s" * 40)
    explicit = key_ring(
        load_settings(
            {
                **base,
                "INTERLOCK_BACKUP_KEY": b64(b"n" * 32),
                "INTERLOCK_BACKUP_OLD_KEYS": f"{b64(b'a' * 32)}, {b64(b'b' * 32)}",
            }
        )
    )
    assert explicit.current.key == b"n" * 32
    # the old keys, then the secret-derived key, so switching to an explicit key loses nothing
    assert [k.key for k in explicit.older] == [b"a" * 32, b"b" * 32, derived.current.key]


def test_bad_backup_keys_are_reported_without_echoing_them() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(
            {
                "INTERLOCK_DATA_DIR": "/tmp/x",
                "INTERLOCK_BACKUP_KEY": "c2hvcnQ=",
                "INTERLOCK_BACKUP_OLD_KEYS": "not base64!",
                "INTERLOCK_BACKUP_S3_ACCESS_KEY_ID": "AKIA",
            }
        )
    assert caught.value.problems == [
        "INTERLOCK_BACKUP_KEY: must be 32 bytes, base64-encoded",
        "INTERLOCK_BACKUP_OLD_KEYS: not base64 (generate a key: `interlock backup keygen`)",
        "INTERLOCK_BACKUP_S3_ACCESS_KEY_ID and INTERLOCK_BACKUP_S3_SECRET_ACCESS_KEY: "
        "set both or neither",
    ]
    assert "c2hvcnQ" not in str(caught.value)


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('[backup]\ndestination = "s3"\n', 'destination = "s3" needs [backup.s3] bucket'),
        ('[backup]\ndestination = "ftp"\n', "backup.destination: Input should be 'local' or 's3'"),
        ("[backup]\nkeep_last = -1\n", "backup.keep_last"),
        ('[backup.s3]\nbucket = "Bad_Bucket"\n', "backup.s3.bucket: not a bucket name"),
        (
            '[backup.s3]\nbucket = "bk1"\nendpoint_url = "http://u:p@host"\n',
            "backup.s3.endpoint_url: must not carry credentials",
        ),
        ("[backup]\nretention = 3\n", "backup.retention: Extra inputs are not permitted"),
    ],
)
def test_the_backup_section_is_validated(tmp_path: Path, toml: str, expected: str) -> None:
    path = tmp_path / "interlock.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_settings({"INTERLOCK_DATA_DIR": "/tmp/x"}, config_path=path)
    assert any(expected in line for line in caught.value.problems), caught.value.problems


def test_the_s3_prefix_is_normalised(tmp_path: Path) -> None:
    path = tmp_path / "interlock.toml"
    path.write_text('[backup]\ndestination = "s3"\n[backup.s3]\nbucket = "bk1"\nprefix = "/x/y"\n')
    settings = load_settings({"INTERLOCK_DATA_DIR": "/tmp/x"}, config_path=path)
    assert settings.config.backup.s3.prefix == "x/y/"


NOW = datetime(2026, 6, 30, 12, tzinfo=UTC)


def days_ago(*ages: float) -> list[tuple[str, datetime]]:
    return [(f"b{age:g}", NOW - timedelta(days=age)) for age in ages]


def test_retention_keeps_the_last_n_or_the_last_d_days() -> None:
    backups = days_ago(0, 1, 2, 3, 10, 40)
    assert to_delete(backups, keep_last=3, keep_days=0, now=NOW) == ["b40", "b10", "b3"]
    assert to_delete(backups, keep_last=0, keep_days=5, now=NOW) == ["b40", "b10"]
    assert to_delete(backups, keep_last=2, keep_days=5, now=NOW) == ["b40", "b10"]
    assert to_delete(backups, keep_last=5, keep_days=1, now=NOW) == ["b40"]
    assert to_delete(backups, keep_last=0, keep_days=0, now=NOW) == []
    # the newest is never deleted, however old
    assert to_delete(days_ago(50, 60), keep_last=0, keep_days=7, now=NOW) == ["b60"]


PASSWORD = "hunter2-very-secret"


def test_pg_dump_gets_the_password_through_the_environment_only(tmp_path: Path) -> None:
    url = make_url(f"postgresql+asyncpg://ops:{PASSWORD}@db.internal:5433/gateway?ssl=require")
    env = libpq_environment(url, {"PATH": "/usr/bin", "PGPASSWORD": "stale", "PGSERVICE": "x"})
    assert env == {
        "PATH": "/usr/bin",
        "PGHOST": "db.internal",
        "PGPORT": "5433",
        "PGUSER": "ops",
        "PGPASSWORD": PASSWORD,
        "PGDATABASE": "gateway",
        "PGAPPNAME": "interlock-backup",
        "PGCONNECT_TIMEOUT": "10",
        "PGSSLMODE": "require",
    }
    argv = pg_dump_command(
        Path("/usr/bin/pg_dump"), "00000003-0000001B-1", "public", ["users"], tmp_path / "d"
    )
    assert argv == [
        "/usr/bin/pg_dump",
        "--format=custom",
        "--compress=0",
        "--no-owner",
        "--no-privileges",
        "--snapshot=00000003-0000001B-1",
        '--table="public"."users"',
        f"--file={tmp_path / 'd'}",
    ]
    restore_argv, psql_argv = restore_commands(
        Path("pg_restore"), Path("psql"), tmp_path / "d", tmp_path / "s", "public", {"users": 2}
    )
    for command in (argv, restore_argv, psql_argv):
        joined = " ".join(command)
        assert PASSWORD not in joined and "db.internal" not in joined and "ops" not in joined
    assert "--single-transaction" in psql_argv and "--set=ON_ERROR_STOP=1" in psql_argv


def test_names_that_could_inject_sql_are_refused(tmp_path: Path) -> None:
    from interlock.backup.errors import BackupError

    with pytest.raises(BackupError):
        pg_dump_command(Path("pg_dump"), "1-1", "public", ['users"; DROP'], tmp_path)
    with pytest.raises(BackupError):
        pg_dump_command(Path("pg_dump"), "1; x", "public", ["users"], tmp_path)


def test_the_progress_bar_names_each_stage() -> None:
    from rich.console import Console
    from rich.progress import Progress

    from interlock.cli.backup import BarProgress, PlainProgress

    output = io.StringIO()
    console = Console(file=output, force_terminal=True, width=100)
    with Progress(console=console) as bar:
        progress = BarProgress(bar)
        progress.stage("copying the sqlite database")
        progress.stage("compressing and encrypting", 2000)
        progress.advance(1000)
        progress.advance(1000)
        assert [task.completed for task in bar.tasks] == [1, 2000]
    assert "compressing and encrypting" in output.getvalue()
    PlainProgress().advance(5)  # lines only, no counting
