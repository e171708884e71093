"""Where archives are kept: a local directory (the default) or an S3-compatible bucket.

One small interface, ``Destination``: put a finished file, fetch one into a local path,
read and write small objects (the listings), list and delete. An archive is first written to
a private staging file, then published under its final name in one step (a rename in a
directory, a completed upload in a bucket), so a half-written archive is never listed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from interlock.backup.errors import BackupError, BackupNotFound
from interlock.backup.manifest import SUFFIX
from interlock.settings import S3Config, Settings

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


@dataclass(frozen=True, slots=True)
class StoredObject:
    name: str
    size: int
    modified: datetime


class Destination(Protocol):
    """A place that keeps backup archives and their listings, by name."""

    description: str

    def staging_dir(self) -> Path | None:
        """A private directory for files about to be published (None: the system's)."""
        ...

    async def publish(self, name: str, path: Path) -> None:
        """Make the file at ``path`` available as ``name`` (``path`` may be moved)."""
        ...

    def fetch(self, name: str) -> contextlib.AbstractAsyncContextManager[Path]:
        """A local path holding the object ``name`` while the block runs."""
        ...

    async def read_small(self, name: str) -> bytes | None:
        """A small object's content, or None when there is none of that name."""
        ...

    async def write_small(self, name: str, data: bytes) -> None: ...

    async def list_objects(self) -> list[StoredObject]: ...

    async def delete(self, name: str) -> None: ...


def private_file(path: Path) -> Any:
    """Open a new file for writing, readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_FILE)
    return os.fdopen(fd, "wb")


class LocalDirectory:
    """Archives in a directory (mode 0700), each file 0600. Names starting with ``.`` are
    staging files and never listed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"directory {path}"

    def _ensure(self) -> Path:
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
        except OSError as exc:
            raise BackupError(f"cannot create {self.path}: {exc.strerror}") from None
        return self.path

    def staging_dir(self) -> Path:
        return self._ensure()

    def _path(self, name: str) -> Path:
        if "/" in name or name.startswith(".") or not name:
            raise BackupNotFound(f"no backup named {name.removesuffix(SUFFIX)!r}")
        return self.path / name

    async def publish(self, name: str, path: Path) -> None:
        target = self._path(name)
        self._ensure()
        try:
            with path.open("rb") as file:
                os.fsync(file.fileno())
            os.chmod(path, PRIVATE_FILE)
            os.replace(path, target)
        except OSError as exc:
            raise BackupError(f"cannot write {target}: {exc.strerror}") from None

    @contextlib.asynccontextmanager
    async def fetch(self, name: str) -> AsyncIterator[Path]:
        path = self._path(name)
        if not path.is_file():
            raise BackupNotFound(f"no backup named {name.removesuffix(SUFFIX)!r} in {self.path}")
        yield path

    async def read_small(self, name: str) -> bytes | None:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BackupError(f"cannot read {self.path / name}: {exc.strerror}") from None

    async def write_small(self, name: str, data: bytes) -> None:
        staging = self._ensure() / f".{name}.{os.getpid()}.partial"
        staging.unlink(missing_ok=True)
        try:
            with private_file(staging) as file:
                file.write(data)
        except OSError as exc:
            raise BackupError(f"cannot write {staging}: {exc.strerror}") from None
        await self.publish(name, staging)

    async def list_objects(self) -> list[StoredObject]:
        if not self.path.is_dir():
            return []
        found = []
        for entry in os.scandir(self.path):
            if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                continue
            info = entry.stat(follow_symlinks=False)
            found.append(
                StoredObject(entry.name, info.st_size, datetime.fromtimestamp(info.st_mtime, UTC))
            )
        return found

    async def delete(self, name: str) -> None:
        try:
            self._path(name).unlink(missing_ok=True)
        except OSError as exc:
            raise BackupError(f"cannot delete {self.path / name}: {exc.strerror}") from None


class S3Bucket:
    """Archives as objects in an S3-compatible bucket, under a prefix. boto3 is synchronous:
    every call runs in a worker thread; uploads and downloads stream from and to files in
    parts (multipart above 8 MB), never through memory whole."""

    def __init__(self, config: S3Config, settings: Settings) -> None:
        import boto3
        from botocore.config import Config

        self.config = config
        where = config.endpoint_url or "AWS S3"
        self.description = f"s3://{config.bucket}/{config.prefix} at {where}"
        secrets = settings.backup
        self._client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=config.endpoint_url or None,
            region_name=config.region or None,
            aws_access_key_id=secrets.s3_access_key_id,
            aws_secret_access_key=secrets.s3_secret_access_key,
            aws_session_token=secrets.s3_session_token,
            config=Config(
                s3={"addressing_style": "path" if config.path_style else "auto"},
                retries={"max_attempts": 5, "mode": "standard"},
                connect_timeout=10,
                read_timeout=60,
            ),
        )

    def staging_dir(self) -> None:
        return None

    def _key(self, name: str) -> str:
        return self.config.prefix + name

    async def _call(self, what: str, name: str, function: Any, *args: Any, **kwargs: Any) -> Any:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return await asyncio.to_thread(function, *args, **kwargs)
        except (ClientError, Boto3Error) as exc:
            # boto3's transfers wrap the service's error: report the service's own.
            cause = exc if isinstance(exc, ClientError) else exc.__cause__ or exc.__context__
            if not isinstance(cause, ClientError):
                raise BackupError(f"cannot {what} {self.description}: {exc}") from None
            error = cause.response.get("Error", {})
            code = str(error.get("Code", "error"))
            if code in ("NoSuchKey", "404", "NotFound"):
                shown = name.removesuffix(SUFFIX)
                raise BackupNotFound(f"no backup named {shown!r} in {self.description}") from None
            message = error.get("Message") or code
            raise BackupError(f"cannot {what} {self.description}: {code}: {message}") from None
        except BotoCoreError as exc:
            raise BackupError(f"cannot {what} {self.description}: {exc}") from None

    async def publish(self, name: str, path: Path) -> None:
        await self._call(
            "upload to",
            name,
            self._client.upload_file,
            str(path),
            self.config.bucket,
            self._key(name),
        )

    @contextlib.asynccontextmanager
    async def fetch(self, name: str) -> AsyncIterator[Path]:
        directory = Path(tempfile.mkdtemp(prefix="interlock-fetch-"))
        target = directory / "archive"
        try:
            await self._call(
                "download from",
                name,
                self._client.download_file,
                self.config.bucket,
                self._key(name),
                str(target),
            )
            yield target
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    async def read_small(self, name: str) -> bytes | None:
        try:
            reply = await self._call(
                "read from",
                name,
                self._client.get_object,
                Bucket=self.config.bucket,
                Key=self._key(name),
            )
        except BackupNotFound:
            return None
        body: bytes = await asyncio.to_thread(reply["Body"].read)
        return body

    async def write_small(self, name: str, data: bytes) -> None:
        await self._call(
            "write to",
            name,
            self._client.put_object,
            Bucket=self.config.bucket,
            Key=self._key(name),
            Body=data,
        )

    async def list_objects(self) -> list[StoredObject]:
        def collect() -> list[StoredObject]:
            found = []
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.config.bucket, Prefix=self.config.prefix
            )
            for page in pages:
                for item in page.get("Contents", []):
                    name = item["Key"][len(self.config.prefix) :]
                    if name and "/" not in name:
                        found.append(StoredObject(name, item["Size"], item["LastModified"]))
            return found

        result: list[StoredObject] = await self._call("list", "", collect)
        return result

    async def delete(self, name: str) -> None:
        await self._call(
            "delete from",
            name,
            self._client.delete_object,
            Bucket=self.config.bucket,
            Key=self._key(name),
        )


def destination_for(settings: Settings) -> Destination:
    """The destination ``[backup]`` names."""
    config = settings.config.backup
    if config.destination == "s3":
        return S3Bucket(config.s3, settings)
    directory = Path(config.directory) if config.directory else settings.data_dir / "backups"
    return LocalDirectory(directory)
