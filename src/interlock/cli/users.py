"""``interlock users``: create, list, update and disable users, straight in the database.

The same rules as the admin API: the tier must be configured, text printable, the email
unique, and the last active admin can be neither demoted nor disabled. A running gateway sees
a change within its key cache TTL (one second).
"""

from __future__ import annotations

import enum
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from interlock.auth.fields import (
    MAX_EXTERNAL_ID,
    MAX_NAME,
    check_email,
    check_length,
    looks_like_id,
)
from interlock.cli.runtime import (
    EXIT_CONFIG,
    EXIT_FAILED,
    ConfigOption,
    budget_option,
    fail,
    run_async,
)
from interlock.cli.runtime import settings_or_exit as _settings
from interlock.errors import InvalidRequest

if TYPE_CHECKING:
    from rich.table import Table

    from interlock.auth.tiers import Tiers
    from interlock.settings import Settings
    from interlock.store.keys import KeyStore
    from interlock.store.users import UserRecord, UserStore

app = typer.Typer(help="Manage users: create, list, update, disable.", no_args_is_help=True)

T = TypeVar("T")


class RoleChoice(enum.StrEnum):
    member = "member"
    admin = "admin"


class StatusChoice(enum.StrEnum):
    active = "active"
    disabled = "disabled"


class OutputFormat(enum.StrEnum):
    table = "table"
    json = "json"


FormatOption = Annotated[OutputFormat, typer.Option("--format", help="Output format.")]


@dataclass(frozen=True, slots=True)
class Stores:
    users: UserStore
    keys: KeyStore
    tiers: Tiers


@asynccontextmanager
async def open_stores(settings: Settings) -> AsyncIterator[Stores]:
    """The user and key stores over the configured database, migrated to head."""
    from interlock.auth.identity import build_tiers
    from interlock.store.database import database_for
    from interlock.store.keys import KeyStore
    from interlock.store.migrate import prepare
    from interlock.store.secret import resolve_secret
    from interlock.store.users import UserStore

    database = database_for(settings)
    try:
        await prepare(database)
        secret = resolve_secret(settings.secret, settings.data_dir)
        yield Stores(UserStore(database), KeyStore(database, secret), build_tiers(settings))
    finally:
        await database.aclose()


def run_with_stores(settings: Settings, work: Callable[[Stores], Awaitable[T]]) -> T:
    """Run ``work`` against the stores; a refused request is one line on stderr, status 2
    (1 for something not found)."""
    from interlock.errors import InterlockError, NotFound

    async def run() -> T:
        async with open_stores(settings) as stores:
            try:
                return await work(stores)
            except InterlockError as error:
                where = f"{error.param}: " if error.param else ""
                status = EXIT_FAILED if isinstance(error, NotFound) else EXIT_CONFIG
                fail([where + error.message], status)

    return run_async(run)


