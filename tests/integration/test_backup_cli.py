"""``interlock backup`` as an operator uses it: exit codes and one-line messages, damaged
and wrongly-keyed archives refused with nothing changed, key rotation, retention, an
S3-compatible destination (a real S3 HTTP server on loopback), and a PostgreSQL restore that
fails half-way rolled back."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer
from sqlalchemy.engine import make_url

from interlock.backup import postgres_dump
from interlock.backup.archive import open_archive, seal
from interlock.backup.errors import BackupError
from interlock.backup.keys import key_ring
from interlock.backup.manifest import Manifest
from interlock.backup.service import create_backup, restore_backup
from interlock.settings import load_settings
from tests.fixtures.postgres import postgres_server, postgres_url  # noqa: F401
from tests.support.cli import failed, ok
from tests.support.gateway import SECRET

KEY_A = base64.b64encode(b"A" * 32).decode()
KEY_B = base64.b64encode(b"B" * 32).decode()


def make_env(tmp_path: Path, config: str = "", **extra: str) -> dict[str, str]:
    (tmp_path / "interlock.toml").write_text(config)
    return {
        "INTERLOCK_DATA_DIR": str(tmp_path / "data"),
        "INTERLOCK_SECRET": SECRET,
        "INTERLOCK_CONFIG": str(tmp_path / "interlock.toml"),
        "DATABASE_URL": "",
        "INTERLOCK_BACKUP_KEY": "",
        "INTERLOCK_BACKUP_OLD_KEYS": "",
        **extra,
    }


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return make_env(tmp_path)


def user_names(env: dict[str, str]) -> list[str]:
    return [user["name"] for user in json.loads(ok(env, "users", "list", "--format", "json"))]


def backup(env: dict[str, str]) -> str:
    out = ok(env, "backup", "create")
    assert "copying the sqlite database..." in out  # plain progress lines outside a terminal
    assert "compressing and encrypting" in out
    name: str = out.strip().splitlines()[-1].split()[1].rstrip(":")
    return name


def archive_path(env: dict[str, str], name: str) -> Path:
    return Path(env["INTERLOCK_DATA_DIR"]) / "backups" / f"{name}.ilbk"


def test_create_list_verify_and_restore(env: dict[str, str]) -> None:
    ok(env, "users", "create", "Ada")
    ok(env, "users", "create", "Grace")
    name = backup(env)
    [listed] = json.loads(ok(env, "backup", "list", "--format", "json"))
    assert listed["name"] == name
    assert listed["listing"]["manifest"]["row_counts"]["users"] == 2
    assert name in ok(env, "backup", "list")
    path = archive_path(env, name)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert ok(env, "backup", "verify", "latest").startswith(f"verifying {name}")
    assert "is intact: sqlite, 3 rows" in ok(env, "backup", "verify", str(path))

    ok(env, "users", "create", "Linus")
    refused = failed(env, 2, "backup", "restore", name)
    assert "stop the gateway, then run again with --yes" in refused
    assert user_names(env) == ["Ada", "Grace", "Linus"]
    out = ok(env, "backup", "restore", name, "--yes")
    assert f"restored {name}: 3 rows" in out
    assert user_names(env) == ["Ada", "Grace"]
    # A file path works too: restoring from a copy kept elsewhere.
    ok(env, "users", "create", "Linus")
    ok(env, "backup", "restore", str(path), "--yes")
    assert user_names(env) == ["Ada", "Grace"]


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 30])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (flip_a_byte, "the archive is corrupt: frame 0 fails authentication"),
        (truncate, "the archive is truncated"),
    ],
)
def test_a_damaged_archive_is_refused_and_nothing_changes(
    env: dict[str, str], damage: Any, message: str
) -> None:
    ok(env, "users", "create", "Ada")
    name = backup(env)
    ok(env, "users", "create", "Grace")
    damage(archive_path(env, name))
    for command in (["verify", name], ["restore", name, "--yes"]):
        line = failed(env, 3, "backup", *command)
        assert line.startswith(f"error: {message}") and line.endswith("nothing was changed")
    assert user_names(env) == ["Ada", "Grace"]


def test_a_wrong_key_is_refused_and_a_rotated_key_still_restores(tmp_path: Path) -> None:
    with_a = make_env(tmp_path, INTERLOCK_BACKUP_KEY=KEY_A)
    ok(with_a, "users", "create", "Ada")
    old = backup(with_a)
    ok(with_a, "users", "create", "Grace")

    only_b = {**with_a, "INTERLOCK_BACKUP_KEY": KEY_B}
    line = failed(only_b, 3, "backup", "restore", old, "--yes")
    key_a = key_ring(load_settings(with_a)).current.id
    assert f"encrypted with backup key {key_a}, which is not configured" in line
    assert user_names(only_b) == ["Ada", "Grace"]

    rotated = {**only_b, "INTERLOCK_BACKUP_OLD_KEYS": KEY_A}
    new = backup(rotated)
    assert key_ring(load_settings(rotated)).current.id in ok(rotated, "backup", "verify", new)
    ok(rotated, "backup", "restore", old, "--yes")
    assert user_names(rotated) == ["Ada"]
    ok(rotated, "backup", "restore", new, "--yes")
    assert user_names(rotated) == ["Ada", "Grace"]


def test_unknown_backups_and_bad_configuration(env: dict[str, str], tmp_path: Path) -> None:
    assert failed(env, 1, "backup", "verify", "nope").startswith("error: no backup named 'nope'")
    assert failed(env, 1, "backup", "restore", "latest", "--yes").startswith("error: no backups")
    bad = {**env, "INTERLOCK_BACKUP_KEY": "too-short"}
    assert "INTERLOCK_BACKUP_KEY" in failed(bad, 2, "backup", "create")
    (tmp_path / "interlock.toml").write_text('[backup]\ndestination = "s3"\n')
    assert "needs [backup.s3] bucket" in failed(env, 2, "backup", "list")
    key = base64.b64decode(ok(env, "backup", "keygen").strip())
    assert len(key) == 32


def test_prune_keeps_the_last_n(tmp_path: Path) -> None:
    env = make_env(tmp_path, "[backup]\nkeep_last = 2\n")
    ok(env, "users", "create", "Ada")
    settings = load_settings(env)
    now = datetime.now(UTC)
    names = [
        asyncio.run(create_backup(settings, now=now - timedelta(days=age))).manifest.name
        for age in (30, 20, 10, 0)
    ]
    dry = ok(env, "backup", "prune", "--dry-run")
    assert dry.splitlines() == [
        f"would delete {names[0]}",
        f"would delete {names[1]}",
        "would delete 2, kept 2",
    ]
    assert len(json.loads(ok(env, "backup", "list", "--format", "json"))) == 4
    assert ok(env, "backup", "prune").endswith("deleted 2, kept 2\n")
    listed = json.loads(ok(env, "backup", "list", "--format", "json"))
    assert [entry["name"] for entry in listed] == [names[3], names[2]]
    left = sorted(p.name for p in (tmp_path / "data" / "backups").iterdir())
    assert left == sorted(f"{n}.ilbk{s}" for n in names[2:] for s in ("", ".json"))
    assert ok(env, "backup", "prune") == "deleted 0, kept 2\n"


# --- an S3-compatible destination -------------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def s3_client(endpoint: str) -> Any:
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test-access",
        aws_secret_access_key="test-secret",
    )


def s3_env(tmp_path: Path, endpoint: str, bucket: str) -> dict[str, str]:
    config = (
        '[backup]\ndestination = "s3"\nkeep_last = 1\n'
        f'[backup.s3]\nbucket = "{bucket}"\nprefix = "gw/prod"\nendpoint_url = "{endpoint}"\n'
        'region = "us-east-1"\npath_style = true\n'
    )
    return make_env(
        tmp_path,
        config,
        INTERLOCK_BACKUP_S3_ACCESS_KEY_ID="test-access",
        INTERLOCK_BACKUP_S3_SECRET_ACCESS_KEY="test-secret",
        INTERLOCK_BACKUP_KEY=KEY_A,
    )


def test_backups_round_trip_through_an_s3_bucket(tmp_path: Path, s3_endpoint: str) -> None:
    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket="interlock-backups")
    env = s3_env(tmp_path, s3_endpoint, "interlock-backups")
    ok(env, "users", "create", "Ada")
    first = backup(env)
    ok(env, "users", "create", "Grace")
    second = backup(env)
    objects = client.list_objects_v2(Bucket="interlock-backups")["Contents"]
    assert sorted(o["Key"] for o in objects) == sorted(
        f"gw/prod/{n}.ilbk{s}" for n in (first, second) for s in ("", ".json")
    )
    body = client.get_object(Bucket="interlock-backups", Key=f"gw/prod/{first}.ilbk")["Body"]
    assert body.read().startswith(b"ILBACKUP")
    assert not (tmp_path / "data" / "backups").exists()  # nothing kept locally

    assert [e["name"] for e in json.loads(ok(env, "backup", "list", "--format", "json"))] == [
        second,
        first,
    ]
    assert "is intact" in ok(env, "backup", "verify", first)
    ok(env, "backup", "restore", first, "--yes")
    assert user_names(env) == ["Ada"]
    assert ok(env, "backup", "prune").endswith("deleted 1, kept 1\n")
    left = client.list_objects_v2(Bucket="interlock-backups")["Contents"]
    assert sorted(o["Key"] for o in left) == [
        f"gw/prod/{second}.ilbk",
        f"gw/prod/{second}.ilbk.json",
    ]
    ok(env, "backup", "restore", "latest", "--yes")
    assert user_names(env) == ["Ada", "Grace"]


def test_an_unreachable_bucket_is_one_line(tmp_path: Path, s3_endpoint: str) -> None:
    env = s3_env(tmp_path, s3_endpoint, "no-such-bucket")
    ok(env, "users", "create", "Ada")
    line = failed(env, 1, "backup", "create")
    assert line.startswith("error: cannot upload to s3://no-such-bucket/gw/prod/")
    assert "NoSuchBucket" in line
    assert "test-secret" not in line


# --- PostgreSQL: a restore that fails half-way is rolled back -----------------------------


def test_a_postgres_restore_that_fails_changes_nothing(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    url: str = request.getfixturevalue("postgres_url")
    env = make_env(tmp_path, DATABASE_URL=url)
    ok(env, "users", "create", "Ada")
    settings = load_settings(env)
    password = make_url(url).password
    assert password

    started: list[tuple[tuple[str, ...], dict[str, str]]] = []
    spawn = postgres_dump.asyncio.create_subprocess_exec

    async def recorded(*argv: str, **options: Any) -> Any:
        started.append((argv, options["env"]))
        return await spawn(*argv, **options)

    monkeypatch.setattr(postgres_dump.asyncio, "create_subprocess_exec", recorded)
    good = asyncio.run(create_backup(settings))
    [(argv, child_env)] = started
    assert Path(argv[0]).name == "pg_dump"
    assert not any(password in arg or "postgresql://" in arg for arg in argv)
    assert child_env["PGPASSWORD"] == password
    ok(env, "users", "create", "Grace")
    ok(env, "users", "create", "Linus")

    # A sound archive whose manifest counts one user more than its dump holds: psql runs the
    # drop and the whole dump, then the count check fails — and all of it is rolled back.
    work = tmp_path / "work"
    work.mkdir()
    source = Path(env["INTERLOCK_DATA_DIR"]) / "backups" / f"{good.manifest.name}.ilbk"
    dump = work / "dump"
    keys = key_ring(settings)
    with source.open("rb") as archive, dump.open("wb") as out:
        manifest = open_archive(archive, keys, out)
    counts = {**manifest.row_counts, "users": manifest.row_counts["users"] + 1}

    def lying(size: int, sha256: str) -> Manifest:
        return Manifest(**{**_fields(manifest), "row_counts": counts})

    lie = work / "lie.ilbk"
    with lie.open("wb") as out:
        seal(dump, out, keys.current, lying)
    with pytest.raises(BackupError, match="rolled back, the database is unchanged") as caught:
        asyncio.run(restore_backup(settings, str(lie)))
    assert "restored rows of users differ from the manifest" in str(caught.value)
    assert password not in str(caught.value)
    assert [Path(argv[0]).name for argv, _ in started[1:]] == ["pg_restore", "psql"]
    assert not any(password in arg for argv, _ in started for arg in argv)
    assert user_names(env) == ["Ada", "Grace", "Linus"]
    ok(env, "backup", "restore", good.manifest.name, "--yes")
    assert user_names(env) == ["Ada"]


def _fields(manifest: Manifest) -> dict[str, Any]:
    return {name: getattr(manifest, name) for name in manifest.__struct_fields__}
