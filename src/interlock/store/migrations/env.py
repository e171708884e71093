"""Alembic's entry point for Interlock's migrations.

Interlock runs migrations itself (``interlock.store.migrate``) and hands over its connection
in ``config.attributes["connection"]``, already inside the transaction the migration must use.
For developers running the ``alembic`` command (``alembic -c src/interlock/store/alembic.ini
-x url=sqlite+aiosqlite:///dev.db revision --autogenerate -m "…"``), the URL comes from
``-x url=…`` and an engine is made here.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from interlock.store.models import Base

config = context.config
target_metadata = Base.metadata


def run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite can alter little in place: autogenerate "batch" (copy-and-move) operations.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_with_own_engine(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(run_on)
    finally:
        await engine.dispose()


def command_line_url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise SystemExit("pass the database URL: alembic -x url=sqlite+aiosqlite:///dev.db …")
    return url


if context.is_offline_mode():
    context.configure(url=command_line_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif (shared := config.attributes.get("connection")) is not None:
    run_on(shared)
else:
    asyncio.run(run_with_own_engine(command_line_url()))
