"""Identity: users' session subjects, and each API key's own scope.

Revision ID: 0003_identity
Revises: 0002_usage
Create Date: 2025-01-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_identity"
down_revision: str | None = "0002_usage"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Written by hand to match interlock.store.models; a test checks that they agree.
    # Only nullable columns and indexes are added: SQLite does that in place, no table copy.
    op.add_column("users", sa.Column("external_id", sa.String(255), nullable=True))
    op.create_index(op.f("ix_users_external_id"), "users", ["external_id"], unique=True)
    op.add_column("api_keys", sa.Column("models", sa.JSON(), nullable=True))
    op.add_column("api_keys", sa.Column("rpm", sa.Integer(), nullable=True))
    op.add_column("api_keys", sa.Column("tpm", sa.BigInteger(), nullable=True))
    op.add_column("api_keys", sa.Column("max_concurrent", sa.Integer(), nullable=True))
    op.add_column("api_keys", sa.Column("daily_budget", sa.Numeric(20, 6), nullable=True))
    op.add_column("api_keys", sa.Column("monthly_budget", sa.Numeric(20, 6), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        for column in ("monthly_budget", "daily_budget", "max_concurrent", "tpm", "rpm", "models"):
            batch.drop_column(column)
    op.drop_index(op.f("ix_users_external_id"), table_name="users")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("external_id")
