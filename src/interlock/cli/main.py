"""The ``interlock`` command."""

from __future__ import annotations

import secrets
from typing import Annotated

import typer

from interlock.cli import backup, jobs, keys, privacy, usage, users
from interlock.cli.runtime import ConfigOption, run_async, settings_or_exit

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
app.add_typer(users.app, name="users")
app.add_typer(keys.app, name="keys")
app.add_typer(jobs.app, name="jobs")
app.add_typer(backup.app, name="backup")
app.add_typer(privacy.app, name="export")
app.add_typer(privacy.audit_app, name="audit")
users.app.command("export")(privacy.export_user)
users.app.command("delete")(privacy.delete_user)
app.command("usage")(usage.usage)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on [127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on [8080]")] = None,
    config: ConfigOption = None,
) -> None:
    """Start the gateway."""
    import uvicorn

    from interlock.app import create_app
    from interlock.serving import server_config
    from interlock.telemetry.logging import configure_logging

    settings = settings_or_exit(host=host, port=port, config_path=config)
    configure_logging(settings.log_level, settings.log_format)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    server = uvicorn.Server(server_config(create_app(settings), settings.host, settings.port))
    server.run()
    if not server.started:
        raise typer.Exit(1)


@config_app.command("check")
def config_check(config: ConfigOption = None) -> None:
    """Validate the environment and the config file without starting."""
    settings = settings_or_exit(config_path=config)
    source = settings.config_path or "built-in defaults (no interlock.toml)"
    models = ", ".join(settings.config.models) or "none"
    typer.echo(f"ok: configuration from {source}; models: {models}")


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Migrate the database schema to this version's head."""
    from interlock.store.database import database_for
    from interlock.store.migrate import current_revision, prepare

    settings = settings_or_exit(config_path=config)

    async def run() -> str | None:
        database = database_for(settings)
        try:
            await prepare(database)
            return await current_revision(database)
        finally:
            await database.aclose()

    typer.echo(f"database at revision {run_async(run)}")


@db_app.command("current")
def db_current(config: ConfigOption = None) -> None:
    """Show the database's schema revision."""
    from interlock.store.database import database_for
    from interlock.store.migrate import current_revision, head_revision

    settings = settings_or_exit(config_path=config)

    async def run() -> str | None:
        database = database_for(settings)
        try:
            return await current_revision(database)
        finally:
            await database.aclose()

    revision = run_async(run)
    head = head_revision()
    state = "up to date" if revision == head else f"head is {head}"
    typer.echo(f"database at revision {revision or 'none (empty)'} ({state})")


@app.command()
def secret() -> None:
    """Print a new random server secret for INTERLOCK_SECRET."""
    typer.echo(secrets.token_urlsafe(48))


def main() -> None:
    app()
