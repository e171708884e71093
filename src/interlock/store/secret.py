"""The server secret that API keys are hashed under.

With ``INTERLOCK_SECRET`` set, that is the secret (every instance must share it). Without it,
the embedded setup generates one on first start and keeps it in ``<data dir>/secret``, readable
by its owner only, and uses the same one on every later start: losing or changing it makes
every stored API key unusable. To move to an external setup, set ``INTERLOCK_SECRET`` to the
file's content; keys keep working, since both are used the same way (``resolve_secret``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from interlock.settings import ConfigError

FILE_NAME = "secret"
MIN_SECRET_LENGTH = 32


def resolve_secret(explicit: str | None, data_dir: Path) -> bytes:
    """The secret as bytes: ``explicit`` (``INTERLOCK_SECRET``) if set, else the data dir's."""
    if explicit is not None:
        return explicit.encode("utf-8")
    return load_or_create_secret(data_dir)


def load_or_create_secret(data_dir: Path) -> bytes:
    """The secret kept in ``data_dir/secret``, generated (mode 0600) if there is none yet.

    Raises ``ConfigError`` if the file is readable by group or others, is not a regular
    file, or does not hold a secret.
    """
    path = data_dir / FILE_NAME
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.exists() and not path.is_symlink():
            _create(path)
        return _read(path)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read or create the secret ({exc.strerror})"]) from None


def _create(path: Path) -> None:
    """Write a new secret without ever exposing a partial or world-readable file.

    The secret goes to a private temporary file first, then is linked into place: the link
    fails if the file exists, so of two processes starting at once exactly one secret wins and
    both use it.
    """
    value = (secrets.token_hex(32) + "\n").encode("ascii")  # as text, so it can be copied
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    try:
        _write_new(temporary, value)
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass  # another process was first: use its secret
        except OSError:
            # A file system without hard links: create the file itself, exclusively.
            with contextlib.suppress(FileExistsError):
                _write_new(path, value)
    finally:
        temporary.unlink(missing_ok=True)


def _write_new(path: Path, value: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(value)
        file.flush()
        os.fsync(file.fileno())


def _read(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError([f"{path}: not a regular file"])
        if info.st_mode & 0o077:
            raise ConfigError(
                [
                    f"{path}: readable by other users (mode {stat.S_IMODE(info.st_mode):04o}); "
                    f"it holds the server secret: run `chmod 600 {path}`"
                ]
            )
        value = file.read(4096).strip()
    if len(value) < MIN_SECRET_LENGTH or not value.isascii() or any(c <= 32 for c in value):
        raise ConfigError(
            [f"{path}: does not hold a secret (expected at least {MIN_SECRET_LENGTH} characters)"]
        )
    return value
