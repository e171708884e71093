"""How a command runs: loading settings, reporting problems in one line each, async work."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from interlock.settings import ConfigError, Settings, load_settings

T = TypeVar("T")

EXIT_CONFIG = 2
EXIT_FAILED = 1

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="interlock.toml to use (default: $INTERLOCK_CONFIG or ./interlock.toml if present)",
    ),
]


def fail(lines: list[str], status: int = EXIT_CONFIG) -> NoReturn:
    """Print each problem on its own line and exit with ``status``."""
    for line in lines:
        sys.stderr.write(f"error: {line}\n")
    raise typer.Exit(status)


def settings_or_exit(
    host: str | None = None, port: int | None = None, config_path: Path | None = None
) -> Settings:
    try:
        return load_settings(host=host, port=port, config_path=config_path)
    except ConfigError as exc:
        fail(exc.problems)


def run_async(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``work`` to completion; a failure becomes one line on stderr and exit status 1."""
    from interlock.app import startup_problem

    try:
        return asyncio.run(work())
    except typer.Exit:
        raise
    except Exception as exc:
        fail([startup_problem(exc).removeprefix("Interlock could not start: ")], EXIT_FAILED)


def budget_option(value: str | None, option: str) -> Decimal | None:
    """The amount given to ``option`` (None if not given), checked like the admin API does."""
    from interlock.auth.tiers import check_budget
    from interlock.errors import InvalidRequest

    if value is None:
        return None
    try:
        return check_budget(Decimal(value), option)
    except InvalidOperation:
        fail([f"{option}: not an amount"], EXIT_CONFIG)
    except InvalidRequest as error:
        fail([f"{option}: {error.message}"], EXIT_CONFIG)