def console_out() -> Any:
    """A console on stdout, wide enough that ids are never folded when piped."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 240, highlight=False)


DAILY_BUDGET_HELP = "The user's spend per rolling 24 hours, in currency, replacing the tier's."
MONTHLY_BUDGET_HELP = "The user's spend per rolling 30 days, in currency, replacing the tier's."


def user_table(users: list[UserRecord]) -> Table:
    from rich.table import Table

    table = Table(
        "id", "name", "email", "role", "tier", "budgets", "status", "external id", "created"
    )
    for user in users:
        budgets = ", ".join(
            f"{label} {amount}"
            for label, amount in (("daily", user.daily_budget), ("monthly", user.monthly_budget))
            if amount is not None
        )
        table.add_row(
            user.id,
            user.name,
            user.email or "",
            user.role,
            user.tier,
            budgets or "the tier's",
            user.status,
            user.external_id or "",
            user.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    return table


def print_users(users: list[UserRecord], output: OutputFormat) -> None:
    if output is OutputFormat.json:
        from interlock.api.identity_wire import encode_json, user_json

        typer.echo(encode_json([user_json(user) for user in users]).decode())
    else:
        console_out().print(user_table(users))


def _checked(name: str | None, email: str | None, external_id: str | None) -> None:
    try:
        if name is not None:
            check_length(name, "name", 1, MAX_NAME)
        if email:
            check_email(email)
        if external_id:
            check_length(external_id, "external_id", 1, MAX_EXTERNAL_ID)
    except InvalidRequest as error:
        fail([f"--{(error.param or '').replace('_', '-')}: {error.message}"], EXIT_CONFIG)


def check_id(value: str, what: str) -> str:
    """``value`` if it can be one of our ids; else "not found" (status 1), without a query."""
    if not looks_like_id(value):
        fail([f"no {what} with this id"], EXIT_FAILED)
    return value


@app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="Display name.")],
    email: Annotated[str | None, typer.Option(help="Email address (unique).")] = None,
    role: Annotated[RoleChoice, typer.Option(help="Role.")] = RoleChoice.member,
    tier: Annotated[str | None, typer.Option(help="Tier [auth.default_tier].")] = None,
    external_id: Annotated[
        str | None, typer.Option(help="Subject (`sub`) of this user's session tokens.")
    ] = None,
    daily_budget: Annotated[str | None, typer.Option(help=DAILY_BUDGET_HELP)] = None,
    monthly_budget: Annotated[str | None, typer.Option(help=MONTHLY_BUDGET_HELP)] = None,
    output: FormatOption = OutputFormat.table,
    config: ConfigOption = None,
) -> None:
    """Create a user."""
    settings = _settings(config_path=config)
    _checked(name, email, external_id)
    daily = budget_option(daily_budget, "--daily-budget")
    monthly = budget_option(monthly_budget, "--monthly-budget")

    async def work(stores: Stores) -> UserRecord:
        chosen = stores.tiers.check_tier(tier or stores.tiers.default)
        return await stores.users.create(
            name,
            role=role.value,
            tier=chosen,
            email=email or None,
            external_id=external_id or None,
            daily_budget=daily,
            monthly_budget=monthly,
        )

    print_users([run_with_stores(settings, work)], output)


@app.command("list")
def list_users(
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many.")] = 100,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many (oldest first).")] = 0,
    output: FormatOption = OutputFormat.table,
    config: ConfigOption = None,
) -> None:
    """List users, oldest first."""
    settings = _settings(config_path=config)

    async def work(stores: Stores) -> list[UserRecord]:
        return await stores.users.list_users(limit=limit, offset=offset)

    print_users(run_with_stores(settings, work), output)


@app.command("update")
def update(
    user_id: Annotated[str, typer.Argument(help="The user's id.")],
    name: Annotated[str | None, typer.Option(help="New display name.")] = None,
    email: Annotated[str | None, typer.Option(help='New email ("" to clear).')] = None,
    role: Annotated[RoleChoice | None, typer.Option(help="New role.")] = None,
    tier: Annotated[str | None, typer.Option(help="New tier.")] = None,
    status: Annotated[StatusChoice | None, typer.Option(help="New status.")] = None,
    external_id: Annotated[
        str | None, typer.Option(help='New session subject ("" to clear).')
    ] = None,
    daily_budget: Annotated[
        str | None, typer.Option(help=DAILY_BUDGET_HELP + ' ("" for the tier\'s)')
    ] = None,
    monthly_budget: Annotated[
        str | None, typer.Option(help=MONTHLY_BUDGET_HELP + ' ("" for the tier\'s)')
    ] = None,
    output: FormatOption = OutputFormat.table,
    config: ConfigOption = None,
) -> None:
    """Change a user's name, email, role, tier, status, session subject or budgets."""
    from interlock.store.users import UNSET

    settings = _settings(config_path=config)
    check_id(user_id, "user")
    _checked(name, email, external_id)
    given = (name, email, role, tier, status, external_id, daily_budget, monthly_budget)
    if all(v is None for v in given):
        fail(["nothing to change: give at least one option (see --help)"])
    daily = budget_option(daily_budget or None, "--daily-budget")
    monthly = budget_option(monthly_budget or None, "--monthly-budget")

    async def work(stores: Stores) -> UserRecord:
        if tier is not None:
            stores.tiers.check_tier(tier)
        return await stores.users.update(
            user_id,
            name=UNSET if name is None else name,
            email=UNSET if email is None else (email or None),
            role=UNSET if role is None else role.value,
            tier=UNSET if tier is None else tier,
            status=UNSET if status is None else status.value,
            external_id=UNSET if external_id is None else (external_id or None),
            daily_budget=UNSET if daily_budget is None else daily,
            monthly_budget=UNSET if monthly_budget is None else monthly,
        )

    print_users([run_with_stores(settings, work)], output)


@app.command("disable")
def disable(
    user_id: Annotated[str, typer.Argument(help="The user's id.")],
    config: ConfigOption = None,
) -> None:
    """Disable a user: every key and session of theirs stops working."""
    settings = _settings(config_path=config)
    check_id(user_id, "user")

    async def work(stores: Stores) -> UserRecord:
        return await stores.users.update(user_id, status="disabled")

    user = run_with_stores(settings, work)
    typer.echo(f"disabled user {user.id} ({user.name})")
