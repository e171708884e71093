"""``interlock keys``: create, list, revoke and rotate API keys, straight in the database.

A new key's plaintext is printed once, on stdout, and never stored: only its keyed hash is.
A key's scope can only narrow its owner's tier, as at the admin API. A running gateway sees a
change within its key cache TTL (one second).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated

import typer

from interlock.cli.runtime import EXIT_CONFIG, ConfigOption, budget_option, fail
from interlock.cli.runtime import settings_or_exit as _settings
from interlock.cli.users import (
    FormatOption,
    OutputFormat,
    Stores,
    check_id,
    console_out,
    run_with_stores,
)

if TYPE_CHECKING:
    from interlock.auth.principal import Scope
    from interlock.store.keys import KeyRecord

app = typer.Typer(help="Manage API keys: create, list, revoke, rotate.", no_args_is_help=True)

MAX_EXPIRY_DAYS = 36_500


def _expiry(days: float | None, at: str | None) -> datetime | None:
    if days is not None and at is not None:
        fail(["--expires-in-days, --expires-at: give one or the other"], EXIT_CONFIG)
    if days is not None:
        return datetime.now(UTC) + timedelta(days=days)
    if at is None:
        return None
    try:
        when = datetime.fromisoformat(at)
    except ValueError:
        fail(["--expires-at: expected an ISO 8601 time, e.g. 2030-01-31T00:00:00Z"], EXIT_CONFIG)
    if when.tzinfo is None:
        fail(["--expires-at: give a time zone, e.g. 2030-01-31T00:00:00Z"], EXIT_CONFIG)
    if when <= datetime.now(UTC):
        fail(["--expires-at: must be in the future"], EXIT_CONFIG)
    return when


def print_keys(keys: list[KeyRecord], output: OutputFormat) -> None:
    if output is OutputFormat.json:
        from interlock.api.identity_wire import encode_json, key_json

        typer.echo(encode_json([key_json(key) for key in keys]).decode())
        return
    from rich.table import Table

    now = datetime.now(UTC)
    table = Table("id", "short id", "name", "user", "status", "models", "limits", "expires")
    for key in keys:
        limits = ", ".join(
            f"{label} {value}"
            for label, value in (
                ("rpm", key.rpm),
                ("tpm", key.tpm),
                ("concurrent", key.max_concurrent),
                ("daily", key.daily_budget),
                ("monthly", key.monthly_budget),
            )
            if value is not None
        )
        table.add_row(
            key.key_id,
            key.short_id,
            key.name,
            key.user_name,
            key.status(now),
            "tier's" if key.models is None else ", ".join(key.models),
            limits or "tier's",
            key.expires_at.strftime("%Y-%m-%d %H:%M") if key.expires_at else "",
        )
    console_out().print(table)


def _show_new_key(record: KeyRecord, plaintext: str) -> None:
    typer.echo(f"key {record.key_id} ({record.short_id}) for user {record.user_id}")
    typer.echo("The key is shown ONCE; store it now:\n")
    typer.echo(f"    {plaintext}\n")


@app.command("create")
def create(
    user_id: Annotated[str, typer.Argument(help="The owner's user id.")],
    name: Annotated[str, typer.Option(help="A name to recognise the key by.")] = "",
    model: Annotated[
        list[str] | None,
        typer.Option("--model", help="Allow only this model (repeat for more) [the tier's]."),
    ] = None,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute [the tier's].")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute [the tier's].")] = None,
    max_concurrent: Annotated[
        int | None, typer.Option(help="Concurrent requests [the tier's].")
    ] = None,
    daily_budget: Annotated[
        str | None, typer.Option(help="Spend per rolling 24 hours, in currency [the owner's].")
    ] = None,
    monthly_budget: Annotated[
        str | None, typer.Option(help="Spend per rolling 30 days, in currency [the owner's].")
    ] = None,
    expires_in_days: Annotated[
        float | None, typer.Option(min=0.001, max=MAX_EXPIRY_DAYS, help="Expire after N days.")
    ] = None,
    expires_at: Annotated[
        str | None, typer.Option(help="Expire at this time (ISO 8601 with a zone).")
    ] = None,
    test: Annotated[bool, typer.Option("--test", help="An il_test_ key.")] = False,
    config: ConfigOption = None,
) -> None:
    """Create a key for a user and print it, once."""
    from interlock.auth.fields import MAX_NAME, check_length
    from interlock.auth.principal import Scope
    from interlock.errors import InvalidRequest

    settings = _settings(config_path=config)
    check_id(user_id, "user")
    try:
        check_length(name, "name", 0, MAX_NAME)
    except InvalidRequest as error:
        fail([f"--name: {error.message}"], EXIT_CONFIG)
    scope = Scope(
        models=None if not model else frozenset(model),
        rpm=rpm,
        tpm=tpm,
        max_concurrent=max_concurrent,
        daily_budget=budget_option(daily_budget, "--daily-budget"),
        monthly_budget=budget_option(monthly_budget, "--monthly-budget"),
    )
    expiry = _expiry(expires_in_days, expires_at)

    async def work(stores: Stores) -> tuple[KeyRecord, str]:
        from interlock.errors import NotFound

        owner = await stores.users.get(user_id)
        if owner is None:
            raise NotFound("No user with this id.")
        checked: Scope = stores.tiers.check_key_scope(
            owner.tier,
            scope,
            daily_budget=owner.daily_budget,
            monthly_budget=owner.monthly_budget,
        )
        row, plaintext = await stores.keys.create_key(
            owner.id, name=name, expires_at=expiry, scope=checked, kind="test" if test else "live"
        )
        record = await stores.keys.get_key(row.id)
        assert record is not None
        return record, plaintext

    _show_new_key(*run_with_stores(settings, work))


@app.command("list")
def list_keys(
    user: Annotated[str | None, typer.Option(help="Only this user's keys.")] = None,
    output: FormatOption = OutputFormat.table,
    config: ConfigOption = None,
) -> None:
    """List keys (never their secret), oldest first."""
    settings = _settings(config_path=config)
    if user is not None:
        check_id(user, "user")

    async def work(stores: Stores) -> list[KeyRecord]:
        return await stores.keys.list_keys(user)

    print_keys(run_with_stores(settings, work), output)


@app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (not the key itself).")],
    config: ConfigOption = None,
) -> None:
    """Revoke a key: it stops working within a second."""
    settings = _settings(config_path=config)
    check_id(key_id, "key")

    async def work(stores: Stores) -> bool:
        from interlock.errors import NotFound

        if await stores.keys.get_key(key_id) is None:
            raise NotFound("No API key with this id.")
        return await stores.keys.revoke_key(key_id)

    revoked = run_with_stores(settings, work)
    typer.echo(f"revoked key {key_id}" if revoked else f"key {key_id} was already revoked")


@app.command("rotate")
def rotate(
    key_id: Annotated[str, typer.Argument(help="The key's id (not the key itself).")],
    config: ConfigOption = None,
) -> None:
    """Replace a key by a new one with the same scope, and revoke the old one."""
    settings = _settings(config_path=config)
    check_id(key_id, "key")

    async def work(stores: Stores) -> tuple[KeyRecord, str]:
        from interlock.errors import NotFound

        rotated = await stores.keys.rotate_key(key_id)
        if rotated is None:
            raise NotFound("No API key with this id.")
        return rotated

    record, plaintext = run_with_stores(settings, work)
    typer.echo(f"revoked key {key_id}")
    _show_new_key(record, plaintext)
