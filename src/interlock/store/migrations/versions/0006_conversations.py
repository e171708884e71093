"""Conversations of the AI SDK routes: each user's chats, as UI messages in JSON.

Revision ID: 0006_conversations
Revises: 0005_jobs
Create Date: 2025-01-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_conversations"
down_revision: str | None = "0005_jobs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Written by hand to match interlock.store.models.Conversation; a test checks that they agree.
    op.create_table(
        "conversations",
        sa.Column("user_id", sa.String(32), nullable=False),
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("messages", sa.JSON(), nullable=False),
        sa.Column("message_count", sa.Integer(), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "id", name=op.f("pk_conversations")),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_conversations_user_id_users"),
            ondelete="CASCADE",
        ),
    )
    op.create_index(
        op.f("ix_conversations_user_id_updated_at"), "conversations", ["user_id", "updated_at"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_conversations_user_id_updated_at"), table_name="conversations")
    op.drop_table("conversations")
