"""runs.not_assessed_reason: why no model applied to a run's study, for the "not assessed" SR and text

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 13:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("not_assessed_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    # Not in batch mode: on SQLite a batch rebuild of `runs` would cascade-delete its predictions and outbox rows.
    op.drop_column("runs", "not_assessed_reason")
