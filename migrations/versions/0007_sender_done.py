"""studies.sender_done_at: the association that brought a study was released, so it is complete after a short grace

Most senders deliver a study in one association; when it is released normally and no other open association has
brought instances of the study, the study is ready after ``queue.release_grace_seconds`` instead of the whole quiet
window. NULL (every row before this revision) keeps the quiet window.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 21:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sender_done_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # Not in batch mode: on SQLite a batch rebuilds the table, and dropping `studies` with foreign keys on deletes
    # every row that references it (ON DELETE CASCADE). SQLite 3.35+ drops a column in place.
    op.drop_column("studies", "sender_done_at")
