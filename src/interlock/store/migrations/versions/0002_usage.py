"""The usage ledger: one row per chat request.

Revision ID: 0002_usage
Revises: 0001
Create Date: 2025-01-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_usage"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Written by hand to match interlock.store.models.UsageRow; a test checks that they agree.
    # No foreign keys: a usage row is a bill, and it outlives the user or key it names.
    op.create_table(
        "usage_records",
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=True),
        sa.Column("key_id", sa.String(64), nullable=True),
        sa.Column("tier", sa.String(64), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("deployment", sa.String(200), nullable=False),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("cached_tokens", sa.Integer(), nullable=False),
        sa.Column("cost", sa.Numeric(20, 10), nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("ttft_ms", sa.Integer(), nullable=True),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("error", sa.String(64), nullable=True),
        sa.Column("cache_hit", sa.Boolean(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("streaming", sa.Boolean(), nullable=False),
        sa.Column("usage_source", sa.String(16), nullable=False),
        sa.Column("partial", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("request_id", name=op.f("pk_usage_records")),
        sa.CheckConstraint(
            "usage_source IN ('provider', 'estimated')",
            name=op.f("ck_usage_records_usage_source"),
        ),
    )
    op.create_index(op.f("ix_usage_records_created_at"), "usage_records", ["created_at"])
    op.create_index(
        op.f("ix_usage_records_user_id_created_at"), "usage_records", ["user_id", "created_at"]
    )
    op.create_index(
        op.f("ix_usage_records_model_created_at"), "usage_records", ["model", "created_at"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_usage_records_model_created_at"), table_name="usage_records")
    op.drop_index(op.f("ix_usage_records_user_id_created_at"), table_name="usage_records")
    op.drop_index(op.f("ix_usage_records_created_at"), table_name="usage_records")
    op.drop_table("usage_records")
