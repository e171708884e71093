"""Users' own budgets, replacing their tier's where set.

Revision ID: 0004_user_budgets
Revises: 0003_identity
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_user_budgets"
down_revision: str | None = "0003_identity"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable columns only: SQLite adds them in place, no table copy.
    op.add_column("users", sa.Column("daily_budget", sa.Numeric(20, 6), nullable=True))
    op.add_column("users", sa.Column("monthly_budget", sa.Numeric(20, 6), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("monthly_budget")
        batch.drop_column("daily_budget")
