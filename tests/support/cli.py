"""Running ``interlock`` commands in tests: an environment over SQLite or the PostgreSQL
fixture, and the command's output, checked for its exit status and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from interlock.cli import app
from tests.support.gateway import SECRET


def command_env(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    config: str = "",
    *,
    database: str | None = None,
    **extra: str,
) -> dict[str, str]:
    """The environment of a command on ``database`` (default: ``request.param``), "sqlite"
    or "postgresql" (from the postgres fixtures), with ``config`` as its interlock.toml."""
    (tmp_path / "interlock.toml").write_text(config)
    values = {
        "INTERLOCK_DATA_DIR": str(tmp_path / "data"),
        "INTERLOCK_SECRET": SECRET,
        "INTERLOCK_CONFIG": str(tmp_path / "interlock.toml"),
        "DATABASE_URL": "",
        "INTERLOCK_BACKUP_KEY": "",
        "INTERLOCK_BACKUP_OLD_KEYS": "",
        "REDIS_URL": "",
        **extra,
    }
    if (database or request.param) == "postgresql":
        values["DATABASE_URL"] = request.getfixturevalue("postgres_url")
    return values


def cli(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env=env)


def ok(env: dict[str, str], *args: str) -> str:
    """The command's stdout; it must exit with status 0."""
    result = cli(env, *args)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result.stdout


def failed(env: dict[str, str], status: int, *args: str) -> str:
    """The command's one error line; it must exit with ``status``, without a traceback, and
    write nothing else on stderr but log lines (JSON)."""
    result = cli(env, *args)
    assert result.exit_code == status, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert all(line in errors or line.startswith("{") for line in lines), result.stderr
    return errors[0]
