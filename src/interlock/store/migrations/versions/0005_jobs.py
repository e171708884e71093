"""Scheduled jobs: one lease per job, one record per run.

Revision ID: 0005_jobs
Revises: 0004_user_budgets
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_jobs"
down_revision: str | None = "0004_user_budgets"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Written by hand to match interlock.store.models.JobLease and JobRun; a test checks that
    # they agree.
    op.create_table(
        "job_leases",
        sa.Column("job", sa.String(64), nullable=False),
        sa.Column("holder", sa.String(200), nullable=True),
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("job", name=op.f("pk_job_leases")),
    )
    op.create_table(
        "job_runs",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("job", sa.String(64), nullable=False),
        sa.Column("scheduled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("instance", sa.String(200), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=True),
        sa.Column("error", sa.String(1000), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_runs")),
        sa.CheckConstraint(
            "outcome IN ('running', 'ok', 'failed', 'skipped')", name=op.f("ck_job_runs_outcome")
        ),
        sa.CheckConstraint("trigger IN ('schedule', 'manual')", name=op.f("ck_job_runs_trigger")),
    )
    op.create_index(
        op.f("ix_job_runs_job_scheduled_at"), "job_runs", ["job", "scheduled_at"], unique=True
    )
    op.create_index(op.f("ix_job_runs_started_at"), "job_runs", ["started_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_job_runs_started_at"), table_name="job_runs")
    op.drop_index(op.f("ix_job_runs_job_scheduled_at"), table_name="job_runs")
    op.drop_table("job_runs")
    op.drop_table("job_leases")
