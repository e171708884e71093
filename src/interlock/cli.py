"""The ``interlock`` command."""

from __future__ import annotations

import asyncio
import secrets
import sys
from pathlib import Path
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, NoReturn

import typer

from interlock.settings import ConfigError, Settings, load_settings

app = typer.Typer(
    name="interlock",
    help="Interlock: a self-hosted AI chat gateway.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Check the configuration.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema migrations.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="interlock.toml to use (default: $INTERLOCK_CONFIG or ./interlock.toml if present)",
    ),
]

EXIT_CONFIG = 2


def _fail(lines: list[str], status: int = EXIT_CONFIG) -> NoReturn:
    for line in lines:
        sys.stderr.write(f"error: {line}\n")
    raise typer.Exit(status)


def _settings(
    host: str | None = None, port: int | None = None, config_path: Path | None = None
) -> Settings:
    try:
        return load_settings(host=host, port=port, config_path=config_path)
    except ConfigError as exc:
        _fail(exc.problems)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on [127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on [8080]")] = None,
    config: ConfigOption = None,
) -> None:
    """Start the gateway."""
    import uvicorn

    from interlock.app import create_app
    from interlock.telemetry.logging import configure_logging

    settings = _settings(host=host, port=port, config_path=config)
    configure_logging(settings.log_level, settings.log_format)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            loop="uvloop",
            http="httptools",
            lifespan="on",
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=30,
        )
    )
    server.run()
    if not server.started:
        raise typer.Exit(1)


@config_app.command("check")
def config_check(config: ConfigOption = None) -> None:
    """Validate the environment and the config file without starting."""
    settings = _settings(config_path=config)
    source = settings.config_path or "built-in defaults (no interlock.toml)"
    models = ", ".join(settings.config.models) or "none"
    typer.echo(f"ok: configuration from {source}; models: {models}")


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Migrate the database schema to this version's head."""
    from interlock.store.database import Database
    from interlock.store.migrate import current_revision, prepare

    settings = _settings(config_path=config)

    async def run() -> str | None:
        database = Database(settings.database_url)
        try:
            await prepare(database)
            return await current_revision(database)
        finally:
            await database.aclose()

    typer.echo(f"database at revision {_run_db(run)}")


@db_app.command("current")
def db_current(config: ConfigOption = None) -> None:
    """Show the database's schema revision."""
    from interlock.store.database import Database
    from interlock.store.migrate import current_revision, head_revision

    settings = _settings(config_path=config)

    async def run() -> str | None:
        database = Database(settings.database_url)
        try:
            return await current_revision(database)
        finally:
            await database.aclose()

    revision = _run_db(run)
    head = head_revision()
    state = "up to date" if revision == head else f"head is {head}"
    typer.echo(f"database at revision {revision or 'none (empty)'} ({state})")


def _run_db(run: Callable[[], Coroutine[Any, Any, str | None]]) -> str | None:
    from interlock.app import startup_problem

    try:
        return asyncio.run(run())
    except Exception as exc:
        _fail([startup_problem(exc).removeprefix("Interlock could not start: ")], 1)


@app.command()
def secret() -> None:
    """Print a new random server secret for INTERLOCK_SECRET."""
    typer.echo(secrets.token_urlsafe(48))


def main() -> None:
    app()
